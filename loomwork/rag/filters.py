"""Metadata filters compiled to SQL over a chunks or documents table.

Fields: `metadata.<key>[.<key>...]` (jsonb), and built-ins `document_id`, `format`,
`page`, `position`. On an array value, equals/any_of match any element and
not_equals/none_of match when no element does; values of different JSON types never
match; not_equals/none_of also match an absent field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from loomwork.errors import InvalidArgument
from loomwork.rag.models import Condition, Filter, Range

__all__ = ["MAX_CONDITIONS", "compile_filter", "validate_filter"]

MAX_CONDITIONS = 64
MAX_DEPTH = 8
MAX_KEYS = 8
MAX_VALUES = 1000

# built-in field -> (SQL column, JSON-ish kind)
CHUNK_FIELDS = {
    "document_id": ("document_id", "string"),
    "format": ("format", "string"),
    "page": ("page", "number"),
    "position": ("position", "number"),
}
DOCUMENT_FIELDS = {"document_id": ("id", "string"), "format": ("format", "string")}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "other"


def validate_filter(
    filter: Filter | None, fields: dict[str, tuple[str, str]], prefix: str = "filter"
) -> None:
    """InvalidArgument naming the first bad part of `filter`."""
    if filter is None:
        return
    count = [0]

    def walk(f: Filter, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise InvalidArgument.field(path, f"filters nest at most {MAX_DEPTH} levels")
        if f.condition is not None:
            count[0] += 1
            if count[0] > MAX_CONDITIONS:
                raise InvalidArgument.field(path, f"at most {MAX_CONDITIONS} conditions in total")
            _check_condition(f.condition, fields, f"{path}.condition")
        for name in ("all", "any"):
            children = getattr(f, name)
            if children is None:
                continue
            if not 1 <= len(children) <= MAX_CONDITIONS:
                raise InvalidArgument.field(f"{path}.{name}", "needs 1..64 filters")
            for i, child in enumerate(children):
                walk(child, f"{path}.{name}.filters[{i}]", depth + 1)

    walk(filter, prefix, 1)


def _check_condition(c: Condition, fields: dict[str, tuple[str, str]], path: str) -> None:
    if not c.field:
        raise InvalidArgument.field(f"{path}.field", "is required")
    if c.field.startswith("metadata."):
        keys = c.field.split(".")[1:]
        if not all(keys) or len(keys) > MAX_KEYS:
            raise InvalidArgument.field(
                f"{path}.field", f"must be metadata.<key> with 1..{MAX_KEYS} non-empty keys"
            )
    elif c.field not in fields:
        raise InvalidArgument.field(
            f"{path}.field",
            f"must be metadata.<key> or one of {', '.join(sorted(fields))}, got {c.field!r}",
        )
    if c.op in ("equals", "not_equals"):
        if _kind(c.value) not in ("string", "number", "boolean"):
            raise InvalidArgument.field(f"{path}.{c.op}", "must be a string, number or bool")
    elif c.op in ("any_of", "none_of"):
        if not isinstance(c.value, list) or not 1 <= len(c.value) <= MAX_VALUES:
            raise InvalidArgument.field(f"{path}.{c.op}", f"needs 1..{MAX_VALUES} values")
        for i, v in enumerate(c.value):
            if _kind(v) not in ("string", "number", "boolean"):
                raise InvalidArgument.field(
                    f"{path}.{c.op}.values[{i}]", "must be a string, number or bool"
                )
    elif c.op == "range":
        r = c.value
        if not isinstance(r, Range):
            raise InvalidArgument.field(f"{path}.range", "is required")
        bounds = [v for v in (r.gt, r.gte, r.lt, r.lte) if v is not None]
        if not bounds:
            raise InvalidArgument.field(f"{path}.range", "set at least one of gt, gte, lt, lte")
        kinds = {_kind(v) for v in bounds}
        if len(kinds) != 1 or kinds.pop() not in ("number", "string"):
            raise InvalidArgument.field(
                f"{path}.range", "bounds must all be numbers or all be strings"
            )
    elif c.op == "exists" and not isinstance(c.value, bool):
        raise InvalidArgument.field(f"{path}.exists", "must be true or false")


def compile_filter(
    filter: Filter | None, fields: dict[str, tuple[str, str]], params: list[Any]
) -> str:
    """A SQL boolean expression for `filter`, appending its values to `params` (%s style)."""
    if filter is None:
        return "true"
    parts: list[str] = []
    if filter.condition is not None:
        parts.append(_condition(filter.condition, fields, params))
    if filter.all:
        parts.append(
            "(" + " and ".join(compile_filter(f, fields, params) for f in filter.all) + ")"
        )
    if filter.any:
        parts.append("(" + " or ".join(compile_filter(f, fields, params) for f in filter.any) + ")")
    return "(" + " and ".join(parts) + ")" if parts else "true"


def _condition(c: Condition, fields: dict[str, tuple[str, str]], params: list[Any]) -> str:
    if c.field.startswith("metadata."):
        return _json_condition(c, params)
    column, kind = fields[c.field]

    def eq(value: Any) -> str:
        if _kind(value) != kind:
            return "false"
        params.append(value)
        return f"{column} = %s"

    if c.op == "equals":
        return eq(c.value)
    if c.op == "not_equals":
        return f"not ({eq(c.value)})"
    if c.op == "any_of":
        return "(" + " or ".join(eq(v) for v in c.value) + ")"
    if c.op == "none_of":
        return "not (" + " or ".join(eq(v) for v in c.value) + ")"
    if c.op == "range":
        return _range(c.value, kind, lambda: column, params)
    return "true" if c.value else "false"  # built-in fields always exist


def _json_condition(c: Condition, params: list[Any]) -> str:
    keys = c.field.split(".")[1:]

    # f-strings evaluate left to right, so each helper appends its parameter in SQL order.
    def x() -> str:
        params.append(keys)
        return "(metadata #> %s::text[])"

    def v(value: Any) -> str:
        params.append(json.dumps(value))
        return "%s::jsonb"

    def eq(value: Any) -> str:
        return (
            f"coalesce(({x()} = {v(value)}) or (jsonb_typeof({x()}) = 'array'"
            f" and {x()} @> jsonb_build_array({v(value)})), false)"
        )

    if c.op == "equals":
        return eq(c.value)
    if c.op == "not_equals":
        return f"not {eq(c.value)}"
    if c.op == "any_of":
        return "(" + " or ".join(eq(value) for value in c.value) + ")"
    if c.op == "none_of":
        return "not (" + " or ".join(eq(value) for value in c.value) + ")"
    if c.op == "range":
        r: Range = c.value
        kind = _kind(next(b for b in (r.gt, r.gte, r.lt, r.lte) if b is not None))
        typed = f"jsonb_typeof({x()}) = '{kind}'"

        def value() -> str:
            if kind == "number":
                # the cast runs only where the type check passed (case guards evaluation order)
                return f"(case when jsonb_typeof({x()}) = 'number' then ({x()})::numeric end)"
            return f"({x()} #>> '{{}}')"

        return f"coalesce({typed} and {_range(r, kind, value, params)}, false)"
    exists = f"coalesce(jsonb_typeof({x()}) <> 'null', false)"
    return exists if c.value else f"not {exists}"


def _range(r: Range, kind: str, expression: Callable[[], str], params: list[Any]) -> str:
    parts: list[str] = []
    for op, bound in ((">", r.gt), (">=", r.gte), ("<", r.lt), ("<=", r.lte)):
        if bound is None:
            continue
        if _kind(bound) != kind:
            return "false"
        collate = ' collate "C"' if kind == "string" else ""
        cast = "::numeric" if kind == "number" else "::text"
        left = expression()  # appends its own parameters first, in SQL order
        params.append(bound)
        parts.append(f"{left}{collate} {op} %s{cast}{collate}")
    return "(" + " and ".join(parts) + ")"
