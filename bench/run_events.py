"""Run event log throughput: RunEventLog append + follow vs raw XADD / XREAD, and the cost
of ids reserved durably in PostgreSQL (what lets ids outlive a lost log).

One producer appends N events (a 64-byte payload, the last one terminal) to a
fresh run while one follower, started first, reads them live until the
terminal event; events/s = N / wall time until the follower has them all.
The raw side does the same on one stream with auto ids (`XADD *`) and an
`XREAD BLOCK` loop, so the ratio is what RunEventLog adds: the Lua script
(dense ids, finished check, retention), id parsing and the event objects.
The durable side is RunEventLog with PostgreSQL id ceilings (as the server runs it: a
reservation on a run's first event and per 1000 events); its baseline is the plain log.
Short runs (`--short-runs` runs of `--short-events` events each, an answer's size, appended
one after another) show the one reservation each run makes, against the plain log.

    .venv/bin/python bench/run_events.py [--events 20000] [--rounds 3]

Starts an embedded Valkey and PostgreSQL in a temporary home unless REDIS_URL and
DATABASE_URL are set.
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

from loomwork.storage.database import Database
from loomwork.storage.event_ceilings import EventIdCeilings
from loomwork.storage.migrations import apply_migrations
from loomwork.streams import RunEventLog
from server.embedded import EmbeddedStack

PAYLOAD = b'{"type":"text_delta","delta":"' + b"x" * 31 + b'"}'  # 64 bytes


async def loomwork_round(log: RunEventLog, events: int) -> float:
    redis = log.redis
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


async def short_runs(log: RunEventLog, runs: int, events: int) -> float:
    """Seconds to append `runs` runs of `events` events each, one run after another."""
    started = time.perf_counter()
    for _ in range(runs):
        run_id = f"bench-{uuid.uuid4().hex}"
        for i in range(1, events + 1):
            await log.append(run_id, PAYLOAD, terminal=i == events)
    return time.perf_counter() - started


async def run(redis_url: str, database_url: str, args: argparse.Namespace) -> None:
    events, rounds = args.events, args.rounds
    redis = Redis.from_url(redis_url)
    db = Database(database_url)
    await db.open()
    try:
        await apply_migrations(db)
        plain = RunEventLog(redis, prefix="bench:run")
        durable = RunEventLog(redis, prefix="bench:run", ceilings=EventIdCeilings(db))
        for log in (plain, durable):  # warm up: script load, connections
            await loomwork_round(log, min(events, 1000))
        await raw_round(redis, min(events, 1000))
        ours, theirs, raw = [], [], []
        for _ in range(rounds):
            ours.append(await loomwork_round(durable, events))
            theirs.append(await loomwork_round(plain, events))
            raw.append(await raw_round(redis, events))
        short_durable, short_plain = [], []
        for _ in range(rounds):
            short_durable.append(await short_runs(durable, args.short_runs, args.short_events))
            short_plain.append(await short_runs(plain, args.short_runs, args.short_events))
    finally:
        await redis.aclose()
        await db.close()
    durable_rate, plain_rate = statistics.median(ours), statistics.median(theirs)
    raw_rate = statistics.median(raw)
    print(f"events per round: {events}, rounds: {rounds} (median shown)")
    print(f"RunEventLog, durable ids   : {durable_rate:10.0f} events/s")
    print(f"RunEventLog, plain         : {plain_rate:10.0f} events/s")
    print(f"raw XADD + XREAD BLOCK     : {raw_rate:10.0f} events/s")
    print(f"ratio (plain / raw)        : {plain_rate / raw_rate:10.2f}")
    print(f"ratio (durable / plain)    : {durable_rate / plain_rate:10.2f}")
    per_run = args.short_runs * args.short_events
    d, p = statistics.median(short_durable), statistics.median(short_plain)
    print(f"{args.short_runs} runs of {args.short_events} events, one after another:")
    print(f"  durable ids : {d * 1e6 / args.short_runs:8.0f} µs per run ({per_run / d:.0f} ev/s)")
    print(f"  plain       : {p * 1e6 / args.short_runs:8.0f} µs per run ({per_run / p:.0f} ev/s)")
    print(f"  ratio (durable / plain time): {d / p:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--short-runs", type=int, default=200)
    parser.add_argument("--short-events", type=int, default=20)
    args = parser.parse_args()
    redis_url, database_url = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
    if redis_url and database_url:
        asyncio.run(run(redis_url, database_url, args))
        return
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as home:
        stack = EmbeddedStack(Path(home), postgres=True, redis=True, temporal=False)
        endpoints = stack.start()
        try:
            assert endpoints.redis_url and endpoints.database_url
            asyncio.run(run(endpoints.redis_url, endpoints.database_url, args))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
