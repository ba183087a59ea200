"""Tools an agent may call: a pydantic argument model, a coroutine, and a registry that
validates arguments and turns every tool-level problem into an error result for the model."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from loomwork.errors import InvalidArgument, NotFound
from loomwork.llm.chat import ToolSpec
from loomwork.messages import ToolCallPart, ToolResultPart

log = logging.getLogger(__name__)


class ToolContext(BaseModel):
    """What a tool knows about the call: who, which run, and a key for exactly-once effects."""

    tenant: str
    run_id: str
    tool_call_id: str
    thread_id: str = ""
    resource_id: str = ""
    memory_scope: str = "thread"  # where working memory lives for this agent
    # The agent's working-memory JSON schema, when it keeps structured working memory.
    working_memory_schema: dict[str, Any] | None = None
    # The caller's free-form metadata for the run (GenerateRequest.metadata).
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        """Stable across retries of this call: a tool that writes stores it with the write."""
        return f"{self.run_id}:{self.tool_call_id}"


ToolFunction = Callable[[Any, ToolContext], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: type[BaseModel]
    run: ToolFunction
    requires_approval: bool = False

    @functools.cached_property
    def _spec(self) -> ToolSpec:
        return ToolSpec(
            name=self.name, description=self.description, parameters=self.args.model_json_schema()
        )

    def spec(self) -> ToolSpec:
        """What the model is told of the tool; built once (a JSON schema costs ~0.5 ms)."""
        return self._spec


class ToolRegistry:
    """Every tool the worker can run, by name."""

    def __init__(self, tools: list[Tool] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools or []:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is registered twice")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool:
        tool = self._tools.get(name)
        if tool is None:
            raise NotFound(f"tool {name!r} is not registered")
        return tool

    def requires_approval(self, name: str) -> bool:
        tool = self._tools.get(name)
        return bool(tool and tool.requires_approval)

    def check_arguments(self, name: str, arguments: dict[str, Any], field: str) -> None:
        """InvalidArgument (on `field`) unless `arguments` validate against the tool's schema."""
        try:
            self.get(name).args.model_validate(arguments)
        except ValidationError as exc:
            raise InvalidArgument.field(
                field, f"invalid for {name}: {exc.errors()[0]['msg']}"
            ) from exc

    def all(self) -> list[Tool]:
        return sorted(self._tools.values(), key=lambda t: t.name)

    def check_names(self, names: list[str], field: str = "tool_names") -> None:
        unknown = [n for n in names if n not in self._tools]
        if unknown:
            raise InvalidArgument.field(field, f"unknown tools: {', '.join(unknown)}")

    def specs(self, names: list[str]) -> list[ToolSpec]:
        return [self.get(name).spec() for name in names]

    async def call(
        self, call: ToolCallPart, ctx: ToolContext, *, allowed: list[str]
    ) -> ToolResultPart:
        """Run one call. Unknown or disallowed tools, invalid arguments and tool exceptions
        come back as error results (the model sees them and can correct itself)."""

        def error(message: str) -> ToolResultPart:
            return ToolResultPart(
                tool_call_id=call.tool_call_id,
                tool_name=call.tool_name,
                result=message,
                is_error=True,
            )

        if call.tool_name not in allowed or call.tool_name not in self._tools:
            return error(f"unknown tool {call.tool_name!r}; available: {', '.join(allowed)}")
        tool = self._tools[call.tool_name]
        try:
            args = tool.args.model_validate(call.arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors()
            )
            return error(f"invalid arguments for {tool.name}: {problems}")
        try:
            result = await tool.run(args, ctx)
        except Exception as exc:  # a tool failure is the model's to handle
            log.warning("tool %s failed in run %s: %s", tool.name, ctx.run_id, exc)
            return error(f"{tool.name} failed: {exc}")
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        return ToolResultPart(tool_call_id=call.tool_call_id, tool_name=tool.name, result=result)
