"""The read path's layers, each against its raw baseline, measured in the same run.

    .venv/bin/python bench/cache.py [--calls 5000]

- L1 hit: `VersionedCache.get` answered in-process (µs per call).
- L2 hit: the same call when this replica's L1 holds the scope version but not the value
  (one Redis GET + decode) over a raw `redis.get` of the same bytes.   goal ≤ 1.5×
- DB read: `PostgresMemoryStorage.get_thread` (pool + SQL + row → Thread model) over the
  same SQL through a raw psycopg connection.                          goal ≤ 1.2×

Starts embedded Postgres + Valkey in a temporary home unless DATABASE_URL / REDIS_URL are set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from timing import paired_us

from loomwork.cache.versioned import VersionedCache
from loomwork.messages import NewThread, Thread
from loomwork.storage import codec
from loomwork.storage.database import Database
from loomwork.storage.migrations import apply_migrations
from loomwork.storage.postgres import PostgresMemoryStorage
from server.embedded import EmbeddedStack


async def _median_us(fn: Callable[[], Awaitable[Any]], calls: int) -> float:
    for _ in range(min(200, calls)):
        await fn()
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls // 5):
            await fn()
        rounds.append((time.perf_counter() - started) / (calls // 5) * 1e6)
    return statistics.median(rounds)


async def run(database_url: str, redis_url: str, calls: int) -> None:
    db = Database(database_url)
    await db.open()
    await apply_migrations(db)
    storage = PostgresMemoryStorage(db)
    thread = await storage.create_thread(
        "bench", NewThread(id="bench-thread", title="t", metadata={"k": "v"})
    )
    value = codec.encode(thread.model_dump(mode="json"))

    redis = Redis.from_url(redis_url)
    cache = VersionedCache(redis, namespace="bench")
    await cache.start()
    scope, key = "thread:bench", "thread"

    async def load() -> Thread:
        return thread

    def encode(t: Thread) -> bytes:
        return codec.encode(t.model_dump(mode="json"))

    def decode(raw: bytes) -> Thread:
        return Thread.model_validate_json(codec.decode_json(raw))

    async def cached() -> Thread:
        return await cache.get(scope, key, load, encode=encode, decode=decode)

    await cached()
    version = await cache._version(scope)
    full_key = f"bench:val:{await cache._current_epoch()}:{scope}:{version}:{key}"

    async def l2_hit() -> Thread:
        cache.local.delete(full_key)  # keep the version, drop the value: an L2 hit
        return await cached()

    raw_key = "bench:raw"
    await redis.set(raw_key, value)

    async def raw_get() -> Any:
        return await redis.get(raw_key)

    raw_conn = await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    )
    sql = (
        "select id, seq, resource_id, title, metadata, message_count, create_time, update_time"
        " from threads where tenant_id = %s and id = %s"
    )

    async def raw_sql() -> Any:
        cur = await raw_conn.execute(sql, ("bench", "bench-thread"))
        return await cur.fetchone()

    async def adapter_read() -> Thread:
        return await storage.get_thread("bench", "bench-thread")

    l1 = await _median_us(cached, calls)
    l2, get, l2_ratio = await paired_us(l2_hit, raw_get, calls)
    ours, base, db_ratio = await paired_us(adapter_read, raw_sql, calls)
    assert cache.stats.l2_hits >= calls, cache.stats

    print(f"read path layers, {calls} sequential calls each, 20 alternating rounds (medians)")
    print(f"  L1 hit                    {l1:8.1f} µs")
    print(
        f"  L2 hit                    {l2:8.1f} µs   raw redis GET {get:8.1f} µs"
        f"   ratio {l2_ratio:5.2f}×  (goal ≤ 1.5×)"
    )
    print(
        f"  DB read (get_thread)      {ours:8.1f} µs   raw psycopg   {base:8.1f} µs"
        f"   ratio {db_ratio:5.2f}×  (goal ≤ 1.2×)"
    )

    await raw_conn.close()
    await cache.stop()
    await redis.aclose()
    await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        stack = EmbeddedStack(
            Path(tmp),
            postgres=not os.environ.get("DATABASE_URL"),
            redis=not os.environ.get("REDIS_URL"),
            temporal=False,
        )
        endpoints = stack.start()
        try:
            asyncio.run(
                run(
                    os.environ.get("DATABASE_URL") or endpoints.database_url or "",
                    os.environ.get("REDIS_URL") or endpoints.redis_url or "",
                    args.calls,
                )
            )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
