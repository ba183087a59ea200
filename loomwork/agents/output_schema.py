"""Structured output: reading partial JSON as it streams, and the final answer as JSON
(checking the schema and validating against it: `loomwork.json_schema`)."""

from __future__ import annotations

import json
from typing import Any

import pydantic_core

from loomwork.errors import FieldViolation


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
