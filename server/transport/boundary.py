"""The boundary check: rules of every request field that buf.validate annotations cannot
state once for all fields, applied by walking a message by its descriptor.

- no NUL character (U+0000) in any string: field values, map keys, repeated items,
  FieldMask paths, and the keys and string values of JSON (google.protobuf.Struct, Value,
  ListValue); Postgres stores neither in text nor in jsonb;
- every float and double finite, JSON numbers included (JSON has no NaN or Infinity);
- every enum value one the proto defines (proto3 enums accept any number on the wire);
- JSON nested at most MAX_JSON_DEPTH levels.

Each violation names the field by its path: `messages[0].parts[1].text`,
`metadata.customer.tags[2]`, `labels["key"]`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from loomwork.errors import FieldViolation

MAX_JSON_DEPTH = 32
# Enough to tell a caller what to fix; a request with thousands of bad values stops here.
MAX_VIOLATIONS = 20

NUL = "must not contain NUL characters (\\u0000)"
NOT_FINITE = "must be a finite number (not NaN or Infinity)"
TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"

_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_LIST_VALUE = "google.protobuf.ListValue"
_FLOATS = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Walk:
    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    @property
    def full(self) -> bool:
        return len(self.violations) >= MAX_VIOLATIONS

    def add(self, path: str, description: str) -> None:
        if not self.full:
            self.violations.append(FieldViolation(path or "request", description))

    def message(self, message: Message, path: str) -> None:
        descriptor = message.DESCRIPTOR
        if descriptor.full_name in (_STRUCT, _VALUE, _LIST_VALUE):
            self.json(message, path, 0)
            return
        for field, value in message.ListFields():
            if self.full:
                return
            field_path = f"{path}.{field.name}" if path else field.name
            entry = _map_entry(field)
            if entry is not None:
                self.map(entry, value, field_path)
            elif field.is_repeated:
                for i, item in enumerate(value):
                    self.value(field, item, f"{field_path}[{i}]")
            else:
                self.value(field, value, field_path)

    def map(self, entry: Descriptor, mapping: Any, path: str) -> None:
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        for key in mapping:
            key_path = f"{path}[{json.dumps(key)}]"
            self.value(key_field, key, key_path)
            self.value(value_field, mapping[key], key_path)

    def value(self, field: FieldDescriptor, value: Any, path: str) -> None:
        kind = field.type
        if kind == FieldDescriptor.TYPE_MESSAGE:
            self.message(value, path)
        elif kind == FieldDescriptor.TYPE_STRING and "\x00" in value:
            self.add(path, NUL)
        elif kind in _FLOATS and not math.isfinite(value):
            self.add(path, NOT_FINITE)
        elif kind == FieldDescriptor.TYPE_ENUM:
            enum = field.enum_type
            if enum is not None and value not in enum.values_by_number:
                self.add(path, f"{value} is not a {enum.name} value")

    def json(self, message: Any, path: str, depth: int) -> None:
        """A Struct, Value or ListValue; `depth`: the Structs and ListValues around it."""
        if self.full:
            return
        name = message.DESCRIPTOR.full_name
        if name == _VALUE:
            kind = message.WhichOneof("kind")
            if kind == "string_value" and "\x00" in message.string_value:
                self.add(path, NUL)
            elif kind == "number_value" and not math.isfinite(message.number_value):
                self.add(path, NOT_FINITE)
            elif kind in ("struct_value", "list_value"):
                self.json(getattr(message, kind), path, depth)
            return
        if depth >= MAX_JSON_DEPTH:
            self.add(path, TOO_DEEP)
        elif name == _STRUCT:
            for key, item in message.fields.items():
                item_path = _json_key_path(path, key)
                if "\x00" in key:
                    self.add(item_path, NUL)
                self.json(item, item_path, depth + 1)
        else:
            for i, item in enumerate(message.values):
                self.json(item, f"{path}[{i}]", depth + 1)


def _map_entry(field: FieldDescriptor) -> Descriptor | None:
    """The entry type of a map field (None for any other field)."""
    entry = field.message_type
    if entry is not None and field.is_repeated and entry.GetOptions().map_entry:
        return entry
    return None


def _json_key_path(path: str, key: str) -> str:
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def boundary_violations(message: Message) -> list[FieldViolation]:
    """What is wrong with `message` by the rules above (at most MAX_VIOLATIONS), paths
    relative to it."""
    walk = _Walk()
    walk.message(message, "")
    return walk.violations
