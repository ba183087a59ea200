"""What an agent run needs of the MCP servers a tenant may use: their tools' specs and routes,
and calls. `loomwork.integrations.mcp_tools.McpToolSource` provides it (agents, below
integrations, know only this protocol)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Protocol

from pydantic import BaseModel

from loomwork.llm.chat import ToolSpec
from loomwork.messages import ToolCallPart, ToolResultPart
from loomwork.retries import RetryPolicy
from loomwork.tools.mcp_names import McpToolRef
from loomwork.tools.routes import ToolRoute

# An MCP call that cannot reach its server (a transport error, a 5xx answer) is tried three
# times in about two seconds; the last failure is an error result for the model.
MCP_CALL_RETRY = RetryPolicy(
    max_attempts=3,
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    timeout=timedelta(minutes=2),
)


class McpToolInfo(BaseModel):
    """One tool of an MCP server as the server last listed it."""

    ref: McpToolRef
    description: str = ""
    input_schema: dict[str, Any]

    def spec(self) -> ToolSpec:
        """What the model is told of it, under its function name."""
        return ToolSpec(
            name=self.ref.function_name, description=self.description, parameters=self.input_schema
        )

    def route(self) -> ToolRoute:
        """Its calls: an activity of their own, summarised `mcp <server>/<tool>`."""
        return ToolRoute(
            kind="mcp",
            summary=f"mcp {self.ref.server}/{self.ref.tool}",
            timeout=MCP_CALL_RETRY.timeout,
            retry=MCP_CALL_RETRY,
            mcp=self.ref,
        )


class McpTools(Protocol):
    """The MCP servers a tenant may use (its own and the operator's), their tools and calls."""

    async def offer(self, tenant: str, names: list[str]) -> list[McpToolInfo]:
        """The tools that `mcp:` names stand for, as their servers last listed them (listed
        again first when older than the TTL). Names of servers or tools that do not exist
        (any more) are left out, with a warning: the run goes on without them."""
        ...

    async def tool_names(self, tenant: str, server: str) -> set[str] | None:
        """The names of a server's tools as last listed; None when there is no such server."""
        ...

    async def call(
        self, tenant: str, ref: McpToolRef, call: ToolCallPart, *, idempotency_key: str
    ) -> ToolResultPart:
        """Call the tool. Arguments that break its input schema, an answer with `isError`
        and any error the server answers with are error results; a server that cannot be
        reached (or answers 5xx) raises Unavailable, to be retried."""
        ...

    async def listed(self, tenant: str) -> list[McpToolInfo]:
        """Every tool of every server the tenant may use, as last listed (for ListTools)."""
        ...
