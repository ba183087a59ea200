"""First-step notices told at one moment go to Redis together (one pipeline): each still
reaches its own worker's channel, and each teller hears whether a worker heard it; with Redis
unreachable every teller hears "not heard" (a real Redis behind a proxy the test breaks)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from loomwork.agents.first_step_routing import FirstStepNotice, FirstStepWorkers
from tests.redis_proxy import redis_proxy

WAIT = 30.0  # generous upper bound for "this finishes", never a timing assertion


@pytest.fixture
async def redis(embedded: dict[str, str]) -> AsyncIterator[Redis]:
    client = Redis.from_url(embedded["REDIS_URL"])
    try:
        yield client
    finally:
        await client.aclose()


async def test_notices_told_together_reach_their_workers(redis: Redis) -> None:
    workers = FirstStepWorkers(redis, f"q-{uuid.uuid4().hex[:8]}")
    listening, silent = f"w-{uuid.uuid4().hex[:8]}", f"w-{uuid.uuid4().hex[:8]}"
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(workers.channel(listening))
    try:
        keys = [f"log-{i}" for i in range(10)]
        told = await asyncio.wait_for(
            asyncio.gather(
                *(workers.tell(listening, FirstStepNotice(op="confirm", key=k)) for k in keys),
                workers.tell(silent, FirstStepNotice(op="abandon", key="nobody")),
            ),
            WAIT,
        )
        assert told == [True] * len(keys) + [False]
        heard: list[str] = []
        deadline = asyncio.get_running_loop().time() + WAIT
        while len(heard) < len(keys):  # None: nothing yet, or the subscription's own reply
            assert asyncio.get_running_loop().time() < deadline, f"heard only {heard}"
            message = await pubsub.get_message(timeout=1.0)
            if message is not None:
                heard.append(FirstStepNotice.model_validate_json(message["data"]).key)
        assert heard == keys  # in the order they were told
    finally:
        await pubsub.aclose()


async def test_with_redis_unreachable_no_notice_is_heard(embedded: dict[str, str]) -> None:
    async with redis_proxy(embedded["REDIS_URL"]) as proxy:
        client = Redis.from_url(proxy.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            workers = FirstStepWorkers(client, f"q-{uuid.uuid4().hex[:8]}")
            await proxy.down()
            told = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        workers.tell("w", FirstStepNotice(op="confirm", key=f"k{i}"))
                        for i in range(3)
                    )
                ),
                WAIT,
            )
            assert told == [False, False, False]
        finally:
            await client.aclose()
