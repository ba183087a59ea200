"""Agents created by RPC, stored per tenant in Postgres (table `agents`, migration 0005)."""

from __future__ import annotations

from typing import Any

from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from loomwork.agents.definitions import AgentDefinition
from loomwork.errors import AlreadyExists, NotFound
from loomwork.storage.database import Database

_STORED = {"create_time", "update_time", "source"}


def _agent(row: dict[str, Any]) -> AgentDefinition:
    return AgentDefinition.model_validate(
        {
            **row["definition"],
            "source": "api",
            "create_time": row["create_time"],
            "update_time": row["update_time"],
        }
    )


def _definition(agent: AgentDefinition) -> Jsonb:
    return Jsonb(agent.model_dump(mode="json", exclude=_STORED))


class AgentStore:
    """Create, read, list, replace and delete one tenant's stored agents."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, tenant: str, agent: AgentDefinition) -> AgentDefinition:
        try:
            async with self.db.connection() as conn:
                cur = await conn.execute(
                    "insert into agents (tenant_id, name, definition) values (%s, %s, %s)"
                    " returning definition, create_time, update_time",
                    (tenant, agent.name, _definition(agent)),
                )
                row = await cur.fetchone()
        except pg_errors.UniqueViolation:
            raise AlreadyExists(f"agent {agent.name!r} already exists") from None
        assert row is not None
        return _agent(row)

    async def find(self, tenant: str, name: str) -> AgentDefinition | None:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "select definition, create_time, update_time from agents"
                " where tenant_id = %s and name = %s",
                (tenant, name),
            )
            row = await cur.fetchone()
        return _agent(row) if row is not None else None

    async def list(self, tenant: str, *, after: str, limit: int) -> list[AgentDefinition]:
        """Agents with a name after `after` (empty: from the start), by name."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "select definition, create_time, update_time from agents"
                " where tenant_id = %s and name > %s order by name limit %s",
                (tenant, after, limit),
            )
            rows = await cur.fetchall()
        return [_agent(row) for row in rows]

    async def replace(self, tenant: str, agent: AgentDefinition) -> AgentDefinition:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "update agents set definition = %s, update_time = now()"
                " where tenant_id = %s and name = %s"
                " returning definition, create_time, update_time",
                (_definition(agent), tenant, agent.name),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"agent {agent.name!r} not found")
        return _agent(row)

    async def delete(self, tenant: str, name: str) -> None:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "delete from agents where tenant_id = %s and name = %s", (tenant, name)
            )
        if cur.rowcount == 0:
            raise NotFound(f"agent {name!r} not found")
