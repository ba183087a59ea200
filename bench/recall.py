"""Semantic recall latency with 100k stored messages, against raw pgvector SQL in the same run.

    .venv/bin/python bench/recall.py [--messages 100000] [--queries 200]

Stores `--messages` messages (1000 threads of 5 resources, in one tenant, plus as many in
another tenant) with random unit 384-dim vectors, builds the HNSW index, then times
`MessageRecall.search` (thread scope and resource scope, top_k 5, one neighbour each side)
against the bare `order by embedding <=> q limit 5` SQL with the same tenant/scope filter.
Query vectors are random too, so only retrieval is measured (the local model embeds a
short query in ~3 ms; see bench/embeddings.py).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector import Vector
from pgvector.psycopg import register_vector_async

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loomwork.memory.models import RecallQuery, RecallScope
from loomwork.memory.recall import SPACE, MessageRecall
from loomwork.storage import codec
from loomwork.storage.database import Database
from loomwork.storage.migrations import apply_migrations
from loomwork.storage.postgres import PostgresMemoryStorage
from server.embedded import EmbeddedStack

DIM = 384
rng = np.random.default_rng(7)


def unit(n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class RandomQueries:
    """An embedding provider answering random unit vectors (retrieval is what we time)."""

    model = "all-MiniLM-L6-v2"
    dimension = DIM

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return unit(len(texts)).tolist()


async def load(db: Database, messages: int) -> None:
    content = codec.encode({"parts": [{"type": "text", "text": "lorem ipsum " * 8}]})
    per_tenant = messages
    async with db.connection() as conn:
        await register_vector_async(conn)
        await conn.execute(f"drop index if exists {SPACE}_hnsw")
        for tenant in ("bench", "other"):
            async with conn.cursor().copy(
                "copy threads (tenant_id, id, resource_id) from stdin"
            ) as copy:
                for t in range(1000):
                    await copy.write_row((tenant, f"t{t}", f"r{t % 5}"))
            async with conn.cursor().copy(
                "copy messages (tenant_id, id, thread_id, role, content) from stdin"
            ) as copy:
                for i in range(per_tenant):
                    await copy.write_row((tenant, f"m{i}", f"t{i % 1000}", "user", content))
            done = 0
            while done < per_tenant:
                batch = min(20_000, per_tenant - done)
                vectors = unit(batch)
                async with conn.cursor().copy(
                    f"copy {SPACE} (tenant_id, message_id, thread_id, resource_id, embedding)"
                    " from stdin"
                ) as copy:
                    for j in range(batch):
                        i = done + j
                        await copy.write_row(
                            (
                                tenant,
                                f"m{i}",
                                f"t{i % 1000}",
                                f"r{(i % 1000) % 5}",
                                Vector(vectors[j]).to_text(),
                            )
                        )
                done += batch
        started = time.perf_counter()
        await conn.execute("set maintenance_work_mem = '512MB'")
        await conn.execute(
            f"create index {SPACE}_hnsw on {SPACE} using hnsw (embedding vector_cosine_ops)"
        )
        await conn.execute(f"analyze {SPACE}")
        print(f"  built HNSW over {2 * per_tenant} vectors in {time.perf_counter() - started:.0f}s")


async def run(url: str, messages: int, queries: int) -> None:
    db = Database(url, max_size=4)
    await db.open()
    await apply_migrations(db)
    recall = MessageRecall(db, RandomQueries(), PostgresMemoryStorage(db))
    await recall.ensure_space()
    started = time.perf_counter()
    await load(db, messages)
    print(f"  loaded in {time.perf_counter() - started:.0f}s")

    async def ours(scope: RecallScope, i: int) -> float:
        query = RecallQuery(
            query="q",
            scope=scope,
            thread_id=f"t{i % 1000}",
            resource_id=f"r{i % 5}",
            top_k=5,
            message_range=1,
        )
        t0 = time.perf_counter()
        hits = await recall.search("bench", query)
        assert hits, "recall found nothing"
        return (time.perf_counter() - t0) * 1000

    async def raw(scope: RecallScope, i: int) -> float:
        column, owner = (
            ("thread_id", f"t{i % 1000}")
            if scope is RecallScope.THREAD
            else ("resource_id", f"r{i % 5}")
        )
        v = Vector(unit(1)[0])
        t0 = time.perf_counter()
        async with raw_conn.transaction():
            await raw_conn.execute("set local hnsw.iterative_scan = relaxed_order")
            cur = await raw_conn.execute(
                f"select message_id from {SPACE} where tenant_id = %s and {column} = %s"
                " order by embedding <=> %s limit 5",
                ("bench", owner, v),
            )
            await cur.fetchall()
        return (time.perf_counter() - t0) * 1000

    # The baseline: one connection of its own, vector type registered once, outside the timing.
    raw_conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await register_vector_async(raw_conn)
    print(f"recall over {messages} messages per tenant ({queries} queries each, p50 / p99)")
    for scope in (RecallScope.THREAD, RecallScope.RESOURCE):
        a: list[float] = []
        b: list[float] = []
        for i in range(queries):  # alternate, so drift in machine load hits both alike
            a.append(await ours(scope, i))
            b.append(await raw(scope, i))
        qa, qb = statistics.quantiles(a, n=100), statistics.quantiles(b, n=100)
        print(
            f"  {scope.value:8} MessageRecall.search {qa[49]:6.1f} / {qa[98]:6.1f} ms"
            f"   raw pgvector SQL {qb[49]:6.1f} / {qb[98]:6.1f} ms"
            "   (search adds the embedding call and ±1 neighbours of all 5 hits, from the store)"
        )
    await raw_conn.close()
    await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        stack = EmbeddedStack(Path(tmp), redis=False, temporal=False)
        endpoints = stack.start()
        try:
            asyncio.run(run(endpoints.database_url or "", args.messages, args.queries))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
