"""Followers of many run logs in one process share one blocking reader (a real Redis): each
still gets its run's events in order with no gap, on one connection for all of them; one
that arrives while the reader waits is read for at once; one that leaves or stops taking
events holds up nobody else; Redis lost fails every follower, and the next follow reads
again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from loomwork.errors import Unavailable
from loomwork.streams import RunEvent, RunEventLog
from loomwork.streams import run_events as run_events_module
from tests.redis_proxy import redis_proxy

WAIT = 30.0  # generous upper bound for "this finishes", never a timing assertion
BLOCKING_NAME = "test-shared-reader"


@pytest.fixture
async def redis(embedded: dict[str, str]) -> AsyncIterator[Redis]:
    client = Redis.from_url(embedded["REDIS_URL"])
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def blocking(embedded: dict[str, str]) -> AsyncIterator[Redis]:
    """The blocking reads' client, named so that Redis can tell its connections apart."""
    client = Redis.from_url(
        embedded["REDIS_URL"], client_name=f"{BLOCKING_NAME}-{uuid.uuid4().hex[:8]}"
    )
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def log(redis: Redis, blocking: Redis) -> RunEventLog:
    return RunEventLog(redis, blocking_redis=blocking, prefix="test:shared", retention_seconds=60)


def new_run() -> str:
    return f"run-{uuid.uuid4().hex}"


def payload(run_id: str, n: int) -> bytes:
    return f"{run_id} {n}".encode()


async def publish(log: RunEventLog, run_id: str, first: int, last: int, end: int = 0) -> None:
    """Append events first..last; the one numbered `end` is terminal."""
    for i in range(first, last + 1):
        assert await log.append(run_id, payload(run_id, i), terminal=i == end) == i
        await asyncio.sleep(0)


async def collect(log: RunEventLog, run_id: str, after_id: int = 0) -> list[RunEvent]:
    return [event async for event in log.follow(run_id, after_id)]


def assert_complete(run_id: str, events: list[RunEvent], first: int, last: int) -> None:
    assert [e.event_id for e in events] == list(range(first, last + 1))
    assert [e.payload for e in events] == [payload(run_id, i) for i in range(first, last + 1)]


async def connections_named(redis: Redis, name: str) -> int:
    clients = await redis.client_list()
    return sum(1 for c in clients if c.get("name") == name)


async def test_many_followers_get_their_runs_on_one_connection(
    redis: Redis, blocking: Redis, log: RunEventLog
) -> None:
    runs = [new_run() for _ in range(50)]
    followers = [asyncio.create_task(collect(log, run_id)) for run_id in runs]
    await asyncio.sleep(0.2)  # all of them waiting for their first event
    name = blocking.connection_pool.connection_kwargs["client_name"]
    assert await connections_named(redis, name) == 1
    await asyncio.gather(*(publish(log, run_id, 1, 20, end=20) for run_id in runs))
    results = await asyncio.wait_for(asyncio.gather(*followers), WAIT)
    for run_id, events in zip(runs, results, strict=True):
        assert_complete(run_id, events, 1, 20)
    assert await connections_named(redis, name) <= 1


async def test_followers_of_one_run_from_different_events(log: RunEventLog) -> None:
    run_id = new_run()
    await publish(log, run_id, 1, 5)
    followers = {after: asyncio.create_task(collect(log, run_id, after)) for after in (0, 2, 5)}
    await publish(log, run_id, 6, 10, end=10)
    for after, follower in followers.items():
        assert_complete(run_id, await asyncio.wait_for(follower, WAIT), after + 1, 10)


