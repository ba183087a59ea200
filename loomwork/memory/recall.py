"""Semantic recall: saved messages embedded into pgvector, searched by meaning.

Messages are indexed after they are stored (by the IndexMessages workflow), so a
message becomes findable a moment after AppendMessages returns. The vector table
is created for the configured embedding model's dimension; pointing an existing
database at a model of another name is refused rather than mixing vector spaces.
"""

from __future__ import annotations

import json
from typing import Any

from pgvector import Vector
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo

from loomwork.embeddings.provider import EmbeddingProvider
from loomwork.errors import FailedPrecondition, NotFound, Violations
from loomwork.ids import CLIENT_ID_RULE, is_valid_client_id
from loomwork.memory.models import RecallHit, RecallQuery, RecallScope
from loomwork.messages import Message, TextPart, ToolCallPart, ToolResultPart
from loomwork.storage.database import Database
from loomwork.storage.postgres import MESSAGE_COLUMNS, message_from_row

SPACE = "message_embeddings"
MAX_TOP_K = 100
MAX_MESSAGE_RANGE = 20
_LOCK_KEY = 0x52454341  # serializes space creation across starting processes


def embedding_text(message: Message) -> str:
    """What of a message is embedded: its text, tool names and results, one line each."""
    lines: list[str] = []
    for part in message.parts:
        if isinstance(part, TextPart) and part.text.strip():
            lines.append(part.text)
        elif isinstance(part, ToolCallPart):
            lines.append(f"{part.tool_name}({json.dumps(part.arguments, ensure_ascii=False)})")
        elif isinstance(part, ToolResultPart) and part.result is not None:
            lines.append(f"{part.tool_name}: {json.dumps(part.result, ensure_ascii=False)}")
    return "\n".join(lines)


class MessageRecall:
    """Indexes messages' embeddings and answers semantic searches, per tenant."""

    def __init__(self, db: Database, provider: EmbeddingProvider) -> None:
        self.db = db
        self.provider = provider
        self._vector_type: TypeInfo | None = None

    async def _use_vectors(self, conn: Any) -> None:
        """Teach `conn` the pgvector type; the type is looked up once, not per call
        (pgvector's `register_vector_async` costs four queries every time)."""
        if conn.adapters.types.get("vector") is not None:
            return
        if self._vector_type is None:
            self._vector_type = await TypeInfo.fetch(conn, "vector")
        register_vector_info(conn, self._vector_type)

    async def ensure_space(self) -> None:
        """Create the vector table for the provider's model, or refuse a different model."""
        model, dimension = self.provider.model, self.provider.dimension
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            cur = await conn.execute(
                "select model, dimension from embedding_spaces where space = %s", (SPACE,)
            )
            row = await cur.fetchone()
            if row is not None:
                if row["model"] != model or row["dimension"] != dimension:
                    raise FailedPrecondition(
                        f"stored message embeddings were made by {row['model']} "
                        f"({row['dimension']} dimensions), but LOOMWORK_EMBEDDING_MODEL is "
                        f"{model} ({dimension}); set it back, or re-embed into a new database"
                    )
                return
            await conn.execute(
                "insert into embedding_spaces (space, model, dimension) values (%s, %s, %s)",
                (SPACE, model, dimension),
            )
            await conn.execute(
                f"""
                create table {SPACE} (
                    tenant_id text not null,
                    message_id text not null,
                    thread_id text not null,
                    resource_id text not null,
                    embedding vector({int(dimension)}) not null,
                    primary key (tenant_id, message_id),
                    foreign key (tenant_id, message_id)
                        references messages (tenant_id, id) on delete cascade
                )
                """
            )
            await conn.execute(
                f"create index {SPACE}_hnsw on {SPACE} using hnsw (embedding vector_cosine_ops)"
            )
            await conn.execute(f"create index {SPACE}_by_thread on {SPACE} (tenant_id, thread_id)")
            await conn.execute(
                f"create index {SPACE}_by_resource on {SPACE} (tenant_id, resource_id)"
            )

    async def index_messages(self, tenant: str, message_ids: list[str]) -> int:
        """Embed the given stored messages (in batches) and upsert them; return how many."""
        if not message_ids:
            return 0
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""
                select {MESSAGE_COLUMNS}, t.resource_id
                from messages m join threads t
                  on t.tenant_id = m.tenant_id and t.id = m.thread_id
                where m.tenant_id = %s and m.id = any(%s)
                """,
                (tenant, message_ids),
            )
            rows = await cur.fetchall()
        pending = [(row, embedding_text(message_from_row(row))) for row in rows]
        pending = [(row, text) for row, text in pending if text.strip()]
        if not pending:
            return 0
        vectors = await self.provider.embed([text for _, text in pending])
        async with self.db.connection() as conn:
            await self._use_vectors(conn)
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(
                    f"""
                    insert into {SPACE} (tenant_id, message_id, thread_id, resource_id, embedding)
                    values (%s, %s, %s, %s, %s)
                    on conflict (tenant_id, message_id) do update set embedding = excluded.embedding
                    """,
                    [
                        (tenant, row["id"], row["thread_id"], row["resource_id"], vector)
                        for (row, _), vector in zip(pending, vectors, strict=True)
                    ],
                )
        return len(pending)

    async def search(self, tenant: str, query: RecallQuery) -> list[RecallHit]:
        """The `top_k` messages closest in meaning, scored 0..1, each with its neighbours.

        One statement finds the hits and all their neighbours (one round trip, whatever
        `top_k`); the scope's thread is looked up only when nothing was found."""
        _validate(query)
        [vector] = await self.provider.embed([query.query])
        column, owner = (
            ("thread_id", query.thread_id)
            if query.scope is RecallScope.THREAD
            else ("resource_id", query.resource_id)
        )
        async with self.db.connection() as conn:
            await self._use_vectors(conn)
            async with conn.transaction():
                # Filtered HNSW scans keep going until enough rows pass the filter (pgvector 0.8).
                await conn.execute("set local hnsw.iterative_scan = relaxed_order")
                cur = await conn.execute(
                    f"""
                    with knn as materialized (
                        select message_id, 1 - (embedding <=> %(v)s) as similarity
                        from {SPACE}
                        where tenant_id = %(t)s and {column} = %(owner)s
                        order by embedding <=> %(v)s
                        limit %(k)s
                    ), hits as (
                        select knn.message_id as hit_id,
                               greatest(0.0, least(1.0, knn.similarity)) as score,
                               h.thread_id as hit_thread, h.seq as hit_seq
                        from knn join messages h on h.tenant_id = %(t)s and h.id = knn.message_id
                        where greatest(0.0, least(1.0, knn.similarity)) >= %(min)s
                    )
                    select hits.hit_id, hits.score, x.* from hits cross join lateral (
                        (select {MESSAGE_COLUMNS} from messages m
                          where m.tenant_id = %(t)s and m.thread_id = hits.hit_thread
                            and m.seq < hits.hit_seq
                          order by m.seq desc limit %(n)s)
                        union all
                        (select {MESSAGE_COLUMNS} from messages m
                          where m.tenant_id = %(t)s and m.thread_id = hits.hit_thread
                            and m.seq >= hits.hit_seq
                          order by m.seq limit %(n1)s)
                    ) x
                    """,
                    {
                        "v": _vec(vector),
                        "t": tenant,
                        "owner": owner,
                        "k": query.top_k,
                        "min": query.min_score,
                        "n": query.message_range,
                        "n1": query.message_range + 1,
                    },
                )
                rows = await cur.fetchall()
            if not rows and query.scope is RecallScope.THREAD:
                cur = await conn.execute(
                    "select 1 from threads where tenant_id = %s and id = %s",
                    (tenant, query.thread_id),
                )
                if await cur.fetchone() is None:
                    raise NotFound(f"thread {query.thread_id!r} not found")
        return _hits(rows)


