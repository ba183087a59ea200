"""Request validation, one place for every service: the `buf.validate` rules declared in
protos/loomwork/v1/*.proto (checked by protovalidate) and the boundary check of every
field (server/transport/boundary.py). ValidationInterceptor runs it on each request."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import protovalidate
from google.protobuf.message import DecodeError, Message

from loomwork.errors import FieldViolation, InvalidArgument
from server.transport.boundary import MAX_VIOLATIONS, boundary_violations


def _subscript(element: Any) -> str:
    """`[2]`, `["key"]`, `[7]` or `[true]` for a path element of a list or map entry."""
    subscript = element.subscript
    if subscript is None:
        return ""
    if subscript.field == "string_key":
        return f"[{json.dumps(subscript.value)}]"
    if subscript.field == "bool_key":
        return "[true]" if subscript.value else "[false]"
    return f"[{subscript.value}]"


def _violation(violation: protovalidate.Violation) -> FieldViolation:
    proto = violation.proto
    elements = proto.field.elements if proto.field is not None else []
    path = ".".join(e.field_name + _subscript(e) for e in elements)
    description = proto.message or proto.rule_id
    if proto.for_key:
        description = f"key {description}"
    return FieldViolation(path or "request", description)


@dataclass(frozen=True)
class UnparsableRequest:
    """Stands for a request whose bytes do not parse as the method's request message."""

    reason: str


def tolerant_deserializer(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`parse`, answering UnparsableRequest where it raises DecodeError."""

    def tolerant(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as error:
            return UnparsableRequest(str(error))

    return tolerant


class RequestValidator:
    """Checks request messages; `check` raises InvalidArgument naming every bad field (at
    most MAX_VIOLATIONS)."""

    def __init__(self) -> None:
        self._rules = protovalidate.Validator()

    def violations(self, message: Message | UnparsableRequest) -> list[FieldViolation]:
        if isinstance(message, UnparsableRequest):
            if "MaxDepth" in message.reason:
                return [FieldViolation("request", "is nested too deeply to parse")]
            return [FieldViolation("request", f"cannot be parsed: {message.reason}")]
        found = [_violation(v) for v in self._rules.collect_violations(message)]
        found += boundary_violations(message)
        return found[:MAX_VIOLATIONS]

    def check(self, message: Message | UnparsableRequest) -> None:
        found = self.violations(message)
        if found:
            raise InvalidArgument(found)
