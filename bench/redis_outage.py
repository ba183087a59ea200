"""How long a Redis outage agent runs outlive: runs streaming their answers when Valkey is
killed (SIGKILL), Valkey started again (same port, same data) after each outage length.

    .venv/bin/python bench/redis_outage.py [--runs 4] [--outages 10 60 180 300 420]

For each outage: `--runs` agent runs are started with Stream and read until their third
text delta; Valkey is killed; after the outage it is started again, and each run is read
from its first event with WatchRun. A run counts as outliving the outage when it SUCCEEDED
and its events are dense (1..N) with the answer streamed once (a `step_retrying` drops what
its step streamed before). Printed per outage: runs succeeded / failed, model calls per run
(a step that gave up on Redis is retried by Temporal, which calls the model again), and how
long after Redis came back the last run finished.

Starts embedded Postgres and Temporal in one temporary home and Valkey in another (not
watched, so the outage lasts as long as asked); the scripted model answers in-process,
streaming ~8 s per answer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripted_settings import scripted_settings

from loomwork.config import Settings
from loomwork.testing import ChatRequest, ScriptedModelServer, Turn
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from server.temporal import register_search_attributes
from server.transport.grpc_app import build_grpc_app
from server.worker import build_worker

AUTH = (("authorization", "Bearer bench"),)
ANSWER = " ".join(f"word{i}" for i in range(150))


def answer(request: ChatRequest) -> Turn:
    return Turn(text=ANSWER, chunk_size=8, chunk_delay=0.05)


def rebuilt_text(events: list[agent_pb2.AgentRunEvent]) -> str:
    by_step: dict[int, list[str]] = {}
    for event in events:
        if event.HasField("step_retrying"):
            by_step[event.step] = []
        elif event.HasField("text_delta"):
            by_step.setdefault(event.step, []).append(event.text_delta.text)
    return "".join("".join(parts) for _, parts in sorted(by_step.items()))


async def start_run(agents: agent_pb2_grpc.AgentServiceStub) -> str:
    """Start a run with Stream and read it until its third text delta; its run id."""
    stream = agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="go"), metadata=AUTH
    )
    deltas, run_id = 0, ""
    async for response in stream:
        run_id = response.event.run_id
        deltas += response.event.HasField("text_delta")
        if deltas == 3:
            break
    stream.cancel()
    return run_id


async def watch_to_end(
    agents: agent_pb2_grpc.AgentServiceStub, run_id: str, deadline: float
) -> tuple[list[agent_pb2.AgentRunEvent], float]:
    """Every event of the run (reconnecting while Redis answers UNAVAILABLE), and when the
    last one arrived."""
    events: list[agent_pb2.AgentRunEvent] = []
    while time.monotonic() < deadline:
        after = events[-1].event_id if events else 0
        request = agent_pb2.AgentServiceWatchRunRequest(run_id=run_id, after_event_id=after)
        try:
            async for response in agents.WatchRun(request, metadata=AUTH, timeout=60):
                if response.event.HasField("keep_alive"):  # not an event of the run
                    continue
                events.append(response.event)
                if response.event.HasField("run_finished") or response.event.HasField("run_failed"):
                    return events, time.monotonic()
        except grpc.aio.AioRpcError as error:
            if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            await asyncio.sleep(1.0)
    return events, time.monotonic()


async def one_outage(
    agents: agent_pb2_grpc.AgentServiceStub,
    valkey: EmbeddedStack,
    model: ScriptedModelServer,
    runs: int,
    outage: float,
) -> str:
    model.requests.clear()
    run_ids = await asyncio.gather(*(start_run(agents) for _ in range(runs)))
    os.kill(int((valkey.home / "valkey" / "valkey.pid").read_text()), signal.SIGKILL)
    await asyncio.to_thread(valkey.stop)
    await asyncio.sleep(outage)
    await asyncio.to_thread(valkey.start)
    back = time.monotonic()
    results = await asyncio.gather(
        *(watch_to_end(agents, run_id, back + 20 * 60) for run_id in run_ids)
    )
    succeeded = failed = 0
    problems: list[str] = []
    for run_id, (events, _) in zip(run_ids, results, strict=True):
        kind = events[-1].WhichOneof("event") if events else None
        dense = [e.event_id for e in events] == list(range(1, len(events) + 1))
        if not dense or kind not in ("run_finished", "run_failed"):
            problems.append(f"{run_id}: events dense: {dense}, last event: {kind}")
        elif (
            kind == "run_finished"
            and events[-1].run_finished.status == run_pb2.RUN_STATUS_SUCCEEDED
            and rebuilt_text(events) == ANSWER
        ):
            succeeded += 1
        elif kind == "run_failed":  # ended FAILED, its terminal event written
            failed += 1
        else:
            problems.append(f"{run_id}: the answer streamed does not rebuild the model's")
    latest = max(t for _, t in results) - back
    retries = statistics.mean(
        sum(e.HasField("step_retrying") for e in events) for events, _ in results
    )
    line = (
        f"{outage:6.0f} s | {succeeded}/{runs} succeeded, {failed} failed (run_failed) | "
        f"model calls/run {len(model.requests) / runs:.1f} | step_retrying/run {retries:.1f} | "
        f"last finished {latest:5.1f} s after Redis was back"
    )
    return line + "".join(f"\n         {p}" for p in problems)


async def run(
    settings: Settings,
    valkey: EmbeddedStack,
    model: ScriptedModelServer,
    runs: int,
    outages: list[float],
) -> None:
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    worker = build_worker(runtime, identity="bench-outage")
    worker_task = asyncio.create_task(worker.run())
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            agents = agent_pb2_grpc.AgentServiceStub(channel)
            print(f"runs per outage: {runs}; outage | outcome", flush=True)
            for outage in outages:
                print(await one_outage(agents, valkey, model, runs, outage), flush=True)
    finally:
        await app.stop(grace=1.0)
        await worker.shutdown()
        await worker_task
        await runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--outages", type=float, nargs="+", default=[10, 60, 180, 300, 420])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        stack = EmbeddedStack(Path(tmp) / "home", redis=False, temporal_ui=False)
        valkey = EmbeddedStack(
            Path(tmp) / "valkey", postgres=False, temporal=False, supervise=False
        )
        endpoints = stack.start()
        redis_url = valkey.start().redis_url
        model = ScriptedModelServer(answer)
        model_url = model.start_in_thread()
        try:
            settings = scripted_settings(endpoints, model_url).model_copy(
                update={
                    "redis_url": redis_url,
                    "task_queue": f"bench-outage-{uuid.uuid4().hex[:6]}",
                }
            )
            asyncio.run(run(settings, valkey, model, args.runs, args.outages))
        finally:
            model.stop_in_thread()
            valkey.stop()
            stack.stop()


if __name__ == "__main__":
    main()
