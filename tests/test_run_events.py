"""RunEventLog against a real Redis (Valkey): numbering, follow, resume, retention, errors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from loomwork.errors import FailedPrecondition, InvalidArgument, Unavailable
from loomwork.storage.event_ceilings import EventIdCeilings
from loomwork.streams import (
    DraftTaken,
    EventsExpired,
    FollowIdle,
    OutOfRange,
    RunEvent,
    RunEventLog,
)
from loomwork.streams.run_events import MAX_LATE_REPLIES

WAIT = 20.0  # generous upper bound for "this finishes", never a timing assertion


@pytest.fixture
async def redis(embedded: dict[str, str]) -> AsyncIterator[Redis]:
    client = Redis.from_url(embedded["REDIS_URL"])
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["plain", "durable ids"])
def log(redis: Redis, request: pytest.FixtureRequest) -> RunEventLog:
    """The log as tests alone use it, and as the server runs it (ids reserved in PostgreSQL:
    every behaviour here holds the same)."""
    ceilings = None
    if request.param == "durable ids":
        ceilings = EventIdCeilings(request.getfixturevalue("runtime").db)
    return RunEventLog(redis, prefix="test:run", retention_seconds=3600, ceilings=ceilings)


def new_run() -> str:
    return f"run-{uuid.uuid4().hex}"


def payload(n: int) -> bytes:
    return b"\x00\xff event %d" % n


async def collect(log: RunEventLog, run_id: str, after_id: int = 0, **kw: object) -> list[RunEvent]:
    return [event async for event in log.follow(run_id, after_id, **kw)]  # type: ignore[arg-type]


async def publish(log: RunEventLog, run_id: str, n: int, *, pause: float = 0.0) -> None:
    """Append events 1..n (payload(i)), the n-th terminal, yielding between them."""
    for i in range(1, n + 1):
        assert await log.append(run_id, payload(i), terminal=i == n) == i
        await asyncio.sleep(pause)


def assert_complete(events: list[RunEvent], first: int, last: int) -> None:
    assert [e.event_id for e in events] == list(range(first, last + 1))
    assert [e.payload for e in events] == [payload(i) for i in range(first, last + 1)]
    assert [e.terminal for e in events] == [False] * (last - first) + [True]


async def test_concurrent_appenders_get_gap_free_ids(log: RunEventLog) -> None:
    run_id = new_run()

    async def appender(worker: int) -> list[tuple[int, bytes]]:
        out = []
        for i in range(50):
            body = b"w%d-%d" % (worker, i)
            out.append((await log.append(run_id, body), body))
        return out

    results = await asyncio.gather(*(appender(w) for w in range(10)))
    assigned = {event_id: body for batch in results for event_id, body in batch}
    assert sorted(assigned) == list(range(1, 501))  # 500 distinct ids, no gap, no duplicate
    assert await log.last_id(run_id) == 500
    assert not await log.is_finished(run_id)

    stored: list[RunEvent] = []
    while batch := await log.read(run_id, stored[-1].event_id if stored else 0, count=200):
        stored.extend(batch)
    assert [e.event_id for e in stored] == list(range(1, 501))
    assert all(e.payload == assigned[e.event_id] for e in stored)


async def test_follow_from_start_gets_everything_then_stops(log: RunEventLog) -> None:
    run_id = new_run()
    await publish(log, run_id, 21)
    assert await log.is_finished(run_id)
    events = await asyncio.wait_for(collect(log, run_id), WAIT)
    assert_complete(events, 1, 21)


async def test_follower_started_mid_run_gets_the_rest(log: RunEventLog) -> None:
    run_id = new_run()
    for i in range(1, 11):
        await log.append(run_id, payload(i))
    follower = asyncio.create_task(collect(log, run_id, 4))
    await asyncio.sleep(0.05)
    for i in range(11, 31):
        await log.append(run_id, payload(i), terminal=i == 30)
        await asyncio.sleep(0)
    events = await asyncio.wait_for(follower, WAIT)
    assert_complete(events, 5, 30)


async def test_disconnect_and_resume_has_no_gap_and_no_duplicate(log: RunEventLog) -> None:
    run_id = new_run()
    producer = asyncio.create_task(publish(log, run_id, 60, pause=0.002))
    seen: list[RunEvent] = []
    for stop_after in (7, 13, 1):  # three disconnects at different points
        stream = log.follow(run_id, seen[-1].event_id if seen else 0)
        got = 0
        async for event in stream:
            seen.append(event)
            got += 1
            if got == stop_after:
                break
        await stream.aclose()  # type: ignore[attr-defined]
    seen.extend(await asyncio.wait_for(collect(log, run_id, seen[-1].event_id), WAIT))
    await producer
    assert_complete(seen, 1, 60)


async def test_concurrent_followers_all_see_everything(redis: Redis, log: RunEventLog) -> None:
    run_id = new_run()
    followers = [asyncio.create_task(collect(log, run_id)) for _ in range(5)]
    await asyncio.sleep(0.05)
    # Other commands on the same client keep working while the followers block.
    other = new_run()
    assert await log.append(other, b"x") == 1
    assert await redis.ping()
    await publish(log, run_id, 100, pause=0.001)
    for events in await asyncio.wait_for(asyncio.gather(*followers), WAIT):
        assert_complete(events, 1, 100)


async def test_blocked_follower_wakes_when_an_event_arrives(log: RunEventLog) -> None:
    run_id = new_run()
    follower = asyncio.create_task(collect(log, run_id, block_ms=600_000))
    await asyncio.sleep(0.2)  # let it block on a run with no events at all
    assert not follower.done()
    await log.append(run_id, payload(1), terminal=True)
    # Woken by the append: the follower's own wait would last ten minutes.
    events = await asyncio.wait_for(follower, WAIT)
    assert_complete(events, 1, 1)


async def test_terminal_event_sets_retention_on_both_keys(redis: Redis, log: RunEventLog) -> None:
    run_id = new_run()
    await log.append(run_id, payload(1))
    assert await redis.ttl(log.stream_key(run_id)) == -1  # kept while the run is active
    assert await redis.ttl(log.meta_key(run_id)) == -1
    await log.append(run_id, payload(2), terminal=True)
    for key in (log.stream_key(run_id), log.meta_key(run_id)):
        assert 0 < await redis.ttl(key) <= log.retention_seconds


async def test_after_id_beyond_last_is_out_of_range(log: RunEventLog) -> None:
    run_id = new_run()
    with pytest.raises(OutOfRange):
        await collect(log, run_id, 1)  # no events at all
    for i in range(1, 4):
        await log.append(run_id, payload(i))
    with pytest.raises(OutOfRange) as info:
        await collect(log, run_id, 5)
    assert info.value.last_id == 3
    with pytest.raises(OutOfRange):
        await log.read(run_id, 4)
    assert await log.read(run_id, 3) == []
    with pytest.raises(InvalidArgument):
        await log.read(run_id, -1)


async def test_finished_run_watched_from_its_end_ends_at_once(log: RunEventLog) -> None:
    run_id = new_run()
    await publish(log, run_id, 3)
    assert await asyncio.wait_for(collect(log, run_id, 3), WAIT) == []
    assert_complete(await asyncio.wait_for(collect(log, run_id, 2), WAIT), 3, 3)


async def test_append_after_terminal_is_failed_precondition(log: RunEventLog) -> None:
    run_id = new_run()
    await publish(log, run_id, 2)
    with pytest.raises(FailedPrecondition, match="finished"):
        await log.append(run_id, b"late")
    with pytest.raises(FailedPrecondition):
        await log.append(run_id, b"late", terminal=True)
    assert await log.last_id(run_id) == 2
    assert_complete(await log.read(run_id, 0), 1, 2)


async def test_idle_follower_raises_follow_idle(log: RunEventLog) -> None:
    run_id = new_run()
    await log.append(run_id, payload(1))
    events: list[RunEvent] = []
    with pytest.raises(FollowIdle):
        async for event in log.follow(run_id, 0, idle_timeout=0.3):
            events.append(event)
    assert [e.event_id for e in events] == [1]


async def test_block_is_cut_below_the_socket_timeout(embedded: dict[str, str]) -> None:
    client = Redis.from_url(embedded["REDIS_URL"], socket_timeout=0.5)
    try:
        log = RunEventLog(client, prefix="test:run")
        run_id = new_run()
        await log.append(run_id, payload(1))
        # block_ms above the socket timeout must not surface a redis TimeoutError.
        with pytest.raises(FollowIdle):
            await collect(log, run_id, 1, block_ms=5000, idle_timeout=1.0)
    finally:
        await client.aclose()


async def test_trimmed_events_are_reported_not_skipped(redis: Redis) -> None:
    log = RunEventLog(redis, prefix="test:run", max_events=10)
    run_id = new_run()
    for i in range(1, 1001):
        await log.append(run_id, payload(i))
    with pytest.raises(EventsExpired):
        await log.read(run_id, 0)
    with pytest.raises(EventsExpired):
        await collect(log, run_id, 0)
    tail = await log.read(run_id, 995)
    assert [e.event_id for e in tail] == list(range(996, 1001))


async def test_decoding_client_is_refused(embedded: dict[str, str]) -> None:
    client = Redis.from_url(embedded["REDIS_URL"], decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RunEventLog(client)
    finally:
        await client.aclose()


async def test_first_append_opens_a_log_once(log: RunEventLog) -> None:
    run_id = new_run()
    assert await log.append(run_id, payload(1), only_as=1) == 1
    # A second opener (a repeated call, a retried start) writes nothing.
    assert await log.append(run_id, payload(9), only_as=1) == 0
    assert await log.append(run_id, payload(2)) == 2
    assert [e.payload for e in await collect_until(log, run_id, 2)] == [payload(1), payload(2)]


async def test_append_only_as_a_given_id(log: RunEventLog) -> None:
    run_id = new_run()
    await log.append(run_id, payload(1))
    assert await log.append(run_id, payload(9), only_as=3) == 0  # it would be 2: nothing
    assert await log.append(run_id, payload(2), only_as=2) == 2
    assert await log.append(run_id, payload(9), only_as=2) == 0  # taken meanwhile: nothing
    assert [e.payload for e in await collect_until(log, run_id, 9)] == [payload(1), payload(2)]
    with pytest.raises(InvalidArgument, match="only_as"):
        await log.append(run_id, payload(3), only_as=-1)


async def test_discard_drops_a_log(log: RunEventLog) -> None:
    run_id = new_run()
    await log.append(run_id, payload(1))
    await log.discard(run_id)
    assert await log.last_id(run_id) == 0
    assert await log.append(run_id, payload(1), only_as=1) == 1


async def collect_until(log: RunEventLog, run_id: str, last: int) -> list[RunEvent]:
    return [e for e in await log.read(run_id, 0) if e.event_id <= last]


async def test_a_retried_terminal_publish_answers_the_id_stored_first(log: RunEventLog) -> None:
    """A run's terminal publish retried after it landed (its reply lost, its worker gone)
    answers the id the run ended with, which the run keeps; a late event is dropped."""
    run_id = new_run()
    assert await log.publish(run_id, payload(1)) == 1
    assert await log.publish(run_id, payload(2), terminal=True) == 2
    assert await log.publish(run_id, payload(2), terminal=True) == 2
    assert await log.publish(run_id, payload(3)) == 0
    assert [e.event_id for e in await log.read(run_id, 0)] == [1, 2]


async def test_workflow_runs_publish_through_the_retry_safe_path(log: RunEventLog) -> None:
    from loomwork.flows.execution import WorkflowEvents, event_log_key
    from loomwork.flows.state import RunFinished, RunStarted

    flows, run_id = WorkflowEvents(log), new_run()
    assert await flows.publish("t1", run_id, [RunFinished(status="succeeded")]) == 1
    assert await flows.publish("t1", run_id, [RunFinished(status="succeeded")]) == 1

    # A run's first events, handed to its first step: every attempt of the step publishes
    # them if still missing (an attempt whose publish failed), none publishes them twice.
    run_id = new_run()
    started = RunStarted(workflow_id="w", workflow_version="1", input={})
    assert await flows.publish("t1", run_id, [started], first=True) == 1
    assert await flows.publish("t1", run_id, [started], first=True) == 0
    assert [e.event_id for e in await log.read(event_log_key("t1", run_id), 0)] == [1]


async def test_an_event_said_once_is_published_once(log: RunEventLog) -> None:
    """A retried step publishing what it said already (`once`) adds nothing and learns the
    first one's id, during the run and after it ended."""
    run_id = new_run()
    assert await log.append(run_id, payload(1), once="step_finished:1") == 1
    assert await log.append(run_id, payload(2)) == 2
    assert await log.append(run_id, payload(1), once="step_finished:1") == 1
    assert await log.append(run_id, payload(3), once="step_finished:2") == 3
    assert await log.append(run_id, payload(4), terminal=True) == 4
    assert await log.publish(run_id, payload(3), once="step_finished:2") == 3
    assert [e.payload for e in await log.read(run_id, 0)] == [
        payload(1),
        payload(2),
        payload(3),
        payload(4),
    ]


