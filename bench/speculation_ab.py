"""Time to first delta with and without the speculative first step, A/B in one run.

    .venv/bin/python bench/speculation_ab.py [--runs 60] [--rounds 2]

Two services in one process on the same embedded servers, each with its own worker and task
queue: A begins a run's first step as it starts the run (`LOOMWORK_SPECULATIVE_FIRST_STEP`,
the default), B does not. Idle `Stream` calls alternate between them (which goes first
alternates too), each measured by a caller in a process of its own, as in
`agent_generate.py`; the model's own first delta is measured in between. On a machine whose
speed drifts, this pairing is what makes the two comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import agent_generate as bench  # a script next to this one

from loomwork.config import Settings
from server.runtime import Runtime
from server.temporal import register_search_attributes
from server.transport.grpc_app import GrpcApp, build_grpc_app
from server.worker import build_worker


async def _service(settings: Settings) -> tuple[Runtime, GrpcApp]:
    runtime = await Runtime.open(settings)
    app = build_grpc_app(runtime, "127.0.0.1:0")
    return runtime, app


async def run(settings: Settings, model_url: str, runs: int) -> None:
    on = settings.model_copy(update={"speculative_first_step": True})
    off = settings.model_copy(
        update={"speculative_first_step": False, "task_queue": "loomwork-bench-off"}
    )
    ra, app_a = await _service(on)
    await register_search_attributes(ra.temporal, settings.temporal_namespace)
    rb, app_b = await _service(off)
    await app_a.start()
    await app_b.start()
    async with build_worker(ra), build_worker(rb):
        ca = await bench.Caller.start(app_a.port, model_url)
        cb = await bench.Caller.start(app_b.port, model_url)
        for _ in range(5):  # warm both
            await ca.ask("stream")
            await cb.ask("stream")
        a: list[float] = []
        b: list[float] = []
        model: list[float] = []
        for i in range(runs):
            order = [(ca, a), (cb, b)] if i % 2 == 0 else [(cb, b), (ca, a)]
            for caller, samples in order:
                samples.append((await caller.ask("stream"))[0])
                await asyncio.sleep(bench.IDLE_PAUSE)
            model.append((await ca.ask("model"))[0])
            await asyncio.sleep(bench.IDLE_PAUSE)
        await ca.close()
        await cb.close()
    await app_a.stop(0)
    await app_b.stop(0)
    await ra.close()
    await rb.close()
    p50 = statistics.median
    paired = statistics.mean(y - x for x, y in zip(a, b, strict=True))
    print(
        f"  first delta p50: speculative {p50(a):5.1f} ms, without {p50(b):5.1f} ms"
        f" ({p50(b) - p50(a):+.1f} ms; mean of pairs {paired:+.1f}); model's own"
        f" {p50(model):4.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with bench.bench_setup() as (settings, model_url):
        print(f"idle Stream calls, {args.runs} on each service per round")
        for _ in range(args.rounds):
            asyncio.run(run(settings, model_url, args.runs))


if __name__ == "__main__":
    main()
