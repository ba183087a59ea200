"""Event ids after Redis lost a run's log: they go on above a ceiling reserved in PostgreSQL,
so a watcher resuming from its cursor sees ids strictly increasing, none twice, to the end."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from loomwork.storage.event_ceilings import EventIdCeilings
from loomwork.streams import FollowIdle, OutOfRange, RunEvent, RunEventLog
from server.runtime import Runtime

WAIT = 20.0  # generous upper bound for "this finishes", never a timing assertion


def durable_log(runtime: Runtime, *, block: int = 1000) -> RunEventLog:
    return RunEventLog(
        runtime.redis,
        prefix="test:lost",
        retention_seconds=3600,
        ceilings=EventIdCeilings(runtime.db, block=block),
    )


def new_run() -> str:
    return f"run-{uuid.uuid4().hex}"


async def lose(redis: Redis, log: RunEventLog, run_id: str) -> None:
    """What a Redis restart without persistence, or FLUSHALL, does to the run's log."""
    assert await redis.delete(log.meta_key(run_id), log.stream_key(run_id)) == 2


async def collect(log: RunEventLog, run_id: str, after: int) -> list[RunEvent]:
    return [event async for event in log.follow(run_id, after)]


async def test_ids_go_on_above_the_reserved_ceiling_after_the_log_was_lost(
    runtime: Runtime,
) -> None:
    log, run_id = durable_log(runtime), new_run()
    assert [await log.append(run_id, b"e%d" % i) for i in range(1, 6)] == [1, 2, 3, 4, 5]
    await lose(runtime.redis, log, run_id)

    # Ids 1..5 were seen: the log goes on above the block reserved for them (1..1000).
    assert await log.append(run_id, b"after") == 1001
    assert await log.append(run_id, b"end", terminal=True) == 1002
    resumed = await asyncio.wait_for(collect(log, run_id, 5), WAIT)
    assert [(e.event_id, e.payload) for e in resumed] == [(1001, b"after"), (1002, b"end")]
    from_start = await asyncio.wait_for(collect(log, run_id, 0), WAIT)
    assert [e.event_id for e in from_start] == [1001, 1002]
    assert [e.event_id for e in await log.read(run_id, 3)] == [1001, 1002]


async def test_a_watcher_following_when_the_log_is_lost_sees_no_id_twice(
    runtime: Runtime,
) -> None:
    log, run_id = durable_log(runtime), new_run()
    seen: list[RunEvent] = []
    three = asyncio.Event()

    async def watch() -> None:
        async for event in log.follow(run_id, 0):
            seen.append(event)
            if len(seen) == 3:
                three.set()

    watcher = asyncio.create_task(watch())
    for i in range(1, 4):
        await log.append(run_id, b"before %d" % i)
    await asyncio.wait_for(three.wait(), WAIT)
    await lose(runtime.redis, log, run_id)
    for i in range(1, 4):
        await log.append(run_id, b"after %d" % i, terminal=i == 3)
    await asyncio.wait_for(watcher, WAIT)

    ids = [e.event_id for e in seen]
    assert ids == [1, 2, 3, 1001, 1002, 1003]
    assert seen[-1].terminal and seen[-1].payload == b"after 3"


async def test_a_cursor_of_a_lost_log_waits_for_its_next_events(runtime: Runtime) -> None:
    log, run_id = durable_log(runtime), new_run()
    for i in range(1, 8):
        await log.append(run_id, b"e%d" % i)
    await lose(runtime.redis, log, run_id)

    # Nothing published since: a watcher at 7 waits (its run goes on), it is not refused.
    with pytest.raises(FollowIdle):
        await collect_idle(log, run_id, 7)
    assert await log.read(run_id, 7) == []
    # A cursor above every id the log ever reserved is still out of range.
    with pytest.raises(OutOfRange):
        await collect(log, run_id, 5000)

    waiting = asyncio.create_task(collect(log, run_id, 7))
    await log.append(run_id, b"end", terminal=True)
    assert [e.event_id for e in await asyncio.wait_for(waiting, WAIT)] == [1001]


