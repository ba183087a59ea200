"""Two gRPC server replicas on one store and one Redis, each with its own L1 cache: a write
through one is never read stale through the other beyond the documented bound (on each
memory store)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import field_mask_pb2

from protos.loomwork.v1 import memory_pb2, memory_pb2_grpc, message_pb2
from server.runtime import Runtime
from tests.store_support import StoreService
from tests.support import another_server, auth, unique


@dataclass
class Replica:
    runtime: Runtime
    stub: memory_pb2_grpc.MemoryServiceStub


@pytest.fixture
async def replica_b(store: StoreService) -> AsyncIterator[Replica]:
    """A second server process's worth of state: its own Runtime (pool, store client, L1
    cache) and port, on the store of `store`."""
    runtime = await Runtime.open(store.runtime.settings, migrate=False)
    try:
        async with another_server(runtime) as channel:
            yield Replica(runtime, memory_pb2_grpc.MemoryServiceStub(channel))
    finally:
        await runtime.close()


def _text(content: str) -> message_pb2.Message:
    return message_pb2.Message(
        role=message_pb2.ROLE_USER,
        parts=[message_pb2.Part(text=message_pb2.TextPart(text=content))],
    )


async def _within(seconds: float, check: Callable[[], Awaitable[bool]]) -> float:
    """Poll `check` until true; return how long it took (fails after `seconds`)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > seconds:
            pytest.fail(f"replica B still stale after {seconds} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_write_through_one_server_is_seen_through_the_other(
    store: StoreService, replica_b: Replica, token
) -> None:
    a, b = store.memory, replica_b.stub
    a_cache, b_cache = store.runtime.cache, replica_b.runtime.cache
    assert a_cache is not None and b_cache is not None and a_cache is not b_cache
    bound = b_cache.version_ttl  # the documented staleness bound (README, cache docstring)

    created = await a.CreateThread(
        memory_pb2.CreateThreadRequest(thread=memory_pb2.Thread(title="first")),
        metadata=auth(token),
    )
    thread_id = created.thread.id
    await a.AppendMessages(
        memory_pb2.AppendMessagesRequest(thread_id=thread_id, messages=[_text("hello")]),
        metadata=auth(token),
    )

    async def b_texts() -> list[str]:
        response = await b.ListMessages(
            memory_pb2.ListMessagesRequest(thread_id=thread_id, last_n=10), metadata=auth(token)
        )
        return [m.parts[0].text.text for m in response.messages]

    async def b_page() -> list[str]:
        response = await b.ListMessages(
            memory_pb2.ListMessagesRequest(thread_id=thread_id, page_size=10),
            metadata=auth(token),
        )
        return [m.parts[0].text.text for m in response.messages]

    async def b_thread() -> memory_pb2.Thread:
        response = await b.GetThread(
            memory_pb2.GetThreadRequest(thread_id=thread_id), metadata=auth(token)
        )
        return response.thread

    # Fill B's L1, and prove the repeated reads really are served from it.
    assert await b_texts() == ["hello"] and await b_page() == ["hello"]
    assert (await b_thread()).title == "first"
    l1_before = b_cache.stats.l1_hits
    assert await b_texts() == ["hello"] and await b_page() == ["hello"]
    assert (await b_thread()).message_count == 1
    assert b_cache.stats.l1_hits >= l1_before + 3

    heard_before = b_cache.stats.invalidations_received
    await a.AppendMessages(
        memory_pb2.AppendMessagesRequest(thread_id=thread_id, messages=[_text("world")]),
        metadata=auth(token),
    )
    await a.UpdateThread(
        memory_pb2.UpdateThreadRequest(
            thread=memory_pb2.Thread(id=thread_id, title="renamed"),
            update_mask=field_mask_pb2.FieldMask(paths=["title"]),
        ),
        metadata=auth(token),
    )

    async def b_sees_writes() -> bool:
        thread = await b_thread()
        return (
            await b_texts() == ["hello", "world"]
            and await b_page() == ["hello", "world"]
            and thread.title == "renamed"
            and thread.message_count == 2
        )

    await _within(bound, b_sees_writes)
    # B heard A's writes on the pub/sub channel; it did not just wait for its versions to expire.
    assert b_cache.stats.invalidations_received > heard_before

    await a.DeleteThread(memory_pb2.DeleteThreadRequest(thread_id=thread_id), metadata=auth(token))

    async def b_sees_delete() -> bool:
        try:
            await b_thread()
        except grpc.aio.AioRpcError as error:
            return error.code() == grpc.StatusCode.NOT_FOUND
        return False

    await _within(bound, b_sees_delete)


async def test_each_replica_caches_on_its_own(
    store: StoreService, replica_b: Replica, token
) -> None:
    """Reads through B do not need A: B fills its own L1 (from the shared L2 or the store)."""
    memory_stub = store.memory
    thread_id = unique("thr")
    await memory_stub.CreateThread(
        memory_pb2.CreateThreadRequest(thread_id=thread_id), metadata=auth(token)
    )
    b_cache = replica_b.runtime.cache
    assert b_cache is not None
    request = memory_pb2.GetThreadRequest(thread_id=thread_id)
    await memory_stub.GetThread(request, metadata=auth(token))  # A loads it into L2
    l2_before = b_cache.stats.l2_hits
    await replica_b.stub.GetThread(request, metadata=auth(token))
    assert b_cache.stats.l2_hits == l2_before + 1  # B found A's fill in Redis
    l1_before = b_cache.stats.l1_hits
    await replica_b.stub.GetThread(request, metadata=auth(token))
    assert b_cache.stats.l1_hits == l1_before + 1
