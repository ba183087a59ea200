"""How an agent configures its guardrail processors (AgentDefinition.input_processors and
output_processors): one pydantic model per built-in kind, and a reference to a custom one."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PiiKind = Literal["email", "phone", "card"]
PII_KINDS: tuple[PiiKind, ...] = ("email", "phone", "card")
MAX_PROCESSORS = 16
PROCESSOR_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class PiiPattern(BaseModel):
    """A named regular expression (Python `re` syntax) redacted like the built-in kinds."""

    model_config = ConfigDict(frozen=True)
    name: str = Field(pattern=r"^[a-z0-9_]{1,64}$")
    regex: str = Field(min_length=1, max_length=1000)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"does not compile: {exc}") from None
        return value


class PiiRedaction(BaseModel):
    """Emails, phone numbers, card numbers (by Luhn) and custom patterns: replaced by
    `[REDACTED:<kind>]`, or (action "block") a trip."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["pii_redaction"] = "pii_redaction"
    kinds: list[PiiKind] = Field(default_factory=list, max_length=3)  # empty: all three
    patterns: list[PiiPattern] = Field(default_factory=list, max_length=32)
    action: Literal["redact", "block"] = "redact"


class PromptInjectionCheck(BaseModel):
    """Rules against attempts to override the instructions; optionally the model too."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["prompt_injection"] = "prompt_injection"
    use_model: bool = False
    model: str = Field(default="", max_length=256)  # empty: the agent's model


class ModerationCheck(BaseModel):
    """The model judges whether the text breaks the categories (any usual one if none)."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["moderation"] = "moderation"
    model: str = Field(default="", max_length=256)  # empty: the agent's model
    categories: list[str] = Field(default_factory=list, max_length=16)


class InputTokenLimit(BaseModel):
    """Trips when a step's prompt has more tokens than `max_tokens`."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["input_token_limit"] = "input_token_limit"
    max_tokens: int = Field(ge=1, le=10_000_000)


class ToolCallLimit(BaseModel):
    """Trips when the model asks for more tool calls in the run than `max_calls`."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["tool_call_limit"] = "tool_call_limit"
    max_calls: int = Field(ge=0, le=10_000)


class CustomProcessorRef(BaseModel):
    """A processor defined in code (`@processor`), by its registered name."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["custom"] = "custom"
    name: str = Field(pattern=PROCESSOR_NAME.pattern)


ProcessorConfig = Annotated[
    PiiRedaction
    | PromptInjectionCheck
    | ModerationCheck
    | InputTokenLimit
    | ToolCallLimit
    | CustomProcessorRef,
    Field(discriminator="kind"),
]

INPUT_KINDS = frozenset({"pii_redaction", "prompt_injection", "moderation", "input_token_limit"})
OUTPUT_KINDS = frozenset({"pii_redaction", "moderation", "tool_call_limit"})
MODEL_KINDS = frozenset({"moderation"})  # and prompt_injection with use_model


def uses_model(config: ProcessorConfig) -> bool:
    """Whether the processor asks a model (held to the final answer on output)."""
    return isinstance(config, ModerationCheck) or (
        isinstance(config, PromptInjectionCheck) and config.use_model
    )


def misplaced(configs: list[ProcessorConfig], stage: Literal["input", "output"]) -> str | None:
    """The problem with a list of processors for `stage`, or None."""
    allowed = INPUT_KINDS if stage == "input" else OUTPUT_KINDS
    for i, config in enumerate(configs):
        if config.kind != "custom" and config.kind not in allowed:
            return f"[{i}]: {config.kind} is not an {stage} processor"
    return None
