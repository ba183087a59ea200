"""Calls to MCP servers with the official `mcp` SDK: over streamable HTTP (a tenant's servers)
or stdio (the operator's). Sessions are kept open and reused (one per server, headers and
process; an HTTP session's handshake costs two requests, a stdio one starts a process) until
idle for a minute, over one HTTP connection pool per process.

What went wrong is said in one of three ways: the server cannot be reached or answered 5xx
(`McpUnreachable`: try again later), it refused the request with another 4xx
(`McpRejected`), or it answered with an error of its own (`McpServerError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
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
IDLE_SECONDS = 60.0  # a session unused this long is closed
MAX_SESSIONS = 64  # past it, the sessions unused longest are closed
_RETRYABLE_STATUS = {408, 429}
# The HTTP statuses of the requests one call made: the SDK runs each request in a task of its
# own but in (a copy of) the caller's context, so the list set here is the one its hook sees.
_STATUSES: ContextVar[list[int] | None] = ContextVar("mcp_http_statuses", default=None)


class HttpEndpoint(BaseModel):
    """A streamable HTTP server, with the headers every request carries. `tenant`: whose
    session it is (a session, and whatever the server keeps for it, is never shared between
    tenants)."""

    url: str
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    tenant: str = ""

    @property
    def where(self) -> str:
        return f"the MCP server at {self.url}"

    def key(self) -> str:
        """Which held session serves it: one per URL, headers and tenant."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class StdioEndpoint(BaseModel):
    """A stdio server: a command this process starts for each session (one per tenant)."""

    name: str
    tenant: str = ""
    command: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, repr=False)
    cwd: str | None = None

    @property
    def where(self) -> str:
        return f"the MCP server {self.name!r} (stdio: {self.command})"

    def key(self) -> str:
        """Which held session serves it: one per configuration and tenant."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


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


async def _record_status(response: httpx2.Response) -> None:
    statuses = _STATUSES.get()
    if statuses is not None:
        statuses.append(response.status_code)


def _unreachable(error: BaseException) -> bool:
    if isinstance(error, MCPError):
        return error.error.code in (mcp_types.CONNECTION_CLOSED, mcp_types.REQUEST_TIMEOUT)
    return isinstance(error, httpx2.TransportError | OSError | TimeoutError | EOFError)


class _HeldSession:
    """A session kept open for reuse. A task of its own enters the SDK's `Client` (whose
    transport runs in that task's task group) and leaves it once closed, or once unused for
    `idle` seconds; a session whose transport failed ends with `error`."""

    def __init__(self, server: Any, *, timeout: float, idle: float) -> None:
        self.client: Client | None = None
        self.error: Exception | None = None
        self.opening: list[int] = []  # the HTTP statuses of its handshake
        self.busy = 0
        self.used = time.monotonic()
        self._idle = idle
        self._ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._timeout = timeout
        self.task = asyncio.create_task(self._hold(server), name="mcp-session")

    async def _hold(self, server: Any) -> None:
        _STATUSES.set(self.opening)
        try:
            async with Client(
                server, read_timeout_seconds=self._timeout, client_info=CLIENT_INFO, cache=None
            ) as client:
                self.client = client
                self._ready.set()
                while not self._closing.is_set():
                    unused = time.monotonic() - self.used
                    if not self.busy and unused >= self._idle:
                        break
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(self._idle - unused, 0.5)):
                            await self._closing.wait()
        except Exception as error:
            self.error = error
        finally:
            self._ready.set()

    @property
    def alive(self) -> bool:
        return not self.task.done()

    async def opened(self) -> Client:
        """The session's client once its handshake is done; its error if it failed."""
        await self._ready.wait()
        if self.client is None or not self.alive:
            raise self.error or ConnectionError("the session was closed")
        return self.client

    def close(self) -> None:
        self._closing.set()


