"""Semantic recall over one vector table shared by many tenants: a search in one tenant's
resource returns its top_k nearest messages, exactly when the scope is small (through the
scope's b-tree), and still top_k through the HNSW index shared by all tenants when the scope
is large, whatever HNSW settings another search left on the pooled connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from pgvector.psycopg import register_vector_async

from loomwork.memory import recall as recall_module
from loomwork.memory.models import RecallQuery, RecallScope
from loomwork.memory.recall import SPACE, MessageRecall
from loomwork.storage import codec
from loomwork.storage.database import Database
from loomwork.storage.hnsw import use_hnsw
from loomwork.storage.migrations import apply_migrations
from loomwork.storage.postgres import PostgresMemoryStorage
from tests.store_support import database_beside

DIM = 384
OURS = 800  # our tenant's messages, all in one resource: 10% of the table
OTHERS = 7200  # another tenant's, in a resource of the same name, near the same vectors


class FixedQuery:
    """An embedding provider answering the vector the test chose."""

    model = "all-MiniLM-L6-v2"
    dimension = DIM

    def __init__(self) -> None:
        self.vector = [0.0] * DIM

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [self.vector for _ in texts]


def _clustered(rng: np.random.Generator, n: int) -> np.ndarray:
    centres = np.random.default_rng(1).standard_normal((50, DIM)).astype(np.float32)
    v = centres[rng.integers(0, 50, n)] + 0.8 * rng.standard_normal((n, DIM)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


@pytest.fixture(scope="module")
async def crowded(embedded: dict[str, str]) -> AsyncIterator[tuple[Database, np.ndarray]]:
    """A database of its own, one pooled connection: OURS vectors of tenant `few`
    (resource `r`), OTHERS of tenant `crowd`, their HNSW index over all of them."""
    url = await database_beside(embedded["DATABASE_URL"], "loomwork_recall_crowd")
    db = Database(url, max_size=1)
    await db.open()
    await apply_migrations(db)
    await MessageRecall(db, FixedQuery(), PostgresMemoryStorage(db)).ensure_space()
    rng = np.random.default_rng(5)
    ours, others = _clustered(rng, OURS), _clustered(rng, OTHERS)
    content = codec.encode({"parts": [{"type": "text", "text": "remembered"}]})
    async with db.connection() as conn:
        await register_vector_async(conn)
        await conn.execute(f"truncate {SPACE}, messages, threads cascade")
        await conn.execute(
            "insert into threads (tenant_id, id, resource_id) values ('few', 't', 'r')"
        )
        cur = conn.cursor()
        async with cur.copy(
            "copy messages (tenant_id, id, thread_id, role, content) from stdin"
        ) as copy:
            for i in range(OURS):
                await copy.write_row(("few", f"m{i}", "t", "user", content))
        rows = [("few", f"m{i}", "t", "r", v) for i, v in enumerate(ours)]
        rows += [("crowd", f"m{i}", f"t{i // 50}", "r", v) for i, v in enumerate(others)]
        async with cur.copy(
            f"copy {SPACE} (tenant_id, message_id, thread_id, resource_id, embedding) from stdin"
        ) as copy:
            for row in rows:
                await copy.write_row(row)
        await conn.execute(f"vacuum analyze {SPACE}")
    yield db, ours
    await db.close()


async def _index_scans(db: Database) -> dict[str, int]:
    """Scans per index of the vector table so far (statistics flushed first)."""
    async with db.connection() as conn:
        await conn.execute("select pg_stat_force_next_flush()")
        await asyncio.sleep(0.05)
        await conn.execute("select 1")
        cur = await conn.execute(
            "select indexrelname, idx_scan from pg_stat_user_indexes where relname = %s",
            (SPACE,),
        )
        return {row["indexrelname"]: row["idx_scan"] for row in await cur.fetchall()}


async def _search(db: Database, query: np.ndarray) -> set[str]:
    provider = FixedQuery()
    provider.vector = query.tolist()
    recall = MessageRecall(db, provider, PostgresMemoryStorage(db))
    hits = await recall.search(
        "few", RecallQuery(query="q", scope=RecallScope.RESOURCE, resource_id="r", top_k=10)
    )
    return {hit.message.id for hit in hits}


def _nearest(ours: np.ndarray, query: np.ndarray) -> set[str]:
    return {f"m{i}" for i in np.argsort(-(ours @ query))[:10]}


async def test_a_small_scope_among_many_tenants_gets_exactly_its_nearest(crowded) -> None:
    db, ours = crowded
    before = await _index_scans(db)
    for query in _clustered(np.random.default_rng(9), 5):
        assert await _search(db, query) == _nearest(ours, query)
    after = await _index_scans(db)
    assert after[f"{SPACE}_hnsw"] == before[f"{SPACE}_hnsw"]  # exact: the HNSW index unused
    assert after[f"{SPACE}_by_resource"] > before[f"{SPACE}_by_resource"]


async def test_a_large_scope_gets_top_k_through_hnsw_whatever_the_connection_had(
    crowded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the exact threshold the shared HNSW index answers; its scan must go on until
    10 rows of the scope passed the filter (ef_search 40 alone would see ~4 of ours)."""
    db, ours = crowded
    monkeypatch.setattr(recall_module, "EXACT_SCOPE_ROWS", OURS // 2)
    before = await _index_scans(db)
    found = 0
    for query in _clustered(np.random.default_rng(9), 5):
        async with db.connection() as conn:  # the one pooled connection:
            await use_hnsw(conn, 40, "off")  # as a RAG search without filters leaves it,
            await conn.execute("set enable_sort = off")  # and at 8k rows, HNSW over sorting
        got = await _search(db, query)
        assert len(got) == 10
        found += len(got & _nearest(ours, query))
    assert found >= 40, f"{found} of the 50 nearest"
    after = await _index_scans(db)
    async with db.connection() as conn:
        await conn.execute("reset enable_sort")
    assert after[f"{SPACE}_hnsw"] > before[f"{SPACE}_hnsw"]


async def test_searches_are_planned_with_their_values_however_many(crowded) -> None:
    """A statement psycopg has prepared (after 5 runs) soon gets a generic plan, which does
    not know top_k and sorted a whole 25k-row scope instead of scanning HNSW (2-3x slower at
    500k vectors, bench/RESULTS.md): the search is never prepared."""
    db, ours = crowded
    for query in _clustered(np.random.default_rng(11), 12):
        assert await _search(db, query) == _nearest(ours, query)
    async with db.connection() as conn:  # the one pooled connection all 12 used
        cur = await conn.execute(
            "select count(*) as n from pg_prepared_statements where statement like %s",
            (f"%from {SPACE}%",),
        )
        row = await cur.fetchone()
    assert row is not None and row["n"] == 0
