"""Builders of `message_pb2.Message`: a text message, a tool call, a tool result; roles by name.

client.memory.append_messages(thread.id, [text_message("user", "hi")])
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2

from protos.loomwork.v1 import message_pb2

__all__ = [
    "parse_role",
    "role_name",
    "text_message",
    "tool_call_message",
    "tool_result_message",
]

_ROLES: dict[str, message_pb2.Role] = {
    "system": message_pb2.ROLE_SYSTEM,
    "user": message_pb2.ROLE_USER,
    "assistant": message_pb2.ROLE_ASSISTANT,
    "tool": message_pb2.ROLE_TOOL,
}


def parse_role(role: str | int) -> message_pb2.Role:
    """`"user"`, `"ROLE_USER"` or the enum number -> `message_pb2.Role`; ValueError otherwise."""
    if isinstance(role, int):
        for value in _ROLES.values():
            if value == role:
                return value
        raise ValueError(f"unknown role number {role}")
    key = role.strip().lower().removeprefix("role_")
    if key not in _ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(_ROLES)}")
    return _ROLES[key]


def role_name(role: int) -> str:
    """`message_pb2.ROLE_USER` -> `"user"` (`"unspecified"` for 0 or an unknown number)."""
    for name, value in _ROLES.items():
        if value == role:
            return name
    return "unspecified"


def _message(
    role: message_pb2.Role,
    parts: Sequence[message_pb2.Part],
    *,
    id: str,
    metadata: Mapping[str, Any] | None,
) -> message_pb2.Message:
    message = message_pb2.Message(id=id, role=role, parts=parts)
    if metadata is not None:
        message.metadata.update(dict(metadata))
    return message


def text_message(
    role: str | int,
    text: str,
    *,
    id: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> message_pb2.Message:
    """A message with one text part. `role` is "system", "user", "assistant" or "tool".

    A non-empty `id` makes the append idempotent: appending the same id again stores it once.
    """
    part = message_pb2.Part(text=message_pb2.TextPart(text=text))
    return _message(parse_role(role), [part], id=id, metadata=metadata)


def tool_call_message(
    tool_call_id: str,
    tool_name: str,
    arguments: Mapping[str, Any] | None = None,
    *,
    text: str = "",
    id: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> message_pb2.Message:
    """An assistant message asking for one tool call, after an optional text part."""
    parts = []
    if text:
        parts.append(message_pb2.Part(text=message_pb2.TextPart(text=text)))
    call = message_pb2.ToolCallPart(tool_call_id=tool_call_id, tool_name=tool_name)
    if arguments is not None:
        call.arguments.update(dict(arguments))
    parts.append(message_pb2.Part(tool_call=call))
    return _message(message_pb2.ROLE_ASSISTANT, parts, id=id, metadata=metadata)


def tool_result_message(
    tool_call_id: str,
    result: Any,
    *,
    tool_name: str = "",
    is_error: bool = False,
    id: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> message_pb2.Message:
    """A tool message answering `tool_call_id`; `result` is any JSON-compatible value."""
    value = struct_pb2.Value()
    json_format.Parse(json.dumps(result), value)
    part = message_pb2.ToolResultPart(
        tool_call_id=tool_call_id, tool_name=tool_name, result=value, is_error=is_error
    )
    return _message(
        message_pb2.ROLE_TOOL, [message_pb2.Part(tool_result=part)], id=id, metadata=metadata
    )
