"""The tools a process can run, by name: each validates its arguments against its schema and
turns every tool-level problem into an error result for the model."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from loomwork.errors import InvalidArgument, LoomworkError, NotFound
from loomwork.llm.chat import ToolSpec
from loomwork.messages import ToolCallPart, ToolResultPart
from loomwork.retries import RetryPolicy
from loomwork.telemetry import tool_execution, tool_outcome
from loomwork.tools.routes import DEFAULT_TOOL_TIMEOUT, ToolRoute
from loomwork.tools.tool_context import ToolContext

log = logging.getLogger(__name__)

ToolFunction = Callable[[Any, ToolContext], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    """A tool: its name and description for the model, its argument model, its coroutine,
    and how its calls run (approval first, one attempt's timeout, retries)."""

    name: str
    description: str
    args: type[BaseModel]
    run: ToolFunction
    requires_approval: bool = False
    # How long a call waits for a decision before it is rejected (None: until one comes).
    approval_timeout: timedelta | None = None
    # The JSON schema of what it returns (from its return annotation), when known.
    result_schema: dict[str, Any] | None = None
    timeout: timedelta | None = None  # None: the retry policy's, else the default
    retry: RetryPolicy | None = None  # None: the agent workflow's default for tools

    @functools.cached_property
    def _spec(self) -> ToolSpec:
        return ToolSpec(
            name=self.name, description=self.description, parameters=self.args.model_json_schema()
        )

    def spec(self) -> ToolSpec:
        """What the model is told of the tool; built once (a JSON schema takes a while)."""
        return self._spec

    def route(self) -> ToolRoute:
        """How the agent workflow runs a call of this tool."""
        timeout = self.timeout or (self.retry.timeout if self.retry else DEFAULT_TOOL_TIMEOUT)
        return ToolRoute(
            kind="worker",
            timeout=timeout,
            retry=self.retry,
            approval_timeout=self.approval_timeout,
        )


class ToolFailed(LoomworkError):
    """A tool raised and has attempts left: Temporal retries the call."""


def error_result(call: ToolCallPart, message: str) -> ToolResultPart:
    """The result the model reads when a call could not run as asked."""
    return ToolResultPart(
        tool_call_id=call.tool_call_id, tool_name=call.tool_name, result=message, is_error=True
    )


class ToolRegistry:
    """Every tool this process can run, by name."""

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

    def has(self, name: str) -> bool:
        return name in self._tools

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
        """What the model is told of the named tools this process has. A name it lacks (a
        worker started without the module that defines it) is left out, with a warning:
        the model cannot call what it is not shown, and the run goes on."""
        missing = [name for name in names if name not in self._tools]
        if missing:
            log.warning(
                "tools %s are not registered in this process (LOOMWORK_TOOL_MODULES?): "
                "not offered to the model",
                ", ".join(missing),
            )
        return [self._tools[name].spec() for name in names if name in self._tools]

    def route(self, name: str) -> ToolRoute:
        """How a call of `name` runs; the defaults for a name this process lacks (its call
        then gets an error result)."""
        tool = self._tools.get(name)
        return tool.route() if tool is not None else ToolRoute()

    async def call(
        self,
        call: ToolCallPart,
        ctx: ToolContext,
        *,
        allowed: list[str],
        retry_failures: bool = False,
    ) -> ToolResultPart:
        """Run one call. Unknown or disallowed tools, invalid arguments and tool exceptions
        come back as error results (the model sees them and can correct itself); with
        `retry_failures`, a tool's exception is raised as ToolFailed instead (retried).
        Traced (`execute_tool <tool>`) and counted by outcome."""
        # A name the model made up is no label value: "unknown".
        name = call.tool_name if call.tool_name in self._tools else "unknown"
        with tool_execution(name, call.tool_call_id, tenant=ctx.tenant) as span:
            try:
                result = await self._call(call, ctx, allowed=allowed, retry_failures=retry_failures)
            except ToolFailed:
                tool_outcome(span, name, ctx.tenant, "failed")
                raise
            tool_outcome(span, name, ctx.tenant, "error" if result.is_error else "ok")
            return result

    async def _call(
        self,
        call: ToolCallPart,
        ctx: ToolContext,
        *,
        allowed: list[str],
        retry_failures: bool,
    ) -> ToolResultPart:
        if call.tool_name not in allowed:
            return error_result(
                call, f"unknown tool {call.tool_name!r}; available: {', '.join(allowed)}"
            )
        tool = self._tools.get(call.tool_name)
        if tool is None:
            return error_result(
                call,
                f"tool {call.tool_name!r} is not available on this worker "
                "(not in its LOOMWORK_TOOL_MODULES)",
            )
        try:
            args = tool.args.model_validate(call.arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors()
            )
            return error_result(call, f"invalid arguments for {tool.name}: {problems}")
        try:
            result = await tool.run(args, ctx)
        except Exception as exc:  # a tool failure is the model's to handle
            if retry_failures:
                raise ToolFailed(f"{tool.name} failed: {exc}") from exc
            log.warning("tool %s failed in run %s: %s", tool.name, ctx.run_id, exc)
            return error_result(call, f"{tool.name} failed: {exc}")
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        return ToolResultPart(tool_call_id=call.tool_call_id, tool_name=tool.name, result=result)
