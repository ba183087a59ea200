"""MCP at /mcp on the HTTP endpoint (streamable HTTP, the official `mcp` SDK's low-level
server): the tenant's agents, indexes and workflows as tools (`server.transport.mcp_tools`).

Same auth as gRPC: `authorization: Bearer <token>` names the tenant (a missing or unknown
token is 401 before MCP sees the request). Stateless: no session lives in this process, so
any replica serves any request, as with gRPC. A bad argument, or any domain error, is a tool
error result naming the field and the status code (the model sees it and can correct
itself); anything unexpected is an error result with a logged incident id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from importlib.metadata import version
from typing import Any

import pydantic
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
)
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from loomwork.errors import InvalidArgument, LoomworkError, Unauthenticated
from server.runtime import Runtime
from server.servicers.tenancy import current_tenant
from server.transport.bearer import TenantTokens
from server.transport.errors import pydantic_violations, status_code_of
from server.transport.mcp_tools import McpTool, McpTools

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
# Where the auth check leaves the caller's tenant in the request's ASGI scope.
TENANT_SCOPE_KEY = "loomwork.tenant"
INSTRUCTIONS = (
    "Loomwork runs your agents, searches and answers from your document indexes, and runs "
    "your durable workflows. run_agent and answer_from_index wait for the answer; "
    "start_workflow returns at once, and get_run follows a run of either kind."
)


class McpEndpoint:
    """The ASGI app of /mcp: bearer auth, then the SDK's streamable HTTP transport over a
    low-level MCP server whose tools are `McpTools`. Serve it inside `lifespan()`."""

    def __init__(self, runtime: Runtime, tokens: TenantTokens) -> None:
        self.tokens = tokens
        self.tools = McpTools(runtime)
        self.server: Server[Any] = Server(
            "loomwork",
            version=version("loomwork"),
            instructions=INSTRUCTIONS,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            # The schemas without the tenant's choices, for the SDK's checks of a call.
            get_tool_input_schema=self._input_schema,
        )
        self.sessions = StreamableHTTPSessionManager(self.server, stateless=True)

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        """Runs the transport's task group; requests are served only inside it."""
        return self.sessions.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            tenant_id = self.tokens.tenant(
                Headers(scope=scope).get("authorization", ""), carrier="header"
            )
        except Unauthenticated as error:
            refusal = JSONResponse(
                {"error": error.message},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="loomwork"'},
            )
            await refusal(scope, receive, send)
            return
        scope[TENANT_SCOPE_KEY] = tenant_id
        await self.sessions.handle_request(scope, receive, send)

    # -- MCP handlers

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        with _tenant_of(ctx):
            try:
                return ListToolsResult(tools=await self.tools.listing())
            except LoomworkError as error:
                raise MCPError(code=INTERNAL_ERROR, message=error.message) from error
            except Exception as error:
                incident = _incident("tools/list", error)
                raise MCPError(code=INTERNAL_ERROR, message=incident) from None

    async def call_tool(
        self, ctx: ServerRequestContext[Any], params: CallToolRequestParams
    ) -> CallToolResult:
        tool = self.tools.tools.get(params.name)
        if tool is None:
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"unknown tool {params.name!r}: one of {', '.join(self.tools.tools)}",
            )
        with _tenant_of(ctx):
            try:
                arguments = tool.arguments.model_validate(params.arguments or {})
                outcome = await tool.call(arguments)
            except Exception as error:
                return _error_result(tool, error)
        structured = outcome.result.model_dump(mode="json", exclude_none=True)
        return CallToolResult(
            content=[TextContent(type="text", text=json.dumps(structured, ensure_ascii=False))],
            structured_content=structured,
            is_error=outcome.failed,
        )

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        tool = self.tools.tools.get(name)
        return None if tool is None else tool.arguments.model_json_schema()


@contextlib.contextmanager
def _tenant_of(ctx: ServerRequestContext[Any]) -> Iterator[None]:
    """Serve the MCP request as the tenant its HTTP request authenticated as (the servicers
    read it from `current_tenant`, as on gRPC)."""
    request = ctx.request
    tenant_id = request.scope.get(TENANT_SCOPE_KEY) if isinstance(request, Request) else None
    if not isinstance(tenant_id, str):  # only /mcp's own HTTP requests reach this server
        raise MCPError(code=INVALID_REQUEST, message="no authenticated HTTP request")
    token = current_tenant.set(tenant_id)
    try:
        yield
    finally:
        current_tenant.reset(token)


def _error_result(tool: McpTool, error: Exception) -> CallToolResult:
    """A failed call as the error result the model reads: the status code and what was wrong,
    each bad field by the name of its argument."""
    if isinstance(error, pydantic.ValidationError):
        error = InvalidArgument(pydantic_violations(error))
    if isinstance(error, InvalidArgument):
        problems = "; ".join(
            f"{_argument(tool, v.field)}: {v.description}" for v in error.violations
        )
        text = f"INVALID_ARGUMENT: {problems}"
    elif isinstance(error, LoomworkError):
        log.debug("%s -> %s", tool.name, error.message)
        text = f"{status_code_of(error).name}: {error.message}"
    else:
        text = f"INTERNAL: {_incident(tool.name, error)}"
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def _argument(tool: McpTool, field: str) -> str:
    """The argument a servicer's field path comes from (`retrieval.top_k` → `top_k`)."""
    for servicer_field, argument in tool.argument_of.items():
        if field == servicer_field or field.startswith(f"{servicer_field}."):
            return argument + field[len(servicer_field) :]
    return field


def _incident(what: str, error: Exception) -> str:
    incident = uuid.uuid4().hex[:12]
    log.error("MCP %s failed unexpectedly (incident %s)", what, incident, exc_info=error)
    return f"internal error (incident {incident})"
