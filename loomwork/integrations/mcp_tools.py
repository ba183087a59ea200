"""MCP servers as tool sources: a tenant's own servers (registered by RPC, streamable HTTP) and
the operator's stdio servers (LOOMWORK_MCP_SERVERS, shared by every tenant; no RPC can add one,
so a tenant can never make a process start). Tool lists are cached in Postgres and listed again
when older than the TTL; calls are checked against the tool's input schema first."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import jsonschema
import mcp_types
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from loomwork.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from loomwork.integrations.listing import check_page_size
from loomwork.integrations.mcp_client import (
    HttpEndpoint,
    McpClient,
    McpEndpoint,
    McpRejected,
    StdioEndpoint,
)
from loomwork.integrations.mcp_servers import (
    McpServer,
    McpServerStore,
    McpTool,
    NewMcpServer,
    OperatorToolLists,
    check_new_server,
)
from loomwork.messages import ToolCallPart, ToolResultPart
from loomwork.paging import decode_text_token, encode_text_token
from loomwork.telemetry import tool_execution, tool_outcome
from loomwork.tools.mcp_names import EVERY_TOOL, SERVER_NAME, McpToolRef, parse_mcp_name
from loomwork.tools.mcp_source import McpToolInfo
from loomwork.tools.registry import error_result
from loomwork.tools.tool_context import OAuthAccess

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TOOLS_TTL = timedelta(minutes=5)
# How long a run waits for a stale server's tools to be listed again before its model call
# (past it, the run goes on with the old list).
RUN_LISTING_TIMEOUT = 10.0


class OperatorMcpServer(BaseModel):
    """A stdio server the operator configured: the command every process starts to reach it."""

    model_config = ConfigDict(extra="forbid")

    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None

    def fingerprint(self) -> str:
        """Changes when the configuration does (its cached tool list is then listed again)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


_OPERATOR_SERVERS = TypeAdapter(dict[str, OperatorMcpServer])


def parse_operator_servers(spec: str) -> dict[str, OperatorMcpServer]:
    """LOOMWORK_MCP_SERVERS: a JSON object `{"<name>": {"command", "args", "env", "cwd"}}`."""
    if not spec.strip():
        return {}
    try:
        servers = _OPERATOR_SERVERS.validate_json(spec)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or "the value"
        raise FailedPrecondition(
            f"LOOMWORK_MCP_SERVERS: {where}: {problem['msg']} (expected a JSON object "
            '{"<name>": {"command": "...", "args": [...], "env": {...}}})'
        ) from exc
    for name in servers:
        if not SERVER_NAME.match(name):
            raise FailedPrecondition(
                f"LOOMWORK_MCP_SERVERS: server name {name!r} must be 1..32 characters of [a-z0-9_-]"
            )
    return servers


@functools.lru_cache(maxsize=512)
def _validator(schema_json: str) -> jsonschema.protocols.Validator | None:
    """A compiled validator for a tool's input schema; None for a schema that is not one."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        log.warning("an MCP tool's input schema is invalid, calls go unchecked: %s", exc.message)
        return None
    return cls(schema)


def argument_problems(schema: dict[str, Any], arguments: dict[str, Any]) -> str:
    """What is wrong with `arguments` for this input schema ('' when nothing is)."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    if validator is None:
        return ""
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    return "; ".join(
        f"{'.'.join(str(p) for p in e.absolute_path) or 'arguments'}: {e.message}" for e in errors
    )


def _content(block: mcp_types.ContentBlock) -> Any:
    """A content block as the model reads it: its text, or the block with binary data left out."""
    if isinstance(block, mcp_types.TextContent):
        return block.text
    data = block.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(data.get("data"), str):
        data["data"] = f"<{len(data['data'])} characters of base64 left out>"
    return data


