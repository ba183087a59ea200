"""Calls to MCP servers with the official `mcp` SDK: over streamable HTTP (a tenant's servers)
or stdio (the operator's). A session per call, over one HTTP connection pool per process.

What went wrong is said in one of three ways: the server cannot be reached or answered 5xx
(`McpUnreachable`: try again later), it refused the request with another 4xx
(`McpRejected`), or it answered with an error of its own (`McpServerError`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import httpx2
import mcp_types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from pydantic import BaseModel, Field

from loomwork.errors import FailedPrecondition, Unavailable

T = TypeVar("T")

# The request `_meta` key that carries a call's idempotency key (`<run id>:<tool call id>`).
IDEMPOTENCY_KEY_META = "loomwork/idempotency_key"
CLIENT_INFO = mcp_types.Implementation(name="loomwork", version="0.1.0")
MAX_TOOL_PAGES = 100  # a server whose tools/list never ends is cut off here
_RETRYABLE_STATUS = {408, 429}


class HttpEndpoint(BaseModel):
    """A streamable HTTP server, with the headers every request carries."""

    url: str
    headers: dict[str, str] = Field(default_factory=dict, repr=False)

    @property
    def where(self) -> str:
        return f"the MCP server at {self.url}"


class StdioEndpoint(BaseModel):
    """A stdio server: a command this process starts for each session."""

    name: str
    command: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, repr=False)
    cwd: str | None = None

    @property
    def where(self) -> str:
        return f"the MCP server {self.name!r} (stdio: {self.command})"


McpEndpoint = HttpEndpoint | StdioEndpoint


class McpUnreachable(Unavailable):
    """The server cannot be reached, timed out or answered 5xx: worth trying again."""


class McpRejected(FailedPrecondition):
    """The server refused the request over HTTP (a 4xx other than 408 and 429)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class McpServerError(FailedPrecondition):
    """The server answered with an MCP error of its own, or with something that is not MCP."""


def _leaves(error: BaseException) -> list[BaseException]:
    """The errors inside task groups' exception groups (the SDK runs its transport in one)."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _unreachable(error: BaseException) -> bool:
    if isinstance(error, MCPError):
        return error.error.code in (mcp_types.CONNECTION_CLOSED, mcp_types.REQUEST_TIMEOUT)
    return isinstance(error, httpx2.TransportError | OSError | TimeoutError | EOFError)


class McpClient:
    """Lists and calls the tools of MCP servers; `timeout` bounds each request (seconds)."""

    def __init__(self, *, timeout: float = 60.0) -> None:
        self.timeout = timeout
        # Shared by every call's client: one TLS context (~40 ms to build) and kept-alive
        # connections, while each client carries its own server's headers.
        self._transport = httpx2.AsyncHTTPTransport()

    async def close(self) -> None:
        await self._transport.aclose()

    async def list_tools(self, endpoint: McpEndpoint) -> list[mcp_types.Tool]:
        """Every tool the server lists (all pages)."""

        async def listing(client: Client) -> list[mcp_types.Tool]:
            tools: list[mcp_types.Tool] = []
            cursor: str | None = None
            for _ in range(MAX_TOOL_PAGES):
                page = await client.list_tools(cursor=cursor, cache_mode="refresh")
                tools += page.tools
                cursor = page.next_cursor
                if not cursor:
                    break
            return tools

        return await self._session(endpoint, listing)

    async def call_tool(
        self,
        endpoint: McpEndpoint,
        name: str,
        arguments: dict[str, Any],
        *,
        idempotency_key: str = "",
    ) -> mcp_types.CallToolResult:
        """One `tools/call`; the idempotency key travels in the request's `_meta`."""
        meta = (
            cast(mcp_types.RequestParamsMeta, {IDEMPOTENCY_KEY_META: idempotency_key})
            if idempotency_key
            else None
        )

        async def calling(client: Client) -> mcp_types.CallToolResult:
            return await client.call_tool(name, arguments, meta=meta)

        return await self._session(endpoint, calling)

    async def _session(self, endpoint: McpEndpoint, work: Callable[[Client], Awaitable[T]]) -> T:
        """Open a session to `endpoint`, do `work` in it, close it; errors said our way."""
        statuses: list[int] = []
        server: Any
        if isinstance(endpoint, HttpEndpoint):

            async def record(response: httpx2.Response) -> None:
                statuses.append(response.status_code)

            http = httpx2.AsyncClient(
                transport=self._transport,
                headers=endpoint.headers,
                timeout=httpx2.Timeout(self.timeout),
                trust_env=False,
                event_hooks={"response": [record]},
            )
            server = streamable_http_client(endpoint.url, http_client=http)
        else:
            server = StdioServerParameters(
                command=endpoint.command, args=endpoint.args, env=endpoint.env, cwd=endpoint.cwd
            )
        try:
            async with Client(
                server, read_timeout_seconds=self.timeout, client_info=CLIENT_INFO, cache=None
            ) as client:
                return await work(client)
        except Exception as error:
            raise self._said_our_way(endpoint, error, statuses) from error

    @staticmethod
    def _said_our_way(endpoint: McpEndpoint, error: Exception, statuses: list[int]) -> Exception:
        where = endpoint.where
        refused = [s for s in statuses if s >= 400]
        if refused:
            status = refused[-1]
            if status >= 500 or status in _RETRYABLE_STATUS:
                return McpUnreachable(f"{where} answered HTTP {status}")
            return McpRejected(f"{where} refused the request (HTTP {status})", status)
        leaves = _leaves(error)
        for leaf in leaves:
            if _unreachable(leaf):
                detail = str(leaf) or type(leaf).__name__
                return McpUnreachable(f"{where} cannot be reached: {detail}")
        for leaf in leaves:
            if isinstance(leaf, MCPError):
                return McpServerError(f"{where} answered with an error: {leaf.error.message}")
        for leaf in leaves:
            if isinstance(leaf, Exception) and not isinstance(leaf, BaseExceptionGroup):
                return McpServerError(f"{where} answered with something unexpected: {leaf}")
        return error
