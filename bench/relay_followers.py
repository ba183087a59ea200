"""Many streams followed in one process: the follower process's CPU per relayed event and the
events' lag, this checkout's `RunEventLog.follow` against another's (`--code`).

    .venv/bin/python bench/relay_followers.py --code <dir> [--runs 200] [--events 60]
        [--token-delay 0.02] [--rounds 3]

An embedded Valkey of its own. Per round, for each code (alternating): a follower process
(that code's `loomwork` on its path) starts following `--runs` fresh run logs at once, from
event 0, as a server does for as many open Streams; a publisher process (this checkout)
then appends `--events` events to each run, `--token-delay` s apart per run (a model's
chunks), the last one terminal. The follower process reports the CPU it used (user + system,
from its first follow to the last run's terminal event), that CPU per 1000 events, the
time its follows took to start (all of them opened), and each event's lag from its
append to its arrival (p50 / p99). Printed: each code's medians over the rounds, and the
ratio of this checkout's to the other's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAD = b"x" * 40  # a text delta's size, with the time stamp


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def follow_all(redis_url: str, prefix: str, runs: int, ready: Path) -> dict[str, float]:
    """The follower side (run in a process of its own, with the code under test first on
    the path): follow every run until its terminal event."""
    from redis.asyncio import Redis

    from loomwork.streams import RunEventLog

    redis = Redis.from_url(redis_url, socket_timeout=5)
    blocking = Redis.from_url(redis_url, socket_timeout=5, max_connections=5000)
    log = RunEventLog(redis, blocking_redis=blocking, prefix=prefix)
    lags: list[float] = []
    opened = 0
    all_open = asyncio.Event()

    async def follow(run: int) -> None:
        nonlocal opened
        stream = log.follow(f"r{run}", 0)
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        opened += 1
        if opened == runs:
            all_open.set()
        event = await first
        while True:
            lags.append(time.time() - float(event.payload[:20]))
            if event.terminal:
                return
            event = await anext(stream)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    tasks = [asyncio.create_task(follow(i)) for i in range(runs)]
    await all_open.wait()
    await asyncio.sleep(0.05)  # the first reads sent
    opened_after = time.perf_counter() - wall0
    await asyncio.to_thread(ready.write_text, "ready")
    await asyncio.gather(*tasks)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await redis.aclose()
    await blocking.aclose()
    return {
        "cpu": cpu,
        "wall": wall,
        "opened": opened_after,
        "events": len(lags),
        "lag_p50": percentile(lags, 50),
        "lag_p99": percentile(lags, 99),
    }


async def publish_all(redis_url: str, prefix: str, runs: int, events: int, delay: float) -> None:
    from redis.asyncio import Redis

    from loomwork.streams import RunEventLog

    redis = Redis.from_url(redis_url, max_connections=1000)
    log = RunEventLog(redis, prefix=prefix)

    async def publish(run: int) -> None:
        for i in range(1, events + 1):
            stamp = f"{time.time():<20.6f}".encode()
            await log.append(f"r{run}", stamp + PAD, terminal=i == events)
            await asyncio.sleep(delay)

    await asyncio.gather(*(publish(i) for i in range(runs)))
    await redis.aclose()


def one_round(code: Path, redis_url: str, args: argparse.Namespace, n: int) -> dict[str, float]:
    prefix = f"bench:relay:{os.getpid()}:{n}"
    with tempfile.TemporaryDirectory() as tmp:
        ready, out = Path(tmp) / "ready", Path(tmp) / "out.json"
        env = {**os.environ, "PYTHONPATH": str(code)}
        common = ["--redis", redis_url, "--prefix", prefix, "--runs", str(args.runs)]
        follower = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--role",
                "follow",
                *common,
                "--out",
                str(out),
                "--ready",
                str(ready),
            ],
            env=env,
            cwd=code,
        )
        while not ready.exists():
            if follower.poll() is not None:
                raise SystemExit("the follower process exited early")
            time.sleep(0.05)
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--role",
                "publish",
                *common,
                "--events",
                str(args.events),
                "--token-delay",
                str(args.token_delay),
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            check=True,
        )
        if follower.wait(300) != 0:
            raise SystemExit("the follower process failed")
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--role", choices=["bench", "follow", "publish"], default="bench")
    parser.add_argument("--code", type=Path, help="the other checkout (the baseline)")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--events", type=int, default=60)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default="")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--ready", type=Path)
    args = parser.parse_args()
    if args.role == "follow":
        result = asyncio.run(follow_all(args.redis, args.prefix, args.runs, args.ready))
        args.out.write_text(json.dumps(result))
        return
    if args.role == "publish":
        asyncio.run(publish_all(args.redis, args.prefix, args.runs, args.events, args.token_delay))
        return
    if args.code is None:
        raise SystemExit("--code <dir>: the checkout to compare with")
    sys.path.insert(0, str(ROOT))
    from server.embedded import EmbeddedStack

    home = Path(tempfile.mkdtemp(prefix="loomwork-relay-"))
    stack = EmbeddedStack(home, postgres=False, temporal=False, temporal_ui=False)
    redis_url = stack.start().redis_url or ""
    codes = {"this": ROOT, "other": args.code.resolve()}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in codes}
    print(f"{args.runs} runs x {args.events} events, {args.token_delay}s apart; other: {args.code}")
    print(f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    try:
        for n in range(args.rounds):
            order = list(codes) if n % 2 == 0 else list(reversed(codes))
            for name in order:
                result = one_round(codes[name], redis_url, args, n * 2 + order.index(name))
                results[name].append(result)
                print(
                    f"round {n + 1} {name:<5}: CPU {result['cpu']:.2f} s "
                    f"({1000 * result['cpu'] / result['events'] * 1000:.0f} ms / 1000 events), "
                    f"opened in {result['opened']:.3f} s, lag p50 {result['lag_p50'] * 1000:.1f}"
                    f" / p99 {result['lag_p99'] * 1000:.1f} ms, load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    finally:
        stack.stop()
    medians = {
        name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for name, rs in results.items()
    }
    for key, label in (("cpu", "CPU s"), ("lag_p50", "lag p50 s"), ("lag_p99", "lag p99 s")):
        this, other = medians["this"][key], medians["other"][key]
        print(f"median {label:<10}: this {this:.4f}, other {other:.4f}, ratio {this / other:.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
