"""Run event log throughput: RunEventLog append + follow vs raw XADD / XREAD.

One producer appends N events (a 64-byte payload, the last one terminal) to a
fresh run while one follower, started first, reads them live until the
terminal event; events/s = N / wall time until the follower has them all.
The raw side does the same on one stream with auto ids (`XADD *`) and an
`XREAD BLOCK` loop, so the ratio is what RunEventLog adds: the Lua script
(dense ids, finished check, retention), id parsing and the event objects.

    .venv/bin/python bench/run_events.py [--events 20000] [--rounds 3]

Starts an embedded Valkey in a temporary home unless REDIS_URL is set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loomwork.streams import RunEventLog
from server.embedded import EmbeddedStack

PAYLOAD = b'{"type":"text_delta","delta":"' + b"x" * 31 + b'"}'  # 64 bytes


async def loomwork_round(redis: Redis, events: int) -> float:
    log = RunEventLog(redis, prefix="bench:run")
    run_id = f"bench-{uuid.uuid4().hex}"

    async def follow() -> int:
        seen = 0
        async for _event in log.follow(run_id, 0):
            seen += 1
        return seen

    start = time.perf_counter()
    follower = asyncio.create_task(follow())
    for i in range(1, events + 1):
        await log.append(run_id, PAYLOAD, terminal=i == events)
    seen = await follower
    elapsed = time.perf_counter() - start
    assert seen == events, seen
    await redis.delete(log.stream_key(run_id), log.meta_key(run_id))
    return events / elapsed


async def raw_round(redis: Redis, events: int) -> float:
    stream = f"bench:raw:{uuid.uuid4().hex}"

    async def follow() -> int:
        seen, cursor = 0, b"0-0"
        while True:
            response: Any = await redis.xread({stream: cursor}, count=500, block=5000)
            if not response:
                continue
            for entry_id, fields in response[0][1]:
                seen += 1
                cursor = entry_id
                if fields[b"t"] == b"1":
                    return seen

    start = time.perf_counter()
    follower = asyncio.create_task(follow())
    for i in range(1, events + 1):
        await redis.xadd(stream, {"p": PAYLOAD, "t": "1" if i == events else "0"})
    seen = await follower
    elapsed = time.perf_counter() - start
    assert seen == events, seen
    await redis.delete(stream)
    return events / elapsed


async def run(redis_url: str, events: int, rounds: int) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await loomwork_round(redis, min(events, 1000))  # warm up: script load, connections
        await raw_round(redis, min(events, 1000))
        ours, raw = [], []
        for _ in range(rounds):
            ours.append(await loomwork_round(redis, events))
            raw.append(await raw_round(redis, events))
    finally:
        await redis.aclose()
    ours_rate, raw_rate = statistics.median(ours), statistics.median(raw)
    print(f"events per round: {events}, rounds: {rounds} (median shown)")
    print(f"RunEventLog append+follow : {ours_rate:10.0f} events/s")
    print(f"raw XADD + XREAD BLOCK    : {raw_rate:10.0f} events/s")
    print(f"ratio (RunEventLog / raw) : {ours_rate / raw_rate:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if url := os.environ.get("REDIS_URL"):
        asyncio.run(run(url, args.events, args.rounds))
        return
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as home:
        stack = EmbeddedStack(Path(home), postgres=False, redis=True, temporal=False)
        endpoints = stack.start()
        try:
            assert endpoints.redis_url
            asyncio.run(run(endpoints.redis_url, args.events, args.rounds))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
