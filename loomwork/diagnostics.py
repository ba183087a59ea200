"""Checks that the stack's dependencies answer; used by health and the stack-check workflow."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from pydantic import BaseModel
from redis.asyncio import Redis

from loomwork.storage.database import Database


class DependencyCheck(BaseModel):
    name: str
    ok: bool
    detail: str = ""
    latency_ms: float = 0.0


class DependencyReport(BaseModel):
    checks: list[DependencyCheck]
    schema_version: int = 0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


async def _timed(name: str, probe: Callable[[], Awaitable[str]]) -> DependencyCheck:
    started = time.perf_counter()
    try:
        detail = await probe()
        ok = True
    except Exception as exc:  # any failure means "not reachable"; say why
        detail, ok = f"{type(exc).__name__}: {exc}", False
    return DependencyCheck(
        name=name, ok=ok, detail=detail, latency_ms=(time.perf_counter() - started) * 1000
    )


async def check_postgres(db: Database) -> DependencyCheck:
    async def probe() -> str:
        async with db.connection(timeout=2.0) as conn:
            cur = await conn.execute("select current_setting('server_version') as v")
            row = await cur.fetchone()
        return f"PostgreSQL {row['v'] if row else '?'}"

    return await _timed("postgres", probe)


async def check_redis(redis: Redis) -> DependencyCheck:
    async def probe() -> str:
        await redis.ping()
        info = await redis.info("server")
        version = info.get("valkey_version") or info.get("redis_version", "?")
        return f"{info.get('server_name', 'redis')} {version}"

    return await _timed("redis", probe)


async def schema_version(db: Database) -> int:
    """Highest applied migration version (0 before any)."""
    async with db.connection() as conn:
        cur = await conn.execute("select coalesce(max(version), 0) as v from loomwork_migrations")
        row = await cur.fetchone()
    return int(row["v"]) if row else 0


async def check_dependencies(db: Database, redis: Redis) -> DependencyReport:
    """Probe Postgres and Redis; report each with its latency and the schema version."""
    checks = [await check_postgres(db), await check_redis(redis)]
    version = await schema_version(db) if checks[0].ok else 0
    return DependencyReport(checks=checks, schema_version=version)
