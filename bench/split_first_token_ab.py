"""First token in a split deployment with and without its first steps routed to a worker,
A/B in one run (loomwork.agents.first_step_routing).

    .venv/bin/python bench/split_first_token_ab.py [--runs 40] [--rounds 2]

Two split deployments (`loomwork server` + `loomwork worker`, each on a task queue of its
own) on the same embedded servers and the same scripted model (its own process, as in
bench/peers.py): A with LOOMWORK_SPECULATIVE_FIRST_STEP on (the default: the server has its
worker begin a run's first step as it starts the run), B with it off (the first model call
waits for Temporal to start the run and hand its first activity to the worker). Streamed
runs answered at once alternate between A and B (which goes first alternates too), each
timed from the call to its first text delta at the client (this process); the model's own
first delta is measured in between. On a machine whose load drifts, the pairing is what
makes A and B comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peers import TEXT_PROMPT, Loomwork, Servers, load_average, model_first_token, servers_and_model

IDLE_PAUSE = 0.1  # between calls: each is an idle call, not one of a burst


def deployment(endpoints: Servers, model_url: str, home: Path, routed: bool) -> Loomwork:
    """A split deployment of its own (home, task queue, log), first steps routed or not."""
    name = "split-routed" if routed else "split-unrouted"
    system = Loomwork(endpoints, model_url, home, split=True)
    system.name = name
    system.env.update(
        LOOMWORK_HOME=str(home / name),
        LOOMWORK_TASK_QUEUE=f"bench-{name}",
        LOOMWORK_SPECULATIVE_FIRST_STEP="true" if routed else "false",
    )
    system.processes.log = home / f"{name}.log"
    return system


async def first_text_ms(system: Loomwork) -> float:
    seen: list[float] = []
    started = time.perf_counter()
    await system.run(TEXT_PROMPT, lambda: seen.append(time.perf_counter()))
    return (seen[0] - started) * 1000


async def one_round(endpoints: Servers, model_url: str, home: Path, runs: int) -> None:
    a = deployment(endpoints, model_url, home, routed=True)
    b = deployment(endpoints, model_url, home, routed=False)
    try:
        await a.start()
        await b.start()
        for _ in range(5):  # warm both
            await first_text_ms(a)
            await first_text_ms(b)
        load = load_average()
        samples: dict[str, list[float]] = {"a": [], "b": []}
        model: list[float] = []
        for i in range(runs):
            order = [("a", a), ("b", b)] if i % 2 == 0 else [("b", b), ("a", a)]
            for key, system in order:
                samples[key].append(await first_text_ms(system))
                await asyncio.sleep(IDLE_PAUSE)
            if i % 5 == 0:
                model.append(await model_first_token(model_url, 1))
        load = f"{load} → {load_average()}"
    finally:
        await a.stop()
        await b.stop()
    p50 = statistics.median
    own = p50(model)
    paired = statistics.mean(y - x for x, y in zip(samples["a"], samples["b"], strict=True))
    print(
        f"  first delta p50: routed {p50(samples['a']):5.1f} ms ({p50(samples['a']) - own:+.1f}"
        f" over the model), unrouted {p50(samples['b']):5.1f} ms"
        f" ({p50(samples['b']) - own:+.1f}); routed sooner by"
        f" {p50(samples['b']) - p50(samples['a']):.1f} ms (mean of pairs {paired:.1f});"
        f" model's own {own:.1f} ms; load {load}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.pop("LOOMWORK_SPECULATIVE_FIRST_STEP", None)
    with servers_and_model() as (endpoints, model_url, home):
        print(f"idle Stream calls to split deployments, {args.runs} on each per round")
        for _ in range(args.rounds):
            asyncio.run(one_round(endpoints, model_url, home, args.runs))


if __name__ == "__main__":
    main()
