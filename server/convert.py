"""Protobuf ↔ domain model conversion for memory; protobuf types stop here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from loomwork.errors import Violations
from loomwork.llm.chat import ChatUsage
from loomwork.memory import models
from loomwork.messages import (
    Message,
    NewMessage,
    Role,
    TextPart,
    Thread,
    ToolCallPart,
    ToolResultPart,
)
from protos.loomwork.v1 import memory_pb2, message_pb2

_ROLE_TO_DOMAIN = {
    message_pb2.ROLE_SYSTEM: Role.SYSTEM,
    message_pb2.ROLE_USER: Role.USER,
    message_pb2.ROLE_ASSISTANT: Role.ASSISTANT,
    message_pb2.ROLE_TOOL: Role.TOOL,
}
ROLE_TO_PROTO = {v: k for k, v in _ROLE_TO_DOMAIN.items()}


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(value)


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    set_timestamp(out, value)
    return out


def set_timestamp(target: timestamp_pb2.Timestamp, value: datetime) -> None:
    """Faster than Timestamp.FromDatetime for the aware datetimes storage returns."""
    seconds = value.timestamp()
    target.seconds = int(seconds // 1)
    target.nanos = value.microsecond * 1000


def thread_to_proto(thread: Thread) -> memory_pb2.Thread:
    out = memory_pb2.Thread(
        id=thread.id,
        resource_id=thread.resource_id,
        title=thread.title,
        message_count=thread.message_count,
    )
    out.metadata.update(thread.metadata)
    set_timestamp(out.create_time, thread.create_time)
    set_timestamp(out.update_time, thread.update_time)
    return out


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


def part_to_proto(
    part: TextPart | ToolCallPart | ToolResultPart,
) -> message_pb2.Part:
    out = message_pb2.Part()
    fill_part(out, part)
    return out


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


def message_to_proto(message: Message) -> message_pb2.Message:
    out = message_pb2.Message()
    fill_message(out, message)
    return out


def new_messages_from_proto(messages: Any) -> list[NewMessage]:
    """Request messages → domain; structural problems are reported together, by field."""
    violations = Violations()
    out: list[NewMessage] = []
    for i, message in enumerate(messages):
        role = _ROLE_TO_DOMAIN.get(message.role)
        if role is None:
            violations.add(f"messages[{i}].role", "must be one of system, user, assistant, tool")
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
                    f"messages[{i}].parts[{j}]", "must set one of text, tool_call, tool_result"
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


_SCOPE_TO_PROTO = {
    models.RecallScope.THREAD: memory_pb2.MEMORY_SCOPE_THREAD,
    models.RecallScope.RESOURCE: memory_pb2.MEMORY_SCOPE_RESOURCE,
}


def working_memory_to_proto(memory: models.WorkingMemory) -> memory_pb2.WorkingMemory:
    out = memory_pb2.WorkingMemory(
        scope=_SCOPE_TO_PROTO[memory.scope],
        thread_id=memory.thread_id,
        resource_id=memory.resource_id,
        markdown=memory.markdown,
    )
    if memory.data is not None:
        out.data.update(memory.data)
    if memory.update_time is not None:
        set_timestamp(out.update_time, memory.update_time)
    return out


def usage_to_proto(usage: ChatUsage) -> message_pb2.Usage:
    """Token usage as the API reports it (prompt/completion become input/output)."""
    return message_pb2.Usage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )
