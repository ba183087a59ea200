"""The PostgreSQL storage adapter: plain SQL over psycopg 3, one transaction per write.

Tables from migrations 0001 (threads, messages) and 0003 (working_memory); deleting a
thread cascades to its messages and working memory by foreign key.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pydantic_core
from psycopg.types.json import Jsonb

from loomwork.errors import AlreadyExists, NotFound
from loomwork.ids import new_id
from loomwork.messages import MESSAGE_LIST, Message, NewMessage, NewThread, Thread, ThreadUpdate
from loomwork.storage import codec
from loomwork.storage.adapter import (
    StoredWorkingMemory,
    WorkingMemoryScope,
    WorkingMemoryWrite,
    version_conflict,
)
from loomwork.storage.codec import DEFAULT_CODEC, StorageCodec
from loomwork.storage.database import Database

_THREAD_COLUMNS = "id, seq, resource_id, title, metadata, message_count, create_time, update_time"
MESSAGE_COLUMNS = "m.id, m.thread_id, m.seq, m.role, m.content, m.create_time"


# A page of rows becomes models in one pydantic-core call: validating dicts in Rust is faster
# than `model_construct` (which skips validation but runs in Python), and one call for the
# page saves the per-call overhead of one per row.


def _thread(row: dict[str, Any]) -> Thread:
    return Thread.model_validate(row)  # the extra `seq` column is ignored


def messages_from_rows(rows: list[dict[str, Any]]) -> list[Message]:
    """`Message`s from `MESSAGE_COLUMNS` rows (`content` holds parts and metadata)."""
    fields = []
    for row in rows:
        message = pydantic_core.from_json(codec.decode_json(row["content"]))
        message["id"] = row["id"]
        message["thread_id"] = row["thread_id"]
        message["role"] = row["role"]
        message["create_time"] = row["create_time"]
        fields.append(message)
    return MESSAGE_LIST.validate_python(fields)


class PostgresMemoryStorage:
    """`MemoryStorage` on PostgreSQL (tables from migration 0001)."""

    def __init__(self, db: Database, *, codec: StorageCodec = DEFAULT_CODEC) -> None:
        self.db = db
        self.codec = codec

    async def create_thread(self, tenant: str, thread: NewThread) -> Thread:
        async with self.db.connection() as conn:
            try:
                cur = await conn.execute(
                    f"""
                    insert into threads (tenant_id, id, resource_id, title, metadata)
                    values (%s, %s, %s, %s, %s)
                    returning {_THREAD_COLUMNS}
                    """,
                    (tenant, thread.id, thread.resource_id, thread.title, Jsonb(thread.metadata)),
                )
            except psycopg.errors.UniqueViolation as exc:
                raise AlreadyExists(f"thread {thread.id!r} already exists") from exc
            row = await cur.fetchone()
            assert row is not None
            return _thread(row)

    async def get_thread(self, tenant: str, thread_id: str) -> Thread:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"select {_THREAD_COLUMNS} from threads where tenant_id = %s and id = %s",
                (tenant, thread_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"thread {thread_id!r} not found")
        return _thread(row)

    async def list_threads(
        self, tenant: str, *, resource_id: str | None, limit: int, before_seq: int | None
    ) -> list[tuple[int, Thread]]:
        clauses = ["tenant_id = %s"]
        params: list[Any] = [tenant]
        if resource_id is not None:
            clauses.append("resource_id = %s")
            params.append(resource_id)
        if before_seq is not None:
            clauses.append("seq < %s")
            params.append(before_seq)
        params.append(limit)
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"select {_THREAD_COLUMNS} from threads where {' and '.join(clauses)}"
                " order by seq desc limit %s",
                params,
            )
            rows = await cur.fetchall()
        return [(row["seq"], _thread(row)) for row in rows]

    async def update_thread(self, tenant: str, thread_id: str, update: ThreadUpdate) -> Thread:
        sets = ["update_time = now()"]
        params: list[Any] = []
        if update.title is not None:
            sets.append("title = %s")
            params.append(update.title)
        if update.metadata is not None:
            sets.append("metadata = %s")
            params.append(Jsonb(update.metadata))
        params += [tenant, thread_id]
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"update threads set {', '.join(sets)} where tenant_id = %s and id = %s"
                f" returning {_THREAD_COLUMNS}",
                params,
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"thread {thread_id!r} not found")
        return _thread(row)

    async def delete_thread(self, tenant: str, thread_id: str) -> None:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "delete from threads where tenant_id = %s and id = %s", (tenant, thread_id)
            )
            if cur.rowcount == 0:
                raise NotFound(f"thread {thread_id!r} not found")

    async def append_messages(
        self, tenant: str, thread_id: str, messages: list[NewMessage]
    ) -> list[Message]:
        stored: list[dict[str, Any]] = []
        async with self.db.connection() as conn, conn.transaction():
            # Locking the thread row serializes appends to one thread, so message
            # seq order equals commit order and oldest-first paging never skips.
            cur = await conn.execute(
                "select id from threads where tenant_id = %s and id = %s for update",
                (tenant, thread_id),
            )
            if await cur.fetchone() is None:
                raise NotFound(f"thread {thread_id!r} not found")
            inserted = 0
            for index, message in enumerate(messages):
                message_id = message.id or new_id("msg")
                content = self.codec.encode(
                    {
                        "parts": [p.model_dump(mode="json") for p in message.parts],
                        "metadata": message.metadata,
                    }
                )
                cur = await conn.execute(
                    f"""
                    insert into messages as m (tenant_id, id, thread_id, role, content)
                    values (%s, %s, %s, %s, %s)
                    on conflict (tenant_id, id) do nothing
                    returning {MESSAGE_COLUMNS}
                    """,
                    (tenant, message_id, thread_id, message.role.value, content),
                )
                row = await cur.fetchone()
                if row is None:
                    cur = await conn.execute(
                        f"select {MESSAGE_COLUMNS} from messages m"
                        " where tenant_id = %s and id = %s",
                        (tenant, message_id),
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    if row["thread_id"] != thread_id:
                        raise AlreadyExists(
                            f"messages[{index}].id {message_id!r} is already used in another thread"
                        )
                else:
                    inserted += 1
                stored.append(row)
            if inserted:
                await conn.execute(
                    "update threads set message_count = message_count + %s, update_time = now()"
                    " where tenant_id = %s and id = %s",
                    (inserted, tenant, thread_id),
                )
        return messages_from_rows(stored)

    async def _require_thread(
        self, conn: psycopg.AsyncConnection[Any], tenant: str, thread_id: str
    ) -> None:
        cur = await conn.execute(
            "select 1 from threads where tenant_id = %s and id = %s", (tenant, thread_id)
        )
        if await cur.fetchone() is None:
            raise NotFound(f"thread {thread_id!r} not found")

    async def last_messages(self, tenant: str, thread_id: str, n: int) -> list[Message]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""
                select * from (
                    select {MESSAGE_COLUMNS} from messages m
                    where tenant_id = %s and thread_id = %s order by seq desc limit %s
                ) newest order by seq
                """,
                (tenant, thread_id, n),
            )
            rows = await cur.fetchall()
            if not rows:  # only an empty answer needs telling "no messages" from "no thread"
                await self._require_thread(conn, tenant, thread_id)
        return messages_from_rows(rows)

    async def list_messages(
        self, tenant: str, thread_id: str, *, limit: int, after_seq: int | None
    ) -> list[tuple[int, Message]]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""
                select {MESSAGE_COLUMNS} from messages m
                where tenant_id = %s and thread_id = %s and seq > %s
                order by seq limit %s
                """,
                (tenant, thread_id, after_seq or 0, limit),
            )
            rows = await cur.fetchall()
            if not rows:
                await self._require_thread(conn, tenant, thread_id)
        return list(zip((row["seq"] for row in rows), messages_from_rows(rows), strict=True))

    async def messages_around(
        self, tenant: str, anchors: list[tuple[str, str]], *, before: int, after: int
    ) -> dict[str, list[Message]]:
        if not anchors:
            return {}
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""
                select a.anchor_id, x.* from unnest(%(threads)s::text[], %(ids)s::text[])
                    as a(anchor_thread, anchor_id)
                join messages h on h.tenant_id = %(t)s and h.id = a.anchor_id
                    and h.thread_id = a.anchor_thread
                cross join lateral (
                    (select {MESSAGE_COLUMNS} from messages m
                      where m.tenant_id = %(t)s and m.thread_id = h.thread_id and m.seq < h.seq
                      order by m.seq desc limit %(before)s)
                    union all
                    (select {MESSAGE_COLUMNS} from messages m
                      where m.tenant_id = %(t)s and m.thread_id = h.thread_id and m.seq >= h.seq
                      order by m.seq limit %(after)s)
                ) x
                """,
                {
                    "threads": [thread for thread, _ in anchors],
                    "ids": [message for _, message in anchors],
                    "t": tenant,
                    "before": before,
                    "after": after + 1,
                },
            )
            rows = await cur.fetchall()
        rows.sort(key=lambda r: r["seq"])
        distinct = list({r["id"]: r for r in rows}.values())  # neighbours anchors share
        decoded = dict(zip((r["id"] for r in distinct), messages_from_rows(distinct), strict=True))
        windows: dict[str, list[Message]] = {}
        for row in rows:
            windows.setdefault(row["anchor_id"], []).append(decoded[row["id"]])
        return windows

    async def get_working_memory(
        self, tenant: str, scope: WorkingMemoryScope, owner: str
    ) -> StoredWorkingMemory | None:
        async with self.db.connection() as conn:
            if scope == "thread":
                await self._require_thread(conn, tenant, owner)
            cur = await conn.execute(
                "select markdown, data, version, update_time from working_memory"
                " where tenant_id = %s and scope = %s and owner_id = %s",
                (tenant, scope, owner),
            )
            row = await cur.fetchone()
        return None if row is None else StoredWorkingMemory.model_validate(row)

    async def put_working_memory(
        self, tenant: str, scope: WorkingMemoryScope, owner: str, write: WorkingMemoryWrite
    ) -> StoredWorkingMemory:
        thread_id = owner if scope == "thread" else None
        expected_version = write.expected_version
        values = (write.markdown, Jsonb(write.data) if write.data is not None else None)
        async with self.db.connection() as conn, conn.transaction():
            if thread_id is not None:  # held until commit: the thread cannot go meanwhile
                cur = await conn.execute(
                    "select 1 from threads where tenant_id = %s and id = %s for key share",
                    (tenant, thread_id),
                )
                if await cur.fetchone() is None:
                    raise NotFound(f"thread {thread_id!r} not found")
            if expected_version:
                cur = await conn.execute(
                    """
                    update working_memory set markdown = %s, data = %s,
                        version = version + 1, update_time = now()
                    where tenant_id = %s and scope = %s and owner_id = %s and version = %s
                    returning markdown, data, version, update_time
                    """,
                    (*values, tenant, scope, owner, expected_version),
                )
            else:
                conflict = (
                    "do nothing"
                    if expected_version == 0
                    else "do update set markdown = excluded.markdown, data = excluded.data,"
                    " version = working_memory.version + 1, update_time = now()"
                )
                cur = await conn.execute(
                    f"""
                    insert into working_memory
                        (tenant_id, scope, owner_id, thread_id, markdown, data, version)
                    values (%s, %s, %s, %s, %s, %s, 1)
                    on conflict (tenant_id, scope, owner_id) {conflict}
                    returning markdown, data, version, update_time
                    """,
                    (tenant, scope, owner, thread_id, *values),
                )
            row = await cur.fetchone()
            if row is None:
                assert expected_version is not None
                cur = await conn.execute(
                    "select version from working_memory"
                    " where tenant_id = %s and scope = %s and owner_id = %s",
                    (tenant, scope, owner),
                )
                current = await cur.fetchone()
                raise version_conflict(
                    scope, owner, expected_version, current["version"] if current else 0
                )
        return StoredWorkingMemory.model_validate(row)

    async def ping(self) -> bool:
        return await self.db.ping()