class McpClient:
    """Lists and calls the tools of MCP servers; `timeout` bounds each request (seconds)."""

    def __init__(self, *, timeout: float = 60.0, idle_seconds: float = IDLE_SECONDS) -> None:
        self.timeout = timeout
        self.idle_seconds = idle_seconds
        # Shared by every session's HTTP client: one TLS context (~40 ms to build) and
        # kept-alive connections, while each client carries its own server's headers.
        self._transport = httpx2.AsyncHTTPTransport()
        self._sessions: dict[str, _HeldSession] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Close every held session (stdio servers' processes end), then the HTTP pool."""
        held = [*self._sessions.values()]
        self._sessions.clear()
        for session in held:
            session.close()
        await asyncio.gather(*(s.task for s in held), *self._closing, return_exceptions=True)
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

        return await self._in_session(endpoint, listing)

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

        return await self._in_session(endpoint, calling)

    async def _in_session(
        self, endpoint: McpEndpoint, work: Callable[[Client], Awaitable[T]], *, again: bool = True
    ) -> T:
        """`work` in the endpoint's held session (opened first if there is none); errors said
        our way. A reused session that fails other than with an error of the server's is
        closed and the work tried once more in a new one (the server may have restarted)."""
        key = endpoint.key()
        held = self._sessions.get(key)
        reused = held is not None and held.alive
        if held is None or not held.alive:
            held = self._sessions[key] = _HeldSession(
                self._server(endpoint), timeout=self.timeout, idle=self.idle_seconds
            )
            self._trim()
        statuses: list[int] = []
        token = _STATUSES.set(statuses)
        held.busy += 1
        try:
            return await work(await held.opened())
        except Exception as error:
            failure = _said_our_way(endpoint, [error, held.error], [*held.opening, *statuses])
            if isinstance(failure, McpServerError) and held.alive:
                raise failure from error
            self._drop(key, held)
            if not (reused and again):
                raise failure from error
        finally:
            held.busy -= 1
            held.used = time.monotonic()
            _STATUSES.reset(token)
        return await self._in_session(endpoint, work, again=False)

    def _server(self, endpoint: McpEndpoint) -> Any:
        """What the SDK's Client connects to for `endpoint`."""
        if isinstance(endpoint, StdioEndpoint):
            return StdioServerParameters(
                command=endpoint.command, args=endpoint.args, env=endpoint.env, cwd=endpoint.cwd
            )
        http = httpx2.AsyncClient(
            transport=self._transport,
            headers=endpoint.headers,
            timeout=httpx2.Timeout(self.timeout),
            trust_env=False,
            event_hooks={"response": [_record_status]},
        )
        return streamable_http_client(endpoint.url, http_client=http)

    def _drop(self, key: str, held: _HeldSession) -> None:
        if self._sessions.get(key) is held:
            del self._sessions[key]
        held.close()
        if not held.task.done():
            self._closing.add(held.task)
            held.task.add_done_callback(self._closing.discard)

    def _trim(self) -> None:
        """Past MAX_SESSIONS, close the idle sessions unused longest."""
        idle = sorted((s.used, k) for k, s in self._sessions.items() if not s.busy)
        for _, key in idle[: max(0, len(self._sessions) - MAX_SESSIONS)]:
            self._drop(key, self._sessions[key])


def _said_our_way(
    endpoint: McpEndpoint, errors: list[Exception | None], statuses: list[int]
) -> Exception:
    """What went wrong with a request to `endpoint`, as one of this module's errors."""
    where = endpoint.where
    refused = [s for s in statuses if s >= 400]
    if refused:
        status = refused[-1]
        if status >= 500 or status in _RETRYABLE_STATUS:
            return McpUnreachable(f"{where} answered HTTP {status}")
        return McpRejected(f"{where} refused the request (HTTP {status})", status)
    leaves = [leaf for error in errors if error is not None for leaf in _leaves(error)]
    unreachable = [leaf for leaf in leaves if _unreachable(leaf)]
    if unreachable:
        # The transport's own error says more than the session's "connection closed".
        cause = next((e for e in unreachable if not isinstance(e, MCPError)), unreachable[0])
        return McpUnreachable(f"{where} cannot be reached: {str(cause) or type(cause).__name__}")
    for leaf in leaves:
        if isinstance(leaf, MCPError):
            return McpServerError(f"{where} answered with an error: {leaf.error.message}")
    first = next(e for e in errors if e is not None)
    return McpServerError(
        f"{where} answered with something unexpected: {leaves[0] if leaves else first}"
    )