async def collect_idle(log: RunEventLog, run_id: str, after: int) -> list[RunEvent]:
    return [event async for event in log.follow(run_id, after, idle_timeout=0.3)]


async def test_a_run_reserves_ids_once_per_block(runtime: Runtime) -> None:
    ceilings = EventIdCeilings(runtime.db, block=4)
    log = RunEventLog(runtime.redis, prefix="test:lost", ceilings=ceilings)
    short, long = new_run(), new_run()
    assert await log.append(short, b"one") == 1
    assert await ceilings.ceiling(short) == 4  # one block, reserved by the first event

    # Appenders racing over block boundaries still number 1..N with no gap.
    ids = await asyncio.gather(*(log.append(long, b"x") for _ in range(30)))
    assert sorted(ids) == list(range(1, 31))
    assert await ceilings.ceiling(long) >= 30
    assert [e.event_id for e in await log.read(long, 0)] == list(range(1, 31))


async def test_a_discarded_log_opens_again_from_one(runtime: Runtime) -> None:
    log, run_id = durable_log(runtime), new_run()
    assert await log.append(run_id, b"run_started", only_as=1) == 1
    await log.discard(run_id)  # the start was refused: the run never started
    assert await log.append(run_id, b"run_started", only_as=1) == 1


async def test_without_durable_ceilings_the_log_starts_again_from_one(runtime: Runtime) -> None:
    # What the ceilings are for: a plain log numbers a lost log's events from 1 again.
    log, run_id = RunEventLog(runtime.redis, prefix="test:lost"), new_run()
    for i in range(1, 4):
        await log.append(run_id, b"e%d" % i)
    await lose(runtime.redis, log, run_id)
    assert await log.append(run_id, b"again") == 1


async def test_runs_opened_at_once_reserve_their_first_ids_durably(runtime: Runtime) -> None:
    """Runs accepted together (`new_log`: their ids made by the caller) each open their log
    at id 1 with a ceiling of its own in PostgreSQL, so each one's ids outlive its loss."""
    ceilings = EventIdCeilings(runtime.db, block=4)
    log = RunEventLog(runtime.redis, prefix="test:lost", ceilings=ceilings)
    runs = [new_run() for _ in range(40)]
    opened = await asyncio.gather(
        *(log.publish(run, b"run_started", only_as=1, patience=0, new_log=True) for run in runs)
    )
    assert opened == [1] * len(runs)
    assert [await ceilings.ceiling(run) for run in runs] == [4] * len(runs)

    lost, kept = runs[0], runs[1]
    await lose(runtime.redis, log, lost)
    assert await log.append(lost, b"after") == 5  # above the block reserved as it opened
    # A log opened that way goes on through its blocks like any other.
    assert [await log.append(kept, b"x") for _ in range(6)] == [2, 3, 4, 5, 6, 7]
    assert await ceilings.ceiling(kept) == 8
    assert [e.event_id for e in await log.read(kept, 0)] == list(range(1, 8))


async def test_a_log_opened_as_new_that_had_ids_goes_on_above_them(runtime: Runtime) -> None:
    # A caller wrong about `new_log` (the log had a ceiling, and Redis lost it) costs no id.
    log, run_id = durable_log(runtime, block=4), new_run()
    assert [await log.append(run_id, b"e") for _ in range(3)] == [1, 2, 3]
    await lose(runtime.redis, log, run_id)
    assert await log.publish(run_id, b"again", patience=0, new_log=True) == 5


async def test_one_log_reserved_as_new_twice_at_once_gets_two_blocks(runtime: Runtime) -> None:
    ceilings, run_id = EventIdCeilings(runtime.db, block=4), new_run()
    reserved = await asyncio.gather(ceilings.reserve_new(run_id), ceilings.reserve_new(run_id))
    assert sorted(reserved) == [(4, True), (8, False)]
    assert await ceilings.ceiling(run_id) == 8
