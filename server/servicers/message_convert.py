"""Protobuf <-> domain conversion of message.proto (roles, messages and their parts, token
usage): the messages memory stores and agents read and write."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from loomwork.errors import Violations
from loomwork.llm.chat import ChatUsage
from loomwork.messages import (
    Message,
    NewMessage,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
)
from protos.loomwork.v1 import message_pb2
from server.servicers.well_known_convert import set_timestamp, struct_to_dict

_ROLE_TO_DOMAIN = {
    message_pb2.ROLE_SYSTEM: Role.SYSTEM,
    message_pb2.ROLE_USER: Role.USER,
    message_pb2.ROLE_ASSISTANT: Role.ASSISTANT,
    message_pb2.ROLE_TOOL: Role.TOOL,
}
ROLE_TO_PROTO = {v: k for k, v in _ROLE_TO_DOMAIN.items()}


def fill_part(target: message_pb2.Part, part: TextPart | ToolCallPart | ToolResultPart) -> None:
    if isinstance(part, TextPart):
        target.text.text = part.text
    elif isinstance(part, ToolCallPart):
        call = target.tool_call
        call.tool_call_id = part.tool_call_id
        call.tool_name = part.tool_name
        call.arguments.update(part.arguments)
    else:
        result = target.tool_result
        result.tool_call_id = part.tool_call_id
        result.tool_name = part.tool_name
        result.is_error = part.is_error
        if part.result is not None:
            json_format.ParseDict(part.result, result.result)


def fill_message(target: message_pb2.Message, message: Message) -> None:
    """Write `message` into `target` in place (no nested-message copies)."""
    target.id = message.id
    target.thread_id = message.thread_id
    target.role = ROLE_TO_PROTO[message.role]
    for part in message.parts:
        fill_part(target.parts.add(), part)
    if message.metadata:
        target.metadata.update(message.metadata)
    set_timestamp(target.create_time, message.create_time)


def new_messages_from_proto(messages: Any, field: str = "messages") -> list[NewMessage]:
    """Request messages → domain; structural problems are reported together, by field
    (`field`: the request's name for the list)."""
    violations = Violations()
    out: list[NewMessage] = []
    for i, message in enumerate(messages):
        role = _ROLE_TO_DOMAIN.get(message.role)
        if role is None:
            violations.add(f"{field}[{i}].role", "must be one of system, user, assistant, tool")
        parts: list[TextPart | ToolCallPart | ToolResultPart] = []
        for j, part in enumerate(message.parts):
            kind = part.WhichOneof("kind")
            if kind == "text":
                parts.append(TextPart(text=part.text.text))
            elif kind == "tool_call":
                parts.append(
                    ToolCallPart(
                        tool_call_id=part.tool_call.tool_call_id,
                        tool_name=part.tool_call.tool_name,
                        arguments=struct_to_dict(part.tool_call.arguments),
                    )
                )
            elif kind == "tool_result":
                result = part.tool_result
                parts.append(
                    ToolResultPart(
                        tool_call_id=result.tool_call_id,
                        tool_name=result.tool_name,
                        result=json_format.MessageToDict(result.result)
                        if result.HasField("result")
                        else None,
                        is_error=result.is_error,
                    )
                )
            else:
                violations.add(
                    f"{field}[{i}].parts[{j}]", "must set one of text, tool_call, tool_result"
                )
        if role is not None:
            out.append(
                NewMessage(
                    id=message.id,
                    role=role,
                    parts=parts,
                    metadata=struct_to_dict(message.metadata),
                )
            )
    violations.raise_if_any()
    return out


def usage_to_proto(usage: ChatUsage) -> message_pb2.Usage:
    """Token usage as the API reports it (prompt/completion become input/output)."""
    return message_pb2.Usage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )
