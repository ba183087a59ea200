"""Every Redis client Loomwork builds skips the maintenance-notification handshake redis-py
8 sends by default, which Valkey refuses: a new connection costs no refused command."""

from __future__ import annotations

from redis.asyncio import Redis

from loomwork.config import redis_options


async def _error_replies(client: Redis) -> int:
    """Replies of the generic ERR kind, which a refused command gets ("unknown subcommand");
    not the errors of Loomwork's own scripts other tests' leftovers might still cause."""
    stats = await client.info("errorstats")
    return int(stats.get("errorstat_ERR", {}).get("count", 0))


async def test_a_new_connection_sends_nothing_redis_refuses(embedded: dict[str, str]) -> None:
    probe = Redis.from_url(embedded["REDIS_URL"])
    try:
        before = await _error_replies(probe)
        client = Redis.from_url(embedded["REDIS_URL"], **redis_options())
        try:
            assert await client.ping()
        finally:
            await client.aclose()
        assert await _error_replies(probe) == before
    finally:
        await probe.aclose()
