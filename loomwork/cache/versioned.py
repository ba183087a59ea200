"""L1 → L2 (Redis) → loader, with per-scope versions so one write invalidates a whole scope.

Every cached value belongs to a scope (e.g. one thread). A scope has a version number in
Redis; values are stored under keys that include it. A write bumps the version *after* its
database commit and publishes the scope on a pub/sub channel, so every replica drops its
local copy of the version at once. A reader fetches the version *before* it loads from the
database, so a value loaded from a snapshot older than a write can only land under the old
version's key, which no reader that saw the write will ask for.

Staleness bound: if a replica misses an invalidation message (Redis restarted, connection
lost), its L1 still forgets scope versions after `version_ttl` seconds. When Redis cannot be
reached at all, reads go straight to the loader: the database stays the source of truth.

Redis restarts: value keys carry the Redis server's `run_id` (the "epoch"), which changes on
every start, so a Redis that reloads old versions and values from its append-only file never
serves them: writes made while it was down could not bump those versions. A write whose
invalidation fails keeps its scope *pending*: this replica reads that scope from the loader and
retries the invalidation until Redis takes it, so other replicas are stale at most until then
(or, should this replica die first, until the values' `value_ttl`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from loomwork.cache.local import LocalCache

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class CacheStats:
    l1_hits: int = 0
    l2_hits: int = 0
    loads: int = 0
    bypasses: int = 0
    invalidations_received: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class VersionedCache:
    """Read-through cache of values grouped in invalidatable scopes, shared across replicas."""

    def __init__(
        self,
        redis: Redis,
        *,
        namespace: str = "loomwork:cache",
        local: LocalCache | None = None,
        value_ttl: float = 300.0,
        version_ttl: float = 2.0,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.local = local or LocalCache()
        self.value_ttl = value_ttl
        self.version_ttl = version_ttl
        self.channel = f"{namespace}:invalidate"
        self.stats = CacheStats()
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._redis_down_until = 0.0
        self._epoch: str | None = None
        self._pending: set[str] = set()
        self._flusher: asyncio.Task[None] | None = None

    def _redis_usable(self) -> bool:
        return asyncio.get_running_loop().time() >= self._redis_down_until

    def _redis_failed(self, exc: BaseException) -> None:
        # Skip Redis for a second rather than paying a connect timeout on every read.
        log.warning("cache: Redis unavailable (%s); reading through to storage", exc)
        self._redis_down_until = asyncio.get_running_loop().time() + 1.0
        self._epoch = None  # it may be another Redis (restarted) when it answers again
        self.stats.bypasses += 1

    async def _current_epoch(self) -> str:
        if self._epoch is None:
            info = await self.redis.info("server")
            self._epoch = str(info["run_id"])
        return self._epoch

    # -- lifecycle

    async def start(self) -> None:
        """Listen for other replicas' invalidations (keeps retrying while Redis is away)."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="cache-invalidations")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), 5)

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                # Anything published while we were not listening is lost, and Redis may have
                # restarted: start clean.
                self._epoch = None
                self.local.clear()
                self._subscribed.set()
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    scope = message["data"]
                    scope = scope.decode() if isinstance(scope, bytes) else str(scope)
                    self.local.delete(self._version_key(scope))
                    self.stats.invalidations_received += 1
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("cache invalidation listener lost Redis (%s); retrying", exc)
                self._epoch = None
                self.local.clear()
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # -- reads

    def _version_key(self, scope: str) -> str:
        return f"{self.namespace}:ver:{scope}"

    async def _version(self, scope: str) -> int:
        key = self._version_key(scope)
        cached = self.local.get(key)
        if cached is not None:
            return int(cached)
        raw = await self.redis.get(key)
        version = int(raw or 0)
        self.local.set(key, version, ttl=self.version_ttl)
        return version

    async def get(
        self,
        scope: str,
        key: str,
        load: Callable[[], Awaitable[T]],
        *,
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
    ) -> T:
        """The value of `key` in `scope`: from L1, else Redis, else `load()` (once per key
        and version in this process, however many callers miss at the same time)."""
        if not self._redis_usable() or scope in self._pending:
            self.stats.bypasses += 1
            return await load()
        try:
            epoch = await self._current_epoch()
            version = await self._version(scope)
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
            return await load()
        full_key = f"{self.namespace}:val:{epoch}:{scope}:{version}:{key}"
        hit = self.local.get(full_key)
        if hit is not None:
            self.stats.l1_hits += 1
            return cast(T, hit)
        inflight = self._inflight.get(full_key)
        if inflight is not None:
            return cast(T, await asyncio.shield(inflight))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[full_key] = future
        try:
            value: T = await self._fill(full_key, load, encode, decode)
            future.set_result(value)
            return value
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._inflight[full_key]

    async def _fill(
        self,
        full_key: str,
        load: Callable[[], Awaitable[T]],
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
    ) -> T:
        try:
            raw = await self.redis.get(full_key)
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
            return await load()
        if raw is not None:
            self.stats.l2_hits += 1
            value = decode(raw if isinstance(raw, bytes) else raw.encode())
        else:
            self.stats.loads += 1
            value = await load()
            with contextlib.suppress(RedisError, OSError):
                await self.redis.set(full_key, encode(value), ex=int(self.value_ttl))
        self.local.set(full_key, value)
        return value

    # -- writes

    async def invalidate(self, scope: str) -> None:
        """Call after the write is committed: every replica reads the scope afresh."""
        self.local.delete(self._version_key(scope))
        try:
            await self._publish(scope)
        except (RedisError, OSError) as exc:
            # The write itself succeeded: read this scope from storage until Redis has it.
            log.warning("could not publish cache invalidation of %s: %s", scope, exc)
            self._pending.add(scope)
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush(), name="cache-pending")

    async def _publish(self, scope: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(self._version_key(scope))
            pipe.publish(self.channel, scope)
            await pipe.execute()

    async def _flush(self) -> None:
        """Retry the invalidations that failed until Redis takes them."""
        while self._pending:
            await asyncio.sleep(0.5)
            for scope in list(self._pending):
                try:
                    await self._publish(scope)
                except (RedisError, OSError):
                    break
                self._pending.discard(scope)
                self.local.delete(self._version_key(scope))
