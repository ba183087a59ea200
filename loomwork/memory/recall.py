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
from pgvector.psycopg import register_vector_async

from loomwork.embeddings.provider import EmbeddingProvider
from loomwork.errors import FailedPrecondition, NotFound, Violations
from loomwork.ids import CLIENT_ID_RULE, is_valid_client_id
from loomwork.memory.models import (
    Message,
    RecallHit,
    RecallQuery,
    RecallScope,
    TextPart,
    ToolCallPart,
    ToolResultPart,
)
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
            await register_vector_async(conn)
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
        """The `top_k` messages closest in meaning, scored 0..1, each with its neighbours."""
        _validate(query)
        async with self.db.connection() as conn:
            if query.scope is RecallScope.THREAD:
                cur = await conn.execute(
                    "select 1 from threads where tenant_id = %s and id = %s",
                    (tenant, query.thread_id),
                )
                if await cur.fetchone() is None:
                    raise NotFound(f"thread {query.thread_id!r} not found")
        [vector] = await self.provider.embed([query.query])
        column, owner = (
            ("thread_id", query.thread_id)
            if query.scope is RecallScope.THREAD
            else ("resource_id", query.resource_id)
        )
        async with self.db.connection() as conn:
            await register_vector_async(conn)
            async with conn.transaction():
                # Filtered HNSW scans keep going until enough rows pass the filter (pgvector 0.8).
                await conn.execute("set local hnsw.iterative_scan = relaxed_order")
                cur = await conn.execute(
                    f"""
                    select message_id, 1 - (embedding <=> %(v)s) as similarity
                    from {SPACE}
                    where tenant_id = %(tenant)s and {column} = %(owner)s
                    order by embedding <=> %(v)s
                    limit %(k)s
                    """,
                    {"v": _vec(vector), "tenant": tenant, "owner": owner, "k": query.top_k},
                )
                scored = [
                    (row["message_id"], max(0.0, min(1.0, float(row["similarity"]))))
                    for row in await cur.fetchall()
                ]
            scored = [(mid, s) for mid, s in scored if s >= query.min_score]
            scored.sort(key=lambda item: -item[1])
            hits: list[RecallHit] = []
            for message_id, score in scored:
                message, context = await self._with_neighbours(
                    conn, tenant, message_id, query.message_range
                )
                if message is not None:
                    hits.append(RecallHit(message=message, score=score, context=context))
        return hits

    async def _with_neighbours(
        self, conn: Any, tenant: str, message_id: str, span: int
    ) -> tuple[Message | None, list[Message]]:
        cur = await conn.execute(
            f"""
            with hit as (
                select thread_id, seq from messages where tenant_id = %(t)s and id = %(id)s
            )
            (select {MESSAGE_COLUMNS} from messages m, hit
              where m.tenant_id = %(t)s and m.thread_id = hit.thread_id and m.seq < hit.seq
              order by m.seq desc limit %(n)s)
            union all
            (select {MESSAGE_COLUMNS} from messages m, hit
              where m.tenant_id = %(t)s and m.thread_id = hit.thread_id and m.seq >= hit.seq
              order by m.seq limit %(n1)s)
            """,
            {"t": tenant, "id": message_id, "n": span, "n1": span + 1},
        )
        rows = sorted(await cur.fetchall(), key=lambda r: r["seq"])
        messages = [message_from_row(r) for r in rows]
        hit = next((m for m in messages if m.id == message_id), None)
        return hit, [m for m in messages if m.id != message_id]


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
