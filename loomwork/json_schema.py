"""JSON Schemas that callers give (output schemas, client tools' parameters): checking one,
and validating a value against it."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from loomwork.errors import FieldViolation, InvalidArgument

MAX_SCHEMA_BYTES = 64 * 1024


def check_object_schema(schema: Any, field: str) -> None:
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
