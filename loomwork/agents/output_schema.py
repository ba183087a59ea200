"""Structured output: checking an output JSON Schema, reading partial JSON as it streams,
and validating the final object against the schema."""

from __future__ import annotations

import json
from typing import Any

import pydantic_core
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from loomwork.errors import FieldViolation, InvalidArgument

MAX_SCHEMA_BYTES = 64 * 1024


def check_output_schema(schema: Any, field: str) -> None:
    """InvalidArgument on `field` unless `schema` is a JSON Schema (2020-12) of an object."""
    if not isinstance(schema, dict):
        raise InvalidArgument.field(field, "must be a JSON object")
    size = len(json.dumps(schema, separators=(",", ":")).encode())
    if size > MAX_SCHEMA_BYTES:
        raise InvalidArgument.field(field, f"is {size} bytes, more than {MAX_SCHEMA_BYTES}")
    if schema.get("type") != "object":
        raise InvalidArgument.field(field, 'the root must be "type": "object"')
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        where = "/".join(str(p) for p in error.absolute_path)
        raise InvalidArgument.field(
            field, f"is not a valid JSON Schema{f' at {where}' if where else ''}: {error.message}"
        ) from None


def _json_path(parts: Any) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validate_object(schema: dict[str, Any], value: Any) -> list[FieldViolation]:
    """Every way `value` fails `schema`, as JSON paths (`$.items[2].price`); empty if valid."""
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))
    return [FieldViolation(_json_path(e.absolute_path), e.message) for e in errors]


def parse_final(text: str) -> tuple[Any, list[FieldViolation]]:
    """The model's complete answer as JSON, or a violation saying why it is not JSON."""
    try:
        return json.loads(text), []
    except ValueError as error:
        return None, [FieldViolation("$", f"the answer is not valid JSON: {error}")]


def partial_object(text: str) -> dict[str, Any] | None:
    """The object written so far, parsed leniently (open strings, arrays, objects closed);
    None while nothing object-shaped parses yet."""
    if not text.strip():
        return None
    try:
        value = pydantic_core.from_json(text, allow_partial="trailing-strings")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
