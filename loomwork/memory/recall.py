"""Semantic recall: saved messages embedded into pgvector, searched by meaning.

Messages are indexed after they are stored (by the IndexMessages workflow), so a
message becomes findable a moment after AppendMessages returns. The vector table
is created for the configured embedding model's dimension; pointing an existing
database at a model of another name is refused rather than mixing vector spaces.

The vectors stay in PostgreSQL whatever store holds the messages, so nothing ties a
vector to its message: a search takes the nearest vectors, then their messages and
neighbours from the store, and drops a hit whose message is gone. Deleting a thread
forgets its vectors (`forget_thread`).
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
from loomwork.storage.adapter import MemoryStorage
from loomwork.storage.database import Database
from loomwork.storage.hnsw import use_hnsw

SPACE = "message_embeddings"
MAX_TOP_K = 100
MAX_MESSAGE_RANGE = 20
_LOCK_KEY = 0x52454341  # serializes space creation across starting processes
#: A thread or resource of at most this many vectors is searched exactly (every vector's
#: distance, read through the (tenant, scope) b-tree); a larger one through the HNSW index
#: shared by all tenants. A scope is a small part of that index, and HNSW filters only
#: the rows its scan visits: at 50k-200k vectors recall@10 was 0.83-0.97 at ef_search
#: 40-200, and a scope of 0.5% of the table took 65-300 ms; exact search of 10k rows took
#: ~16 ms with recall 1 (bench/vector_scale.py, bench/RESULTS.md).
EXACT_SCOPE_ROWS = 20_000
#: The HNSW path's candidate list; its scans are iterative (`relaxed_order`: filtered
#: scans keep going until enough rows of the scope passed). At 1M vectors, a 50k-row scope
#: had recall@10 0.95-0.96 at 200 and 0.999 at 400, in the same time (bench/RESULTS.md).
HNSW_EF_SEARCH = 400
# Both branches are planned; the one-time filter on the scope's size runs one. `+ 0`
# keeps the exact branch off the HNSW index (it cannot order by that expression).
_SEARCH = """
with scope as (
    select count(*) as n from (
        select 1 from {space} where tenant_id = %(t)s and {column} = %(owner)s
        limit %(exact)s + 1
    ) s
), knn as (
    (select message_id, thread_id, (embedding <=> %(v)s) + 0 as distance
     from {space}
     where tenant_id = %(t)s and {column} = %(owner)s
       and (select n from scope) <= %(exact)s
     order by 3 limit %(k)s)
    union all
    (select message_id, thread_id, embedding <=> %(v)s as distance
     from {space}
     where tenant_id = %(t)s and {column} = %(owner)s
       and (select n from scope) > %(exact)s
     order by embedding <=> %(v)s limit %(k)s)
)
select message_id, thread_id, score from (
    select message_id, thread_id, greatest(0.0, least(1.0, 1 - distance)) as score
    from knn
) hits where score >= %(min)s
"""


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
    """Indexes messages' embeddings and answers semantic searches, per tenant; the
    messages themselves come from `storage`."""

    def __init__(self, db: Database, provider: EmbeddingProvider, storage: MemoryStorage) -> None:
        self.db = db
        self.provider = provider
        self.storage = storage
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
                    primary key (tenant_id, message_id)
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

    async def index_messages(self, tenant: str, thread_id: str, message_ids: list[str]) -> int:
        """Embed the given stored messages of a thread and upsert them; return how many
        (none when the thread or the messages are gone)."""
        if not message_ids:
            return 0
        windows = await self.storage.messages_around(
            tenant, [(thread_id, m) for m in message_ids], before=0, after=0
        )
        return await self.index(tenant, thread_id, [w[0] for w in windows.values()])

    async def index(self, tenant: str, thread_id: str, messages: list[Message]) -> int:
        """Embed messages just stored in a thread (in batches) and upsert them; return how
        many had text to embed."""
        pending = [(m, embedding_text(m)) for m in messages]
        pending = [(m, text) for m, text in pending if text.strip()]
        if not pending:
            return 0
        try:
            thread = await self.storage.get_thread(tenant, thread_id)
        except NotFound:
            return 0  # deleted meanwhile: nothing to recall it by
        vectors = await self.provider.embed([text for _, text in pending])
        async with self.db.connection() as conn:
            await self._use_vectors(conn)
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(
                    f"""
                    insert into {SPACE} (tenant_id, message_id, thread_id, resource_id, embedding)
                    values (%s, %s, %s, %s, %s)
                    on conflict (tenant_id, message_id) do update set
                        thread_id = excluded.thread_id, resource_id = excluded.resource_id,
                        embedding = excluded.embedding
                    """,
                    [
                        (tenant, m.id, thread_id, thread.resource_id, vector)
                        for (m, _), vector in zip(pending, vectors, strict=True)
                    ],
                )
        return len(pending)

    async def forget_thread(self, tenant: str, thread_id: str) -> None:
        """Delete the vectors of a thread's messages (after the thread was deleted)."""
        async with self.db.connection() as conn:
            await conn.execute(
                f"delete from {SPACE} where tenant_id = %s and thread_id = %s", (tenant, thread_id)
            )

    async def search(self, tenant: str, query: RecallQuery) -> list[RecallHit]:
        """The `top_k` messages closest in meaning, scored 0..1, each with its neighbours.

        One query finds the nearest vectors in scope, one store call reads their messages
        with all their neighbours; a hit whose message is gone is dropped. The scope's
        thread is looked up only when no vector was found."""
        _validate(query)
        [vector] = await self.provider.embed([query.query])
        column, owner = (
            ("thread_id", query.thread_id)
            if query.scope is RecallScope.THREAD
            else ("resource_id", query.resource_id)
        )
        async with self.db.connection() as conn:
            await self._use_vectors(conn)
            await use_hnsw(conn, HNSW_EF_SEARCH, "relaxed_order")
            # Never prepared: a prepared statement soon runs a generic plan, which does not
            # know `k` and sorts the whole scope instead of scanning HNSW (2-3x slower at a
            # 25k-row scope, bench/RESULTS.md); planned with the values it stays on HNSW.
            cur = await conn.execute(
                _SEARCH.format(space=SPACE, column=column),
                {
                    "v": _vec(vector),
                    "t": tenant,
                    "owner": owner,
                    "k": query.top_k,
                    "min": query.min_score,
                    "exact": EXACT_SCOPE_ROWS,
                },
                prepare=False,
            )
            rows = await cur.fetchall()
        if not rows:
            if query.scope is RecallScope.THREAD:
                await self.storage.get_thread(tenant, query.thread_id)  # NotFound if missing
            return []
        windows = await self.storage.messages_around(
            tenant,
            [(row["thread_id"], row["message_id"]) for row in rows],
            before=query.message_range,
            after=query.message_range,
        )
        return _hits(rows, windows)


def _hits(rows: list[dict[str, Any]], windows: dict[str, list[Message]]) -> list[RecallHit]:
    """Hits best first, each with its neighbours in time order; gone messages left out."""
    hits: list[RecallHit] = []
    for row in rows:
        window = windows.get(row["message_id"])
        if window is None:
            continue
        [message] = [m for m in window if m.id == row["message_id"]]
        context = [m for m in window if m.id != message.id]
        hits.append(RecallHit(message=message, score=float(row["score"]), context=context))
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
