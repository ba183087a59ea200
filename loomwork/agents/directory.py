"""Which agent runs exist, per tenant: run id → Temporal workflow id, kept in Redis."""

from __future__ import annotations

from redis.asyncio import Redis

RETENTION_SECONDS = 7 * 24 * 3600


class RunDirectory:
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
