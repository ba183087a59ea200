"""Memory settings of an agent, and of one call that overrides some of them.

An agent carries a `MemorySettings`; a call may carry another whose *explicitly set*
fields win (`merge`). Settings arriving from outside (a request, a stored agent) are
parsed with `parse_memory_settings`, which turns pydantic's errors into
`InvalidArgument` naming each bad field (`memory.semantic_recall.top_k`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loomwork.errors import FieldViolation, InvalidArgument
from loomwork.memory.models import RecallScope

__all__ = [
    "MAX_CONTEXT_TOKEN_LIMIT",
    "MAX_LAST_MESSAGES",
    "MemoryScope",
    "MemorySettings",
    "SemanticRecallSettings",
    "WorkingMemorySettings",
    "invalid_argument_from",
    "merge",
    "parse_memory_settings",
]

MAX_LAST_MESSAGES = 1000
MAX_CONTEXT_TOKEN_LIMIT = 2_000_000

# Thread: only the current thread; resource: every thread of the thread's resource (user).
MemoryScope = RecallScope


class SemanticRecallSettings(BaseModel):
    """Recall earlier messages by meaning: `top_k` hits, each with `message_range` neighbours
    before and after it, from the thread or the whole resource, scoring at least `min_score`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    top_k: int = Field(default=3, ge=1, le=100)
    message_range: int = Field(default=1, ge=0, le=20)
    scope: MemoryScope = MemoryScope.THREAD
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)


class WorkingMemorySettings(BaseModel):
    """A persistent note the agent keeps up to date: a markdown `template` or a `json_schema`
    (exactly one), kept per thread or per resource."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    template: str | None = None
    json_schema: dict[str, Any] | None = None
    scope: MemoryScope = MemoryScope.THREAD

    @model_validator(mode="after")
    def _exactly_one_form(self) -> WorkingMemorySettings:
        has_template = self.template is not None
        has_schema = self.json_schema is not None
        if has_template == has_schema:
            raise ValueError("set exactly one of template (markdown) or json_schema")
        if has_template and not (self.template or "").strip():
            raise ValueError("template must not be blank")
        if has_schema and not self.json_schema:
            raise ValueError("json_schema must not be empty")
        return self


class MemorySettings(BaseModel):
    """What of memory goes into an agent's context.

    `last_messages`: the N most recent messages of the thread (0: none).
    `semantic_recall`: None turns recall off. `working_memory`: None turns it off.
    `context_token_limit`: None means unlimited; otherwise the context is trimmed to it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    last_messages: int = Field(default=20, ge=0, le=MAX_LAST_MESSAGES)
    semantic_recall: SemanticRecallSettings | None = None
    working_memory: WorkingMemorySettings | None = None
    context_token_limit: int | None = Field(default=None, ge=1, le=MAX_CONTEXT_TOKEN_LIMIT)


def merge(base: MemorySettings, override: MemorySettings | None) -> MemorySettings:
    """`base` with the fields `override` explicitly sets (its `model_fields_set`) replaced.

    An explicit zero, None or default value in the override wins (`last_messages=0` turns
    recent messages off, `semantic_recall=None` turns recall off). `semantic_recall` merges
    field by field when both sides have one, so a call can change only `top_k`;
    `working_memory` is replaced whole (template and json_schema are alternatives).
    """
    if override is None:
        return base
    update: dict[str, Any] = {}
    for name in override.model_fields_set:
        value = getattr(override, name)
        if name == "semantic_recall" and value is not None and base.semantic_recall is not None:
            value = base.semantic_recall.model_copy(
                update={f: getattr(value, f) for f in value.model_fields_set}
            )
        update[name] = value
    return base.model_copy(update=update)


def parse_memory_settings(data: Mapping[str, Any], *, field: str = "memory") -> MemorySettings:
    """Validate settings from plain data; InvalidArgument names each bad field under `field`."""
    try:
        return MemorySettings.model_validate(data)
    except ValidationError as exc:
        raise invalid_argument_from(exc, prefix=field) from None


def invalid_argument_from(error: ValidationError, *, prefix: str = "") -> InvalidArgument:
    """A pydantic ValidationError as InvalidArgument with one FieldViolation per error."""
    violations: list[FieldViolation] = []
    for item in error.errors():
        path = prefix
        for loc in item["loc"]:
            if isinstance(loc, int):
                path += f"[{loc}]"
            else:
                path = f"{path}.{loc}" if path else str(loc)
        message = str(item["msg"]).removeprefix("Value error, ")
        violations.append(FieldViolation(path or prefix or "value", message))
    return InvalidArgument(violations)