async def test_a_follower_arriving_while_the_reader_waits_is_read_for_at_once(
    log: RunEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader waits far longer than this test (its block): only its wake makes it read
    for a follower that came after it began waiting."""
    monkeypatch.setattr(run_events_module, "FOLLOW_BLOCK_MS", 600_000)
    first, second = new_run(), new_run()
    waiting = asyncio.create_task(collect(log, first))
    await asyncio.sleep(0.2)  # the reader is blocked, reading for `first` alone
    late = asyncio.create_task(collect(log, second))
    await asyncio.sleep(0.2)
    await publish(log, second, 1, 3, end=3)
    assert_complete(second, await asyncio.wait_for(late, WAIT), 1, 3)
    assert not waiting.done()
    await publish(log, first, 1, 1, end=1)
    assert_complete(first, await asyncio.wait_for(waiting, WAIT), 1, 1)


async def test_a_cancelled_follower_does_not_stop_the_others(log: RunEventLog) -> None:
    runs = [new_run() for _ in range(5)]
    followers = [asyncio.create_task(collect(log, run_id)) for run_id in runs]
    await publish(log, runs[0], 1, 2)
    await asyncio.sleep(0.2)
    followers[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await followers[0]
    for run_id in runs[1:]:
        await publish(log, run_id, 1, 4, end=4)
    for run_id, follower in zip(runs[1:], followers[1:], strict=True):
        assert_complete(run_id, await asyncio.wait_for(follower, WAIT), 1, 4)
    # The cancelled one's run can be followed again, from where it was left.
    await publish(log, runs[0], 3, 3, end=3)
    assert_complete(runs[0], await asyncio.wait_for(collect(log, runs[0], 2), WAIT), 3, 3)


async def test_a_follower_that_takes_nothing_holds_up_nobody(
    log: RunEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One follower stops taking events (a slow client) with more waiting for it than the
    reader keeps per follower: the others go on; it then gets all of its own, no gap."""
    monkeypatch.setattr(run_events_module, "FOLLOW_COUNT", 5)
    slow_run, fast_run = new_run(), new_run()
    slow = aiter(log.follow(slow_run, 0))
    await publish(log, slow_run, 1, 30, end=30)
    first = await asyncio.wait_for(anext(slow), WAIT)  # then it takes nothing for a while
    fast = asyncio.create_task(collect(log, fast_run))
    await publish(log, fast_run, 1, 30, end=30)
    assert_complete(fast_run, await asyncio.wait_for(fast, WAIT), 1, 30)
    rest = [event async for event in slow]
    assert_complete(slow_run, [first, *rest], 1, 30)


async def test_redis_lost_fails_every_follower_and_the_next_follow_reads_again(
    embedded: dict[str, str],
) -> None:
    async with redis_proxy(embedded["REDIS_URL"]) as proxy:
        client = Redis.from_url(proxy.url, socket_timeout=2, socket_connect_timeout=1)
        try:
            log = RunEventLog(client, prefix="test:shared", write_patience=0)
            runs = [new_run() for _ in range(3)]
            for run_id in runs:
                await log.append(run_id, payload(run_id, 1))
            followers = [asyncio.create_task(collect(log, run_id, 1)) for run_id in runs]
            await asyncio.sleep(0.3)  # all waiting on the one reader
            await proxy.down()
            for run_id, follower in zip(runs, followers, strict=True):
                with pytest.raises(Unavailable, match="Redis is unreachable") as raised:
                    await asyncio.wait_for(follower, WAIT)
                assert run_id in raised.value.message
            await proxy.up()
            again = asyncio.create_task(collect(log, runs[0], 1))
            await asyncio.sleep(0.2)
            await log.append(runs[0], payload(runs[0], 2), terminal=True)
            assert_complete(runs[0], await asyncio.wait_for(again, WAIT), 2, 2)
        finally:
            await client.aclose()


async def test_a_follower_from_an_earlier_event_joining_mid_read_misses_nothing(
    log: RunEventLog,
) -> None:
    """A follower from event 0 joins a run whose other follower (from event 1) the reader is
    reading for, while events arrive: it still gets every event from 1 (the reader's read in
    flight began above its cursor, so it is read for anew)."""
    for _ in range(20):
        run_id = new_run()
        await publish(log, run_id, 1, 1)
        ahead = asyncio.create_task(collect(log, run_id, 1))
        await asyncio.sleep(0.05)  # the reader is blocked on the run from event 1
        behind = asyncio.create_task(collect(log, run_id, 0))
        await publish(log, run_id, 2, 6, end=6)
        assert_complete(run_id, await asyncio.wait_for(ahead, WAIT), 2, 6)
        assert_complete(run_id, await asyncio.wait_for(behind, WAIT), 1, 6)
