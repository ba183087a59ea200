"""Agent definitions and the registry of agents defined in code."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

from loomwork.errors import NotFound
from loomwork.memory.settings import MemorySettings

AGENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class AgentDefinition(BaseModel):
    """What an agent is: instructions, a model, the tools it may call, a step limit."""

    name: str
    description: str = ""
    instructions: str
    model: str = ""  # empty: the server's LOOMWORK_CHAT_MODEL
    tool_names: list[str] = Field(default_factory=list)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    max_steps: int = Field(default=5, ge=1, le=100)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not AGENT_NAME.match(value):
            raise ValueError("1..64 characters of [A-Za-z0-9_-], starting with a letter")
        return value


class AgentRegistry:
    """Agents defined in Python, visible to every tenant."""

    def __init__(self, agents: list[AgentDefinition] | None = None) -> None:
        self._agents = {a.name: a for a in agents or []}

    def register(self, agent: AgentDefinition) -> None:
        if agent.name in self._agents:
            raise ValueError(f"agent {agent.name!r} is defined twice")
        self._agents[agent.name] = agent

    def get(self, name: str) -> AgentDefinition:
        agent = self._agents.get(name)
        if agent is None:
            raise NotFound(f"agent {name!r} not found")
        return agent

    def all(self) -> list[AgentDefinition]:
        return sorted(self._agents.values(), key=lambda a: a.name)
