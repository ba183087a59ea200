"""The read path's caches: L1 in-process, L2 Redis, invalidation across replicas, single-flight,
and Postgres staying the source of truth when Redis goes away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from loomwork.cache.local import LocalCache
from loomwork.cache.versioned import VersionedCache
from loomwork.memory.threads import Memory
from loomwork.messages import NewMessage, NewThread, Role, TextPart
from loomwork.storage.cached import CachedMemoryStorage
from loomwork.storage.postgres import PostgresMemoryStorage
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from tests.support import unique


def _bytes(value: str) -> bytes:
    return value.encode()


def _str(raw: bytes) -> str:
    return raw.decode()


class Source:
    """A loader that counts its calls and can be slow."""

    def __init__(self, value: str = "v1", delay: float = 0.0) -> None:
        self.value, self.delay, self.calls = value, delay, 0

    async def load(self) -> str:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.value


async def _eventually(check, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def replicas(embedded) -> AsyncIterator[tuple[VersionedCache, VersionedCache]]:
    """Two caches as two server replicas would hold them: one Redis, separate L1s."""
    namespace = unique("cache")
    caches = [
        VersionedCache(Redis.from_url(embedded["REDIS_URL"]), namespace=namespace) for _ in range(2)
    ]
    for cache in caches:
        await cache.start()
    yield caches[0], caches[1]
    for cache in caches:
        await cache.stop()
        await cache.redis.aclose()


def test_local_cache_is_bounded_lru_with_ttl() -> None:
    cache = LocalCache(max_entries=2, ttl=0.2)
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.set("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    time.sleep(0.25)
    assert cache.get("a") is None and len(cache) <= 2


async def test_l1_then_l2_then_loader(replicas) -> None:
    a, b = replicas
    source = Source("hello")
    get = {"encode": _bytes, "decode": _str}
    assert await a.get("s", "k", source.load, **get) == "hello"
    assert await a.get("s", "k", source.load, **get) == "hello"
    assert await b.get("s", "k", source.load, **get) == "hello"
    assert source.calls == 1
    assert (a.stats.loads, a.stats.l1_hits, b.stats.l2_hits) == (1, 1, 1)


async def test_write_on_one_replica_is_never_read_stale_on_another(replicas) -> None:
    a, b = replicas
    source = Source("old")
    get = {"encode": _bytes, "decode": _str}
    assert await a.get("thread-1", "k", source.load, **get) == "old"
    assert await b.get("thread-1", "k", source.load, **get) == "old"
    source.value = "new"
    await b.invalidate("thread-1")  # b wrote; a hears of it by pub/sub
    assert await b.get("thread-1", "k", source.load, **get) == "new"

    async def a_sees_new() -> bool:
        return await a.get("thread-1", "k", source.load, **get) == "new"

    await _eventually(a_sees_new, seconds=a.version_ttl + 1)
    assert a.stats.invalidations_received >= 1
    # Other scopes are untouched.
    other = Source("x")
    await a.get("thread-2", "k", other.load, **get)
    await b.invalidate("thread-1")
    await a.get("thread-2", "k", other.load, **get)
    assert other.calls == 1


async def test_concurrent_misses_load_once(replicas) -> None:
    a, _ = replicas
    source = Source("slow", delay=0.2)
    results = await asyncio.gather(
        *(a.get("s", "hot", source.load, encode=_bytes, decode=_str) for _ in range(20))
    )
    assert results == ["slow"] * 20
    assert source.calls == 1


async def test_cached_storage_across_two_replicas(runtime: Runtime, replicas) -> None:
    a_cache, b_cache = replicas
    postgres = PostgresMemoryStorage(runtime.db)
    a = Memory(CachedMemoryStorage(postgres, a_cache))
    b = Memory(CachedMemoryStorage(postgres, b_cache))
    tenant = unique("tenant")
    thread = await a.create_thread(tenant, NewThread())
    hello = NewMessage(role=Role.USER, parts=[TextPart(text="hello")])
    await a.append_messages(tenant, thread.id, [hello])
    assert [m.text for m in (await a.list_messages(tenant, thread.id, last_n=5)).messages] == [
        "hello"
    ]
    assert [m.text for m in (await b.list_messages(tenant, thread.id, last_n=5)).messages] == [
        "hello"
    ]
    loads = a_cache.stats.loads
    await a.list_messages(tenant, thread.id, last_n=5)
    assert a_cache.stats.loads == loads, "a repeated read must come from the cache"

    again = NewMessage(role=Role.ASSISTANT, parts=[TextPart(text="hi there")])
    await b.append_messages(tenant, thread.id, [again])

    async def a_sees_both() -> bool:
        page = await a.list_messages(tenant, thread.id, last_n=5)
        return [m.text for m in page.messages] == ["hello", "hi there"]

    await _eventually(a_sees_both)
    assert (await a.get_thread(tenant, thread.id)).message_count == 2


class Link:
    """A TCP hop to Redis that a test can cut and heal: one replica's network, failing alone."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def heal(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