async def test_a_draft_goes_in_until_it_is_taken_over_and_never_after(log: RunEventLog) -> None:
    """A draft's events (a step begun before its activity) interleave with no one: once taken
    over, its next event is refused and nothing is written; the taker learns whether any of
    the draft got in, to tell readers to discard it."""
    run_id = new_run()
    assert await log.append(run_id, payload(1)) == 1
    assert await log.append(run_id, payload(2), draft="step:1") == 2
    assert await log.publish(run_id, payload(3), draft="step:1") == 3
    assert await log.take_draft(run_id, "step:1") is True
    with pytest.raises(DraftTaken, match="step:1"):
        await log.publish(run_id, payload(9), draft="step:1")
    assert await log.append(run_id, payload(4)) == 4  # the taker's own events
    assert await log.take_draft(run_id, "step:1") is False  # taken already: nothing new got in
    assert [e.payload for e in await log.read(run_id, 0)] == [payload(i) for i in (1, 2, 3, 4)]

    # Taken before any of it got in: the taker has nothing to retract, and the draft none.
    other = new_run()
    assert await log.append(other, payload(1)) == 1
    assert await log.take_draft(other, "step:1") is False
    with pytest.raises(DraftTaken):
        await log.append(other, payload(2), draft="step:1")
    assert await log.last_id(other) == 1
    with pytest.raises(InvalidArgument, match="draft"):
        await log.take_draft(other, "")

    # A run that ended (cancelled before its activity took the draft) ends the draft too.
    ended = new_run()
    assert await log.append(ended, payload(1), draft="step:1") == 1
    assert await log.append(ended, payload(2), terminal=True) == 2
    with pytest.raises(DraftTaken):
        await log.publish(ended, payload(3), draft="step:1")
    assert await log.publish(ended, payload(3)) == 0  # a late event of the run's own: dropped


