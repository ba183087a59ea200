"""Protobuf ↔ domain model conversion for memory; protobuf types stop here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from loomwork.errors import Violations
from loomwork.memory import models
from protos.loomwork.v1 import memory_pb2, message_pb2

_ROLE_TO_DOMAIN = {
    message_pb2.ROLE_SYSTEM: models.Role.SYSTEM,
    message_pb2.ROLE_USER: models.Role.USER,
    message_pb2.ROLE_ASSISTANT: models.Role.ASSISTANT,
    message_pb2.ROLE_TOOL: models.Role.TOOL,
}
_ROLE_TO_PROTO = {v: k for k, v in _ROLE_TO_DOMAIN.items()}


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(value)


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def thread_to_proto(thread: models.Thread) -> memory_pb2.Thread:
    return memory_pb2.Thread(
        id=thread.id,
        resource_id=thread.resource_id,
        title=thread.title,
        metadata=dict_to_struct(thread.metadata),
        create_time=timestamp(thread.create_time),
        update_time=timestamp(thread.update_time),
        message_count=thread.message_count,
    )


def part_to_proto(
    part: models.TextPart | models.ToolCallPart | models.ToolResultPart,
) -> message_pb2.Part:
    if isinstance(part, models.TextPart):
        return message_pb2.Part(text=message_pb2.TextPart(text=part.text))
    if isinstance(part, models.ToolCallPart):
        return message_pb2.Part(
            tool_call=message_pb2.ToolCallPart(
                tool_call_id=part.tool_call_id,
                tool_name=part.tool_name,
                arguments=dict_to_struct(part.arguments),
            )
        )
    result = struct_pb2.Value()
    json_format.ParseDict(part.result, result)
    return message_pb2.Part(
        tool_result=message_pb2.ToolResultPart(
            tool_call_id=part.tool_call_id,
            tool_name=part.tool_name,
            result=result,
            is_error=part.is_error,
        )
    )


def message_to_proto(message: models.Message) -> message_pb2.Message:
    return message_pb2.Message(
        id=message.id,
        thread_id=message.thread_id,
        role=_ROLE_TO_PROTO[message.role],
        parts=[part_to_proto(p) for p in message.parts],
        metadata=dict_to_struct(message.metadata),
        create_time=timestamp(message.create_time),
    )


def new_messages_from_proto(messages: Any) -> list[models.NewMessage]:
    """Request messages → domain; structural problems are reported together, by field."""
    violations = Violations()
    out: list[models.NewMessage] = []
    for i, message in enumerate(messages):
        role = _ROLE_TO_DOMAIN.get(message.role)
        if role is None:
            violations.add(f"messages[{i}].role", "must be one of system, user, assistant, tool")
        parts: list[models.TextPart | models.ToolCallPart | models.ToolResultPart] = []
        for j, part in enumerate(message.parts):
            kind = part.WhichOneof("kind")
            if kind == "text":
                parts.append(models.TextPart(text=part.text.text))
            elif kind == "tool_call":
                parts.append(
                    models.ToolCallPart(
                        tool_call_id=part.tool_call.tool_call_id,
                        tool_name=part.tool_call.tool_name,
                        arguments=struct_to_dict(part.tool_call.arguments),
                    )
                )
            elif kind == "tool_result":
                result = part.tool_result
                parts.append(
                    models.ToolResultPart(
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
                models.NewMessage(
                    id=message.id,
                    role=role,
                    parts=parts,
                    metadata=struct_to_dict(message.metadata),
                )
            )
    violations.raise_if_any()
    return out
