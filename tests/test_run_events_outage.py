"""RunEventLog when Redis fails (a real Redis behind a proxy the test breaks): an append whose
reply was lost and is sent again is stored once, and a take-over sent again answers as the
first did; `publish` waits out an outage shorter than its patience and then says
Unavailable; reads say Unavailable, never a Redis error."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from loomwork.errors import Unavailable
from loomwork.streams import RunEventLog
from tests.redis_proxy import RedisProxy, redis_proxy

WAIT = 30.0  # generous upper bound for "this finishes", never a timing assertion


@pytest.fixture
async def proxy(embedded: dict[str, str]) -> AsyncIterator[RedisProxy]:
    async with redis_proxy(embedded["REDIS_URL"]) as running:
        yield running


@pytest.fixture
async def direct(embedded: dict[str, str]) -> AsyncIterator[RunEventLog]:
    """The log read straight from Redis, past the proxy."""
    client = Redis.from_url(embedded["REDIS_URL"])
    try:
        yield RunEventLog(client, prefix="test:outage")
    finally:
        await client.aclose()


@pytest.fixture
async def client(proxy: RedisProxy) -> AsyncIterator[Redis]:
    redis = Redis.from_url(proxy.url, socket_timeout=2, socket_connect_timeout=1)
    try:
        yield redis
    finally:
        await redis.aclose()


def new_run() -> str:
    return f"run-{uuid.uuid4().hex}"


async def payloads(log: RunEventLog, run_id: str) -> list[bytes]:
    return [event.payload for event in await log.read(run_id, 0)]


async def test_an_append_sent_again_after_its_reply_was_lost_is_stored_once(
    proxy: RedisProxy, client: Redis, direct: RunEventLog
) -> None:
    log = RunEventLog(client, prefix="test:outage")
    run_id = new_run()
    assert await log.publish(run_id, b"one") == 1
    proxy.drop_next_reply()  # Redis runs the append; publish never hears back, sends again
    assert await log.publish(run_id, b"two") == 2
    proxy.drop_next_reply()
    assert await log.publish(run_id, b"end", terminal=True) == 3
    assert proxy.replies_dropped == 2
    assert await payloads(direct, run_id) == [b"one", b"two", b"end"]
    assert await direct.is_finished(run_id)


async def test_a_take_over_sent_again_after_its_reply_was_lost_says_what_it_found(
    proxy: RedisProxy, client: Redis
) -> None:
    log = RunEventLog(client, prefix="test:outage")
    run_id = new_run()
    assert await log.publish(run_id, b"started") == 1
    assert await log.publish(run_id, b"a draft's text", draft="step:1") == 2
    proxy.drop_next_reply()  # Redis takes the draft over; the answer is lost, asked again
    assert await log.take_draft(run_id, "step:1") is True  # the draft had events
    assert proxy.replies_dropped == 1
    assert await log.take_draft(run_id, "step:1") is False  # another take: nothing new


async def test_publish_waits_out_an_outage_shorter_than_its_patience(
    proxy: RedisProxy, client: Redis, direct: RunEventLog
) -> None:
    log = RunEventLog(client, prefix="test:outage", write_patience=WAIT)
    run_id = new_run()
    assert await log.publish(run_id, b"before") == 1
    await proxy.down()
    publishing = asyncio.create_task(log.publish(run_id, b"during"))
    await asyncio.sleep(2.0)
    assert not publishing.done()
    await proxy.up()
    assert await asyncio.wait_for(publishing, WAIT) == 2
    assert await payloads(direct, run_id) == [b"before", b"during"]


async def test_publish_gives_up_after_its_patience_and_reads_are_unavailable(
    proxy: RedisProxy, client: Redis, direct: RunEventLog
) -> None:
    log = RunEventLog(client, prefix="test:outage", write_patience=1.0)
    run_id = new_run()
    assert await log.publish(run_id, b"before") == 1
    following = asyncio.create_task(anext(aiter(log.follow(run_id, 1))))
    await asyncio.sleep(0.3)  # the follower waits on Redis
    await proxy.down()
    started = time.monotonic()
    with pytest.raises(Unavailable, match="gave up after"):
        await asyncio.wait_for(log.publish(run_id, b"lost"), WAIT)
    assert time.monotonic() - started >= 1.0
    with pytest.raises(Unavailable, match="Redis is unreachable"):
        await asyncio.wait_for(following, WAIT)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(log.read(run_id, 0), WAIT)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(log.last_id(run_id), WAIT)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(log.append(run_id, b"lost too"), WAIT)
    await proxy.up()
    assert await payloads(direct, run_id) == [b"before"]  # nothing half-written
    assert await log.publish(run_id, b"after") == 2
