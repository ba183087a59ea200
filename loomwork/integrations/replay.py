"""Replay protection: each delivery id is claimed once in Redis (SET NX with a TTL)."""

from __future__ import annotations

from redis.asyncio import Redis

# A replay older than the timestamp tolerance fails the signature check anyway; the
# database record (unique per delivery id) is the second line behind this one.
MIN_TTL_SECONDS = 600


class ReplayGuard:
    def __init__(self, redis: Redis, *, prefix: str = "loomwork:webhook-delivery") -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, source_id: str, delivery_id: str) -> str:
        return f"{self.prefix}:{source_id}/{delivery_id}"

    async def seen(self, source_id: str, delivery_id: str) -> bool:
        """True when the delivery id was claimed already (a cheap pre-check)."""
        return bool(await self.redis.exists(self._key(source_id, delivery_id)))

    async def claim(self, source_id: str, delivery_id: str, *, tolerance_seconds: float) -> bool:
        """Claim the delivery id; False when it was claimed before (a replay)."""
        ttl = max(MIN_TTL_SECONDS, int(2 * tolerance_seconds))
        return bool(await self.redis.set(self._key(source_id, delivery_id), b"1", nx=True, ex=ttl))
