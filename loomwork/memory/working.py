"""Working memory: one replaceable document per thread or per resource, on PostgreSQL."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from loomwork.errors import InvalidArgument, NotFound, Violations
from loomwork.ids import CLIENT_ID_RULE, is_valid_client_id
from loomwork.memory.models import RecallScope, WorkingMemory
from loomwork.storage.database import Database

MAX_MARKDOWN = 64 * 1024
MAX_RESOURCE_ID = 256


def _owner(
    memory_scope: RecallScope | None, thread_id: str, resource_id: str, prefix: str = ""
) -> str:
    """The thread or resource id the scope points at; field paths get `prefix`."""
    violations = Violations()
    if memory_scope is None:
        raise InvalidArgument.field(f"{prefix}scope", "must be THREAD or RESOURCE")
    if memory_scope is RecallScope.THREAD:
        if not thread_id:
            violations.add(f"{prefix}thread_id", "is required when scope is THREAD")
        elif not is_valid_client_id(thread_id):
            violations.add(f"{prefix}thread_id", f"must be {CLIENT_ID_RULE}")
    elif not resource_id:
        violations.add(f"{prefix}resource_id", "is required when scope is RESOURCE")
    elif len(resource_id) > MAX_RESOURCE_ID:
        violations.add(f"{prefix}resource_id", f"must be at most {MAX_RESOURCE_ID} characters")
    violations.raise_if_any()
    return thread_id if memory_scope is RecallScope.THREAD else resource_id


class WorkingMemoryStore:
    """Get and replace working memory, scoped by tenant."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(
        self, tenant: str, scope: RecallScope | None, *, thread_id: str = "", resource_id: str = ""
    ) -> WorkingMemory:
        """The stored working memory, or an empty one; NotFound for an unknown thread."""
        owner = _owner(scope, thread_id, resource_id)
        assert scope is not None
        async with self.db.connection() as conn:
            if scope is RecallScope.THREAD:
                await self._require_thread(conn, tenant, owner)
            cur = await conn.execute(
                "select markdown, data, update_time from working_memory"
                " where tenant_id = %s and scope = %s and owner_id = %s",
                (tenant, scope.value, owner),
            )
            row = await cur.fetchone()
        return self._model(scope, owner, row)

    async def replace(self, tenant: str, memory: WorkingMemory) -> WorkingMemory:
        """Store `memory` as the whole new working memory of its thread or resource."""
        owner = _owner(memory.scope, memory.thread_id, memory.resource_id, "working_memory.")
        if len(memory.markdown) > MAX_MARKDOWN:
            raise InvalidArgument.field(
                "working_memory.markdown", f"must be at most {MAX_MARKDOWN} characters"
            )
        thread_id = owner if memory.scope is RecallScope.THREAD else None
        async with self.db.connection() as conn, conn.transaction():
            if thread_id is not None:
                await self._require_thread(conn, tenant, thread_id)
            cur = await conn.execute(
                """
                insert into working_memory
                    (tenant_id, scope, owner_id, thread_id, markdown, data, update_time)
                values (%s, %s, %s, %s, %s, %s, now())
                on conflict (tenant_id, scope, owner_id) do update
                    set markdown = excluded.markdown, data = excluded.data, update_time = now()
                returning markdown, data, update_time
                """,
                (
                    tenant,
                    memory.scope.value,
                    owner,
                    thread_id,
                    memory.markdown,
                    Jsonb(memory.data) if memory.data is not None else None,
                ),
            )
            row = await cur.fetchone()
        return self._model(memory.scope, owner, row)

    @staticmethod
    async def _require_thread(conn: Any, tenant: str, thread_id: str) -> None:
        cur = await conn.execute(
            "select 1 from threads where tenant_id = %s and id = %s", (tenant, thread_id)
        )
        if await cur.fetchone() is None:
            raise NotFound(f"thread {thread_id!r} not found")

    @staticmethod
    def _model(scope: RecallScope, owner: str, row: dict[str, Any] | None) -> WorkingMemory:
        is_thread = scope is RecallScope.THREAD
        return WorkingMemory(
            scope=scope,
            thread_id=owner if is_thread else "",
            resource_id="" if is_thread else owner,
            markdown=row["markdown"] if row else "",
            data=row["data"] if row else None,
            update_time=row["update_time"] if row else None,
        )