def tool_result(call: ToolCallPart, result: mcp_types.CallToolResult) -> ToolResultPart:
    """An MCP tool's answer as the model reads it: its structured content when it has some,
    else its text (or its content blocks); `isError` makes it an error result."""
    blocks = [_content(b) for b in result.content]
    text_only = all(isinstance(b, str) for b in blocks)
    value: Any = "\n".join(blocks) if text_only else blocks
    if result.structured_content is not None and not result.is_error:
        value = result.structured_content
    return ToolResultPart(
        tool_call_id=call.tool_call_id,
        tool_name=call.tool_name,
        result=value if value != "" else ("the tool failed" if result.is_error else ""),
        is_error=bool(result.is_error),
    )


def _tools(listed: list[mcp_types.Tool]) -> list[McpTool]:
    return [
        McpTool(name=t.name, description=t.description or "", input_schema=t.input_schema)
        for t in listed
    ]


class McpToolSource:
    """The MCP servers of every tenant: registration, tool lists and calls (`McpTools`)."""

    def __init__(
        self,
        store: McpServerStore,
        operator_lists: OperatorToolLists,
        client: McpClient,
        *,
        operator: dict[str, OperatorMcpServer] | None = None,
        oauth: OAuthAccess | None = None,
        ttl: timedelta = DEFAULT_TOOLS_TTL,
    ) -> None:
        self.store = store
        self.operator_lists = operator_lists
        self.client = client
        self.operator = operator or {}
        self.oauth = oauth
        self.ttl = ttl

    # -- the servers, as IntegrationService shows them

    async def create(self, tenant: str, new: NewMcpServer) -> McpServer:
        """Register a server once its tools could be listed (UNAVAILABLE if it cannot be
        reached: nothing is stored then)."""
        check_new_server(new)
        if new.name in self.operator:
            raise AlreadyExists(f"MCP server {new.name!r} is configured by the operator")
        if await self.store.find(tenant, new.name) is not None:
            raise AlreadyExists(f"MCP server {new.name!r} exists already")
        if new.oauth_connection_id:
            try:
                await self._token(tenant, new.oauth_connection_id)
            except NotFound:
                raise InvalidArgument.field(
                    "mcp_server.oauth_connection_id", "is not an OAuth connection of the tenant"
                ) from None
        server = McpServer(
            name=new.name,
            url=new.url,
            oauth_connection_id=new.oauth_connection_id,
            headers=new.headers,
        )
        tools = await self._on_server(tenant, server, self.client.list_tools)
        return await self.store.create(tenant, new, _tools(tools))

    async def get(self, tenant: str, name: str) -> McpServer:
        server = (await self._servers(tenant, [name], refresh=False)).get(name)
        if server is None:
            raise NotFound(f"MCP server {name!r} not found")
        return server

    async def list_servers(
        self, tenant: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[McpServer], str]:
        """One page of the servers the tenant may use (its own and the operator's) by name,
        and the next page's token ('' on the last)."""
        size = check_page_size(page_size)
        scope = f"mcp_servers:{tenant}"
        after = decode_text_token(page_token, scope)
        operator = [n for n in sorted(self.operator) if n > after][: size + 1]
        found = [
            *(await self._operator_servers(operator, refresh=False)).values(),
            *await self.store.list_after(tenant, after=after, limit=size + 1),
        ]
        found.sort(key=lambda s: s.name)
        page = found[:size]
        return page, encode_text_token(page[-1].name, scope) if len(found) > size else ""

    async def delete(self, tenant: str, name: str) -> None:
        if name in self.operator:
            raise FailedPrecondition(
                f"MCP server {name!r} is configured by the operator and cannot be deleted"
            )
        if not await self.store.delete(tenant, name):
            raise NotFound(f"MCP server {name!r} not found")

    async def refresh(self, tenant: str, name: str) -> McpServer:
        """List the server's tools now and cache them."""
        if name in self.operator:
            return await self._list_operator(name)
        server = await self.store.find(tenant, name, with_headers=True)
        if server is None:
            raise NotFound(f"MCP server {name!r} not found")
        tools = await self._on_server(tenant, server, self.client.list_tools)
        saved = await self.store.save_tools(tenant, name, _tools(tools))
        if saved is None:
            raise NotFound(f"MCP server {name!r} not found")
        return saved

    # -- McpTools: what agent runs use

    async def offer(self, tenant: str, names: list[str]) -> list[McpToolInfo]:
        refs: list[McpToolRef] = []
        for name in names:
            try:
                refs.append(parse_mcp_name(name))
            except ValueError as exc:
                log.warning("tool name %r is left out: %s", name, exc)
        servers = await self._servers(tenant, sorted({r.server for r in refs}), refresh=True)
        offered: dict[str, McpToolInfo] = {}
        for ref in refs:
            server = servers.get(ref.server)
            tools = [t for t in server.tools if ref.tool in (EVERY_TOOL, t.name)] if server else []
            if not tools:
                log.warning("%s is left out: no such MCP server or tool", ref.tool_name)
            for tool in tools:
                info = McpToolInfo(
                    ref=McpToolRef(server=ref.server, tool=tool.name),
                    description=tool.description,
                    input_schema=tool.input_schema,
                )
                taken = offered.setdefault(info.ref.function_name, info)
                if taken.ref != info.ref:
                    log.warning(
                        "%s is left out: the model would see it as %s, like %s",
                        info.ref.tool_name,
                        info.ref.function_name,
                        taken.ref.tool_name,
                    )
        return list(offered.values())

    async def tool_names(self, tenant: str, server: str) -> set[str] | None:
        found = (await self._servers(tenant, [server], refresh=False)).get(server)
        return None if found is None else {t.name for t in found.tools}

    async def call(
        self, tenant: str, ref: McpToolRef, call: ToolCallPart, *, idempotency_key: str
    ) -> ToolResultPart:
        name = f"mcp:{ref.server}/{ref.tool}"
        with tool_execution(name, call.tool_call_id, tenant=tenant, mcp_server=ref.server) as span:
            try:
                result = await self._call(tenant, ref, call, idempotency_key=idempotency_key)
            except Unavailable:
                tool_outcome(span, name, tenant, "failed")
                raise
            tool_outcome(span, name, tenant, "error" if result.is_error else "ok")
            return result

    async def _call(
        self, tenant: str, ref: McpToolRef, call: ToolCallPart, *, idempotency_key: str
    ) -> ToolResultPart:
        if ref.server in self.operator:
            server = (await self._operator_servers([ref.server], refresh=False)).get(ref.server)
        else:
            server = await self.store.find(tenant, ref.server, with_headers=True)
        if server is None:
            return error_result(call, f"MCP server {ref.server!r} does not exist (any more)")
        tool = next((t for t in server.tools if t.name == ref.tool), None)
        if tool is None:
            return error_result(call, f"MCP server {ref.server!r} lists no tool {ref.tool!r}")
        problems = argument_problems(tool.input_schema, call.arguments)
        if problems:
            return error_result(call, f"invalid arguments for {call.tool_name}: {problems}")

        async def calling(endpoint: McpEndpoint) -> mcp_types.CallToolResult:
            return await self.client.call_tool(
                endpoint, ref.tool, call.arguments, idempotency_key=idempotency_key
            )

        try:
            result = await self._on_server(tenant, server, calling)
        except (FailedPrecondition, NotFound) as exc:  # refused, or an error of the server's
            return error_result(call, exc.message)
        return tool_result(call, result)

    async def listed(self, tenant: str) -> list[McpToolInfo]:
        servers = [
            *(await self._operator_servers(sorted(self.operator), refresh=False)).values(),
            *await self.store.list_after(tenant),
        ]
        return [
            McpToolInfo(
                ref=McpToolRef(server=s.name, tool=t.name),
                description=t.description,
                input_schema=t.input_schema,
            )
            for s in servers
            for t in s.tools
        ]

    # -- reaching servers

    async def _servers(
        self, tenant: str, names: list[str], *, refresh: bool
    ) -> dict[str, McpServer]:
        """The named servers the tenant may use, with their cached tools; with `refresh`,
        lists older than the TTL are listed again first (a server that cannot be reached
        keeps its old list: calls to it will say what is wrong)."""
        operator = [n for n in names if n in self.operator]
        found = await self._operator_servers(operator, refresh=refresh)
        own = [n for n in names if n not in self.operator]
        if own:
            found |= await self.store.find_many(tenant, own)
        if refresh:
            stale = [s.name for s in found.values() if s.source == "tenant" and self._stale(s)]
            for fresh in await asyncio.gather(*(self._refreshed(tenant, n) for n in stale)):
                if fresh is not None:
                    found[fresh.name] = fresh
        return found

    def _stale(self, server: McpServer) -> bool:
        return server.list_time is None or datetime.now(UTC) - server.list_time > self.ttl

    async def _refreshed(self, tenant: str, name: str) -> McpServer | None:
        try:
            async with asyncio.timeout(RUN_LISTING_TIMEOUT):
                return await self.refresh(tenant, name)
        except (Unavailable, FailedPrecondition, NotFound, TimeoutError) as exc:
            log.warning("MCP server %r: its tools could not be listed again: %s", name, exc)
            return None

    async def _operator_servers(self, names: list[str], *, refresh: bool) -> dict[str, McpServer]:
        """The operator's servers with their cached lists; one never listed (or configured
        differently since) is listed now, or shown with no tools if it cannot be."""
        fingerprints = {n: self.operator[n].fingerprint() for n in names}
        found = await self.operator_lists.find_many(fingerprints) if names else {}
        for name in names:
            server = found.get(name)
            if server is None or (refresh and self._stale(server)):
                try:
                    async with asyncio.timeout(RUN_LISTING_TIMEOUT):
                        found[name] = await self._list_operator(name)
                except (Unavailable, FailedPrecondition, TimeoutError) as exc:
                    log.warning("MCP server %r: its tools could not be listed: %s", name, exc)
                    found.setdefault(name, McpServer(name=name, source="operator"))
        return found

    async def _list_operator(self, name: str) -> McpServer:
        config = self.operator[name]
        tools = await self.client.list_tools(self._stdio(name))
        return await self.operator_lists.save(name, config.fingerprint(), _tools(tools))

    def _stdio(self, name: str, tenant: str = "") -> StdioEndpoint:
        """The operator's server `name`, in a session of `tenant`'s ("": the listing's)."""
        config = self.operator[name]
        return StdioEndpoint(
            name=name,
            command=config.command,
            args=config.args,
            env=config.env,
            cwd=config.cwd,
            tenant=tenant,
        )

    async def _token(self, tenant: str, connection_id: str, rejected: str | None = None) -> str:
        if self.oauth is None:
            raise FailedPrecondition("OAuth connections are not available in this process")
        return await self.oauth.get_access_token(tenant, connection_id, rejected=rejected)

    async def _on_server(
        self, tenant: str, server: McpServer, work: Callable[[McpEndpoint], Awaitable[T]]
    ) -> T:
        """`work` against the server: its headers, and its OAuth connection's bearer token (on
        a 401, refreshed once and tried again)."""
        if server.source == "operator":
            return await work(self._stdio(server.name, tenant))
        headers = dict(server.headers)
        token = None
        if server.oauth_connection_id:
            token = await self._token(tenant, server.oauth_connection_id)
            headers["Authorization"] = f"Bearer {token}"
        try:
            return await work(HttpEndpoint(url=server.url, headers=headers, tenant=tenant))
        except McpRejected as exc:
            if exc.status != 401 or token is None:
                raise
        token = await self._token(tenant, server.oauth_connection_id, rejected=token)
        headers["Authorization"] = f"Bearer {token}"
        return await work(HttpEndpoint(url=server.url, headers=headers, tenant=tenant))
