"""MCP servers a tenant registered (streamable HTTP; headers stored encrypted), and the cached
tool lists of every server, the operator's included."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field, TypeAdapter

from loomwork.errors import AlreadyExists, Violations
from loomwork.integrations.providers import url_problem
from loomwork.integrations.secret_box import SecretBox
from loomwork.storage.database import Database

# Headers the MCP transport sets itself.
_RESERVED_HEADERS = {
    "accept",
    "connection",
    "content-length",
    "content-type",
    "host",
    "mcp-protocol-version",
    "mcp-session-id",
    "transfer-encoding",
}
_COLUMNS = "tenant_id, name, url, headers_enc, oauth_connection_id, tools, list_time, create_time"

McpServerSource = Literal["tenant", "operator"]


class McpTool(BaseModel):
    """One tool as its server listed it."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


_TOOLS = TypeAdapter(list[McpTool])


class NewMcpServer(BaseModel):
    name: str
    url: str
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    oauth_connection_id: str = ""


class McpServer(BaseModel):
    """A server and its tools as last listed; `headers` only when read to call it."""

    name: str
    url: str = ""  # "" for an operator's stdio server
    oauth_connection_id: str = ""
    tools: list[McpTool] = Field(default_factory=list)
    list_time: datetime | None = None
    create_time: datetime | None = None
    source: McpServerSource = "tenant"
    headers: dict[str, str] = Field(default_factory=dict, repr=False, exclude=True)


def check_new_server(new: NewMcpServer) -> None:
    """InvalidArgument naming every bad field of a server to register, beyond each field's
    limits (name pattern, header names and values, lengths: the request's buf.validate
    rules in integration.proto): a usable URL, no header the transport or the OAuth
    connection sets."""
    v = Violations()
    if not new.url:
        v.add("mcp_server.url", "is required")
    elif problem := url_problem(new.url):
        v.add("mcp_server.url", problem)
    for name in new.headers:
        field = f"mcp_server.headers[{name}]"
        if name.lower() in _RESERVED_HEADERS:
            v.add(field, "is set by the MCP transport itself")
        elif name.lower() == "authorization" and new.oauth_connection_id:
            v.add(field, "is the OAuth connection's bearer token: give one or the other")
    v.raise_if_any()


def tools_json(tools: list[McpTool]) -> Jsonb:
    return Jsonb([t.model_dump() for t in tools])


class McpServerStore:
    """A tenant's MCP servers, by name."""

    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.box = box

    def _server(self, row: dict[str, Any], *, with_headers: bool = False) -> McpServer:
        headers: dict[str, str] = {}
        if with_headers and row["headers_enc"] is not None:
            headers = json.loads(self.box.decrypt(row["headers_enc"]))
        return McpServer(
            name=row["name"],
            url=row["url"],
            oauth_connection_id=row["oauth_connection_id"],
            tools=_TOOLS.validate_python(row["tools"]),
            list_time=row["list_time"],
            create_time=row["create_time"],
            headers=headers,
        )

    async def create(self, tenant: str, new: NewMcpServer, tools: list[McpTool]) -> McpServer:
        headers = self.box.encrypt(json.dumps(new.headers)) if new.headers else None
        async with self.db.connection() as conn:
            try:
                cur = await conn.execute(
                    f"""
                    insert into mcp_servers
                        (tenant_id, name, url, headers_enc, oauth_connection_id, tools)
                    values (%s, %s, %s, %s, %s, %s)
                    returning {_COLUMNS}
                    """,
                    (
                        tenant,
                        new.name,
                        new.url,
                        headers,
                        new.oauth_connection_id,
                        tools_json(tools),
                    ),
                )
            except psycopg.errors.UniqueViolation as exc:
                raise AlreadyExists(f"MCP server {new.name!r} exists already") from exc
            row = await cur.fetchone()
        assert row is not None
        return self._server(row)

    async def find(self, tenant: str, name: str, *, with_headers: bool = False) -> McpServer | None:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"select {_COLUMNS} from mcp_servers where tenant_id = %s and name = %s",
                (tenant, name),
            )
            row = await cur.fetchone()
        return None if row is None else self._server(row, with_headers=with_headers)

    async def find_many(self, tenant: str, names: list[str]) -> dict[str, McpServer]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"select {_COLUMNS} from mcp_servers where tenant_id = %s and name = any(%s)",
                (tenant, names),
            )
            rows = await cur.fetchall()
        return {row["name"]: self._server(row) for row in rows}

    async def list_after(
        self, tenant: str, *, after: str = "", limit: int | None = None
    ) -> list[McpServer]:
        """The tenant's servers by name, those after `after`; at most `limit` (None: all)."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""
                select {_COLUMNS} from mcp_servers where tenant_id = %s and name > %s
                order by name limit %s
                """,
                (tenant, after, limit),
            )
            rows = await cur.fetchall()
        return [self._server(row) for row in rows]

    async def delete(self, tenant: str, name: str) -> bool:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "delete from mcp_servers where tenant_id = %s and name = %s", (tenant, name)
            )
        return cur.rowcount > 0

    async def save_tools(self, tenant: str, name: str, tools: list[McpTool]) -> McpServer | None:
        """Store a fresh listing; None if the server was deleted meanwhile."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""
                update mcp_servers set tools = %s, list_time = now()
                where tenant_id = %s and name = %s returning {_COLUMNS}
                """,
                (tools_json(tools), tenant, name),
            )
            row = await cur.fetchone()
        return None if row is None else self._server(row)


class OperatorToolLists:
    """The tool lists of the operator's servers, each with the fingerprint of the configuration
    it was listed with."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def find_many(self, fingerprints: dict[str, str]) -> dict[str, McpServer]:
        """The cached lists still valid for these {name: fingerprint}, as servers."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "select name, fingerprint, tools, list_time from mcp_operator_tools "
                "where name = any(%s)",
                (list(fingerprints),),
            )
            rows = await cur.fetchall()
        return {
            row["name"]: McpServer(
                name=row["name"],
                tools=_TOOLS.validate_python(row["tools"]),
                list_time=row["list_time"],
                source="operator",
            )
            for row in rows
            if fingerprints[row["name"]] == row["fingerprint"]
        }

    async def save(self, name: str, fingerprint: str, tools: list[McpTool]) -> McpServer:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                """
                insert into mcp_operator_tools (name, fingerprint, tools) values (%s, %s, %s)
                on conflict (name) do update
                    set fingerprint = excluded.fingerprint, tools = excluded.tools,
                        list_time = now()
                returning list_time
                """,
                (name, fingerprint, tools_json(tools)),
            )
            row = await cur.fetchone()
        assert row is not None
        return McpServer(name=name, tools=tools, list_time=row["list_time"], source="operator")
