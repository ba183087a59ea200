"""Agent definitions and the registry of agents defined in code."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from loomwork.errors import InvalidArgument, NotFound
from loomwork.guardrails.settings import MAX_PROCESSORS, ProcessorConfig, misplaced
from loomwork.json_schema import check_object_schema
from loomwork.memory.settings import MemorySettings
from loomwork.tools.routes import MAX_APPROVAL_TIMEOUT

AGENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
MAX_TOOLS = 128
MAX_HANDOFFS = 32
MAX_FALLBACK_MODELS = 8

AgentSource = Literal["code", "api"]


class ModelSettings(BaseModel):
    """Sampling settings of the agent's model calls; None uses the provider's default."""

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_output_tokens: int | None = Field(default=None, ge=1, le=200_000)


class AgentDefinition(BaseModel):
    """What an agent is: instructions, a model, the tools it may call, memory, a step limit,
    and optionally the JSON schema of its structured answer."""

    name: str
    description: str = Field(default="", max_length=1024)
    instructions: str = Field(min_length=1, max_length=100_000)
    model: str = Field(default="", max_length=256)  # empty: the server's LOOMWORK_CHAT_MODEL
    model_settings: ModelSettings = Field(default_factory=ModelSettings)
    # Models a step goes on with, in order, once its calls to the model before them ran out
    # of retries on a retryable error (429, 5xx, timeout).
    fallback_models: list[str] = Field(default_factory=list, max_length=MAX_FALLBACK_MODELS)
    tool_names: list[str] = Field(default_factory=list, max_length=MAX_TOOLS)
    # Agents this one may hand the run over to (the model sees a `transfer_to_<agent>` tool).
    handoffs: list[str] = Field(default_factory=list, max_length=MAX_HANDOFFS)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    # When true a run reads memory but saves nothing (no messages, no working memory updates).
    memory_read_only: bool = False
    max_steps: int = Field(default=5, ge=1, le=100)
    # How long a run waits for a decision on a call that needs approval before it rejects the
    # call and goes on (a tool's own `approval_timeout`, if shorter, wins); None: no limit.
    approval_timeout: timedelta | None = Field(
        default=None, gt=timedelta(0), le=MAX_APPROVAL_TIMEOUT
    )
    output_schema: dict[str, Any] | None = None
    # Guardrail processors, in order: on the messages before the model sees them, and on
    # what the model streams, answers and calls (loomwork.guardrails).
    input_processors: list[ProcessorConfig] = Field(default_factory=list, max_length=MAX_PROCESSORS)
    output_processors: list[ProcessorConfig] = Field(
        default_factory=list, max_length=MAX_PROCESSORS
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    source: AgentSource = "code"
    create_time: datetime | None = None
    update_time: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not AGENT_NAME.match(value):
            raise ValueError("1..64 characters of [A-Za-z0-9_-], starting with a letter")
        return value

    @field_validator("tool_names")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        repeated = sorted({n for n in value if value.count(n) > 1})
        if repeated:
            raise ValueError(f"names a tool more than once: {', '.join(repeated)}")
        return value

    @field_validator("fallback_models")
    @classmethod
    def _fallback_models(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name.strip() or len(name) > 256:
                raise ValueError(f"{name!r} is not a model name (1..256 characters)")
        repeated = sorted({n for n in value if value.count(n) > 1})
        if repeated:
            raise ValueError(f"names a model more than once: {', '.join(repeated)}")
        return value

    def models(self, default_model: str) -> list[str]:
        """The models its steps call, in the order they fall back: its own (or the
        server's default), then its fallback models."""
        first = self.model or default_model
        return [first, *(m for m in self.fallback_models if m != first)]

    @field_validator("handoffs")
    @classmethod
    def _handoffs(cls, value: list[str]) -> list[str]:
        for name in value:
            if not AGENT_NAME.match(name):
                raise ValueError(f"{name!r} is not an agent name")
        repeated = sorted({n for n in value if value.count(n) > 1})
        if repeated:
            raise ValueError(f"names an agent more than once: {', '.join(repeated)}")
        return value

    @field_validator("input_processors")
    @classmethod
    def _inputs(cls, value: list[ProcessorConfig]) -> list[ProcessorConfig]:
        problem = misplaced(value, "input")
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("output_processors")
    @classmethod
    def _outputs(cls, value: list[ProcessorConfig]) -> list[ProcessorConfig]:
        problem = misplaced(value, "output")
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("output_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                check_object_schema(value, "output_schema")
            except InvalidArgument as error:
                raise ValueError(error.violations[0].description) from None
        return value


class AgentRegistry:
    """Agents defined in Python, visible to every tenant."""

    def __init__(self, agents: list[AgentDefinition] | None = None) -> None:
        self._agents = {a.name: a for a in agents or []}

    def register(self, agent: AgentDefinition) -> None:
        if agent.name in self._agents:
            raise ValueError(f"agent {agent.name!r} is defined twice")
        self._agents[agent.name] = agent.model_copy(update={"source": "code"})

    def find(self, name: str) -> AgentDefinition | None:
        return self._agents.get(name)

    def get(self, name: str) -> AgentDefinition:
        agent = self._agents.get(name)
        if agent is None:
            raise NotFound(f"agent {name!r} not found")
        return agent

    def all(self) -> list[AgentDefinition]:
        return sorted(self._agents.values(), key=lambda a: a.name)
