"""Client tools: tools a caller declares on its request and runs itself. The model sees them
like any other; a call of one is handed to the caller (the run waits durably for its result)
once its arguments validate against the declared schema."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loomwork.errors import InvalidArgument, Violations
from loomwork.json_schema import check_object_schema, validate_object
from loomwork.llm.chat import ToolSpec
from loomwork.messages import ToolCallPart, ToolResultPart
from loomwork.tools.routes import ToolRoute

MAX_DECLARED_BYTES = 256 * 1024  # every declaration together, as the run carries them


class ClientTool(BaseModel):
    """A tool declared by the caller of one run: what the model is told, and how long the
    run waits for a result (None: until it comes, or the run is canceled)."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    parameters_schema: dict[str, Any] = Field(default_factory=dict)
    timeout: timedelta | None = None

    def spec(self) -> ToolSpec:
        return ToolSpec(
            name=self.name, description=self.description, parameters=self.parameters_schema
        )

    def route(self) -> ToolRoute:
        return ToolRoute(kind="client", summary=f"client tool {self.name}", timeout=self.timeout)

    def argument_problems(self, call: ToolCallPart) -> str:
        """Why the call's arguments break the declared schema ("" when they validate): the
        text of the error result the model reads instead of the call reaching the caller."""
        problems = validate_object(self.parameters_schema, call.arguments)
        if not problems:
            return ""
        listed = "; ".join(f"{p.field}: {p.description}" for p in problems)
        return f"invalid arguments for {self.name}: {listed}"


def check_client_tools(tools: Iterable[ClientTool], *, field: str = "client_tools") -> None:
    """InvalidArgument, naming the field, unless the declarations are usable together: unique
    function names, JSON Schemas of objects, within the size limit. The limits of each field
    (name pattern, description length, timeout range, how many) are the request's rules
    (buf.validate in agent.proto); `check_names_free` checks the agent's names."""
    tools = list(tools)
    violations = Violations()
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        at = f"{field}[{i}]"
        if tool.name in seen:
            violations.add(f"{at}.name", f"{tool.name!r} is declared twice")
        seen.add(tool.name)
        try:
            check_object_schema(tool.parameters_schema, f"{at}.parameters_schema")
        except InvalidArgument as error:  # collected with the others
            violations.items.extend(error.violations)
    size = len(json.dumps([t.model_dump(mode="json") for t in tools]).encode())
    if size > MAX_DECLARED_BYTES:
        violations.add(field, f"are {size} bytes together, more than {MAX_DECLARED_BYTES}")
    violations.raise_if_any()


def check_names_free(
    tools: Iterable[ClientTool], taken: Iterable[str], *, field: str = "client_tools"
) -> None:
    """InvalidArgument unless no client tool has the name of a tool the agent has (`taken`)."""
    own = set(taken)
    violations = Violations()
    for i, tool in enumerate(tools):
        if tool.name in own:
            violations.add(f"{field}[{i}].name", f"{tool.name!r} is a tool of the agent already")
    violations.raise_if_any()


class ClientToolResult(BaseModel):
    """The caller's answer to one call of a client tool: a JSON value, or an error message
    (the model reads it as an error result)."""

    tool_call_id: str
    result: Any = None
    error: str | None = None

    def part(self, tool_name: str) -> ToolResultPart:
        """The result as the model reads it."""
        if self.error is not None:
            return ToolResultPart(
                tool_call_id=self.tool_call_id,
                tool_name=tool_name,
                result=self.error,
                is_error=True,
            )
        return ToolResultPart(
            tool_call_id=self.tool_call_id, tool_name=tool_name, result=self.result
        )
