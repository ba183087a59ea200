"""Which agent runs exist, per tenant: run id → Temporal workflow id, kept in Redis."""

from __future__ import annotations

from redis.asyncio import Redis

RETENTION_SECONDS = 7 * 24 * 3600


class RunDirectory:
    """Run id → workflow id, recorded before the start (so a repeat of a client run id finds
    its run), and whether the start reached Temporal: a run Temporal no longer knows was
    then dropped by its retention, not never started, and its id is not reused."""

    def __init__(self, redis: Redis, *, prefix: str = "loomwork:agent-run") -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, tenant: str, run_id: str) -> str:
        return f"{self.prefix}:{tenant}/{run_id}"

    async def record(self, tenant: str, run_id: str, workflow_id: str) -> None:
        await self.redis.set(self._key(tenant, run_id), workflow_id, ex=RETENTION_SECONDS)

    async def workflow_id(self, tenant: str, run_id: str) -> str | None:
        raw = await self.redis.get(self._key(tenant, run_id))
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def mark_started(self, tenant: str, run_id: str) -> None:
        """The run's start reached Temporal (it started, or joined the run under way)."""
        await self.redis.set(f"{self._key(tenant, run_id)}:started", b"1", ex=RETENTION_SECONDS)

    async def was_started(self, tenant: str, run_id: str) -> bool:
        return bool(await self.redis.exists(f"{self._key(tenant, run_id)}:started"))