def _hits(rows: list[dict[str, Any]]) -> list[RecallHit]:
    """Group (hit id, score, message row) rows into hits, best first, neighbours in time order."""
    decoded: dict[str, Message] = {}
    groups: dict[str, tuple[float, list[dict[str, Any]]]] = {}
    for row in rows:
        if row["id"] not in decoded:
            decoded[row["id"]] = message_from_row(row)
        groups.setdefault(row["hit_id"], (float(row["score"]), []))[1].append(row)
    hits: list[RecallHit] = []
    for hit_id, (score, members) in groups.items():
        members.sort(key=lambda r: r["seq"])
        context = [decoded[r["id"]] for r in members if r["id"] != hit_id]
        hits.append(RecallHit(message=decoded[hit_id], score=score, context=context))
    hits.sort(key=lambda hit: -hit.score)
    return hits


def _vec(values: list[float]) -> Vector:
    return Vector(values)


def _validate(query: RecallQuery) -> None:
    violations = Violations()
    if not query.query.strip():
        violations.add("query", "is required")
    if query.scope is RecallScope.THREAD:
        if not query.thread_id:
            violations.add("thread_id", "is required when scope is THREAD")
        elif not is_valid_client_id(query.thread_id):
            violations.add("thread_id", f"must be {CLIENT_ID_RULE}")
    elif not query.resource_id:
        violations.add("resource_id", "is required when scope is RESOURCE")
    if not 1 <= query.top_k <= MAX_TOP_K:
        violations.add("top_k", f"must be between 1 and {MAX_TOP_K} (0 means 5)")
    if not 0 <= query.message_range <= MAX_MESSAGE_RANGE:
        violations.add("message_range", f"must be between 0 and {MAX_MESSAGE_RANGE}")
    if not 0.0 <= query.min_score <= 1.0:
        violations.add("min_score", "must be between 0 and 1")
    violations.raise_if_any()
