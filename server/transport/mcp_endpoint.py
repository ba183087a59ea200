"""MCP at /mcp on the HTTP endpoint (streamable HTTP, the official `mcp` SDK's low-level
server): the tenant's agents, indexes and workflows as tools (`server.transport.mcp_tools`).

Same auth as gRPC: `authorization: Bearer <token>` names the caller and its tenant (a
missing, unknown or invalid token is 401 before MCP sees the request), and what a tool does
needs the roles its RPCs need on gRPC (PERMISSION_DENIED in the tool's error result).
Stateless: no session lives in this process, so any replica serves any request, as with
gRPC. A bad argument, or any domain error, is a tool error result naming the field and the
status code (the model sees it and can correct itself); anything unexpected is an error
result with a logged incident id.
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

from loomwork.errors import InvalidArgument, LoomworkError, Unauthenticated, Unavailable
from server.runtime import Runtime
from server.servicers.tenancy import current_tenant
from server.transport.access import Principal, current_principal
from server.transport.bearer import Authenticator
from server.transport.errors import pydantic_violations, status_code_of
from server.transport.mcp_tools import McpTool, McpTools

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
# Where the auth check leaves the caller (a Principal) in the request's ASGI scope.
PRINCIPAL_SCOPE_KEY = "loomwork.principal"
INSTRUCTIONS = (
    "Loomwork runs your agents, searches and answers from your document indexes, and runs "
    "your durable workflows. run_agent and answer_from_index wait for the answer; "
    "start_workflow returns at once, and get_run follows a run of either kind."
)


class McpEndpoint:
    """The ASGI app of /mcp: bearer auth, then the SDK's streamable HTTP transport over a
    low-level MCP server whose tools are `McpTools`. Serve it inside `lifespan()`."""

    def __init__(self, runtime: Runtime, auth: Authenticator) -> None:
        self.auth = auth
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
            principal = await self.auth.principal(
                Headers(scope=scope).get("authorization", ""), carrier="header"
            )
        except Unavailable as error:  # the JWKS cannot be fetched
            await JSONResponse({"error": error.message}, status_code=503)(scope, receive, send)
            return
        except Unauthenticated as error:
            refusal = JSONResponse(
                {"error": error.message},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="loomwork"'},
            )
            await refusal(scope, receive, send)
            return
        scope[PRINCIPAL_SCOPE_KEY] = principal
        await self.sessions.handle_request(scope, receive, send)

    # -- MCP handlers

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        with _caller_of(ctx):
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
        with _caller_of(ctx):
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
def _caller_of(ctx: ServerRequestContext[Any]) -> Iterator[None]:
    """Serve the MCP request as the caller its HTTP request authenticated as (the servicers
    read its tenant from `current_tenant`, the tools' access checks the caller from
    `current_principal`, as on gRPC)."""
    request = ctx.request
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY) if isinstance(request, Request) else None
    if not isinstance(principal, Principal):  # only /mcp's own HTTP requests reach this server
        raise MCPError(code=INVALID_REQUEST, message="no authenticated HTTP request")
    tenant_token = current_tenant.set(principal.tenant)
    principal_token = current_principal.set(principal)
    try:
        yield
    finally:
        current_principal.reset(principal_token)
        current_tenant.reset(tenant_token)


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