async def test_invalidation_lost_by_a_cut_off_writer_is_delivered_when_it_reconnects(
    embedded,
) -> None:
    """A replica that cannot reach Redis when it writes reads that scope from storage itself,
    and publishes the invalidation as soon as Redis answers again; the other replica, which
    never lost Redis, then stops serving the old value (it would otherwise keep it for the
    values' whole TTL)."""
    namespace = unique("cache")
    link = Link(int(embedded["REDIS_URL"].rsplit(":", 1)[1].split("/")[0]))
    await link.heal()
    writer = VersionedCache(
        Redis.from_url(
            f"redis://127.0.0.1:{link.port}", socket_timeout=1, socket_connect_timeout=0.5
        ),
        namespace=namespace,
    )
    reader = VersionedCache(Redis.from_url(embedded["REDIS_URL"]), namespace=namespace)
    for cache in (writer, reader):
        await cache.start()
    source = Source("old")
    get = {"encode": _bytes, "decode": _str}
    try:
        assert await writer.get("s", "k", source.load, **get) == "old"
        assert await reader.get("s", "k", source.load, **get) == "old"

        await link.cut()
        source.value = "new"  # the write reached the database ...
        await writer.invalidate("s")  # ... but its invalidation cannot reach Redis
        assert await writer.get("s", "k", source.load, **get) == "new"
        assert await writer.get("s", "k", source.load, **get) == "new"

        await link.heal()

        async def reader_sees_new() -> bool:
            return await reader.get("s", "k", source.load, **get) == "new"

        await _eventually(reader_sees_new, seconds=5)
        assert writer._pending == set()
    finally:
        for cache in (writer, reader):
            await cache.stop()
            await cache.redis.aclose()
        await link.cut()


async def test_redis_restart_loses_nothing(runtime: Runtime, tmp_path: Path) -> None:
    """Postgres is the source of truth: with Redis gone, reads and writes go on; after it
    comes back, the cache serves fresh data."""
    stack = EmbeddedStack(tmp_path / "redis-home", postgres=False, temporal=False)
    url = stack.start().redis_url
    assert url is not None
    cache = VersionedCache(
        Redis.from_url(url, socket_timeout=1, socket_connect_timeout=0.5),
        namespace=unique("cache"),
    )
    await cache.start()
    memory = Memory(CachedMemoryStorage(PostgresMemoryStorage(runtime.db), cache))
    tenant = unique("tenant")
    try:
        thread = await memory.create_thread(tenant, NewThread())

        async def texts() -> list[str]:
            page = await memory.list_messages(tenant, thread.id, last_n=10)
            return [m.text for m in page.messages]

        await memory.append_messages(
            tenant, thread.id, [NewMessage(role=Role.USER, parts=[TextPart(text="one")])]
        )
        assert await texts() == ["one"]

        stack.stop()  # Redis goes away
        await memory.append_messages(
            tenant, thread.id, [NewMessage(role=Role.USER, parts=[TextPart(text="two")])]
        )
        assert await texts() == ["one", "two"]
        assert cache.stats.bypasses >= 1

        stack.start()  # same home, same port; Valkey reloads its append-only file
        # The invalidation of "two" was lost with Redis, and Redis came back with the scope's
        # old version and the old cached page: neither may be served.
        for _ in range(20):
            assert await texts() == ["one", "two"]
            await asyncio.sleep(0.1)
        await memory.append_messages(
            tenant, thread.id, [NewMessage(role=Role.USER, parts=[TextPart(text="three")])]
        )

        async def fresh_and_cached() -> bool:
            before = cache.stats.l1_hits + cache.stats.l2_hits
            ok = await texts() == ["one", "two", "three"]
            ok = ok and await texts() == ["one", "two", "three"]
            return ok and cache.stats.l1_hits + cache.stats.l2_hits > before

        await _eventually(fresh_and_cached, seconds=10)
    finally:
        await cache.stop()
        await cache.redis.aclose()
        stack.stop()