class _LateReplies:
    """A real Redis client whose next `late` blocking reads time out on the client side, as
    when the reply arrives after the socket gave up (found by the fuzz test under load)."""

    def __init__(self, client: Redis, late: int) -> None:
        self.client, self.late = client, late
        self.connection_pool = client.connection_pool

    async def xread(self, *args: object, **kwargs: object) -> object:
        if self.late > 0:
            self.late -= 1
            raise RedisTimeoutError("Timeout reading from 127.0.0.1")
        return await self.client.xread(*args, **kwargs)  # type: ignore[arg-type]


async def test_a_late_reply_to_a_blocking_read_is_read_again(
    redis: Redis, log: RunEventLog
) -> None:
    run_id = new_run()
    await publish(log, run_id, 3)
    log.blocking_redis = _LateReplies(redis, late=2)  # type: ignore[assignment]
    assert_complete(await collect(log, run_id), 1, 3)


async def test_redis_that_keeps_not_answering_is_unavailable(
    redis: Redis, log: RunEventLog
) -> None:
    run_id = new_run()
    await publish(log, run_id, 3)
    log.blocking_redis = _LateReplies(redis, late=MAX_LATE_REPLIES)  # type: ignore[assignment]
    with pytest.raises(Unavailable):
        await collect(log, run_id)
