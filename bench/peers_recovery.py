"""The fourth column of bench/peers.py: a worker SIGKILLed mid-model-stream, and how soon the
run ends on another worker — Loomwork split (`loomwork server` + two `loomwork worker`) beside
the Pydantic AI and OpenAI Agents Temporal integrations (two worker processes each).

    .venv/bin/pip install -e '.[bench]'        # the peers (never a runtime dependency)
    .venv/bin/python bench/peers_recovery.py [--runs 5] [--rounds 2] [--systems ...]

Same embedded Temporal dev server, same scripted model (its own process), same `add` tool as
bench/peers.py. A run: the model calls `add`, the tool runs (its side effect: a line naming the
run in a file, bench/tool_calls_log.py), then the model streams its answer over ~2 s. Once the
client (this process) has the answer's first text, plus 0.3 s, the worker that Temporal names
on the pending model activity is SIGKILLed; the other worker is polling already. Measured from
the kill to the run's end: the client's stream ended and the workflow's result is in. Every run
must succeed with its tool run exactly once. The killed worker is started again (and polling)
before the next run. Baseline in the same round: the same run undisturbed, start → end.

Timeouts: each system's own, as shipped or as its docs show them —
- Loomwork: as shipped (the model step's heartbeat timeout 4 s, its retry policy; workers'
  sticky queue schedule-to-start timeout 2 s);
- Pydantic AI: `TemporalDurability`'s defaults: the model activity's heartbeat timeout 30 s
  (`_DEFAULT_MODEL_HEARTBEAT_TIMEOUT` in pydantic_ai/durable_exec/temporal/_durability.py),
  start-to-close 60 s, Temporal's default retry policy;
- OpenAI Agents: heartbeat timeout 10 s, start-to-close 5 min, from Temporal's streaming sample
  (temporalio/samples-python openai_agents/streaming/run_worker.py; the integration's own
  default is no heartbeat timeout, and its docs say to set one below start-to-close when
  streaming); Temporal's default retry policy.
The peers' workers keep the SDK's defaults (sticky queue schedule-to-start timeout 10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lost_workers import WorkerProcesses, worker_of_pending_activity
from peers import (
    AUTH,
    PEER_MODULES,
    RECOVERY_PROMPT,
    ROOT,
    Processes,
    Servers,
    free_port,
    load_average,
    servers_and_model,
)
from tool_calls_log import calls

from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2

BENCH = Path(__file__).resolve().parent
ALL_SYSTEMS = ["loomwork-split", "pydantic-ai", "openai-agents"]
ROUTINE_EVENTS = {
    "workflow_task_scheduled",
    "workflow_task_started",
    "workflow_task_completed",
    "workflow_execution_signaled",
    "workflow_execution_update_accepted",
    "workflow_execution_update_completed",
}
RUN_TIMEOUT = 300.0  # a run that has not ended by then counts as lost


@dataclass
class Run:
    """A run under way: its workflow, the name its tool records, and its end (the client's
    stream read to its end and the workflow's result in)."""

    handle: WorkflowHandle[Any, Any]
    tool_key: str
    done: asyncio.Task[None]


class System(Protocol):
    name: str
    queue: str
    client: Client
    workers: WorkerProcesses
    logs: list[Path]
    last_kill: tuple[WorkflowHandle[Any, Any], float]  # a killed run, and when (epoch s)

    async def start(self) -> None: ...
    async def begin(self, on_first_text: Callable[[], None]) -> Run: ...
    async def stop(self) -> None: ...


class LoomworkSplit:
    """`loomwork server` and two `loomwork worker` processes; this process a gRPC client."""

    name = "loomwork-split"
    queue = "loomwork"
    last_kill: tuple[WorkflowHandle[Any, Any], float]

    def __init__(self, endpoints: Servers, model_url: str, home: Path, tool_log: Path) -> None:
        self.address = endpoints.temporal_address
        self.port = free_port()
        self.env = dict(
            os.environ,
            DATABASE_URL=endpoints.database_url,
            REDIS_URL=endpoints.redis_url,
            TEMPORAL_ADDRESS=endpoints.temporal_address,
            LOOMWORK_HOME=str(home / self.name),
            LOOMWORK_GRPC_ADDRESS=f"127.0.0.1:{self.port}",
            LOOMWORK_TOKENS="bench=bench:admin",
            LOOMWORK_SECRET_KEY="bench-secret-key-0123456789",
            OPENAI_BASE_URL=model_url,
            OPENAI_API_KEY="x",
            LOOMWORK_CHAT_MODEL="scripted",
            LOOMWORK_DEMO="false",
            LOOMWORK_TOOL_MODULES="recovery_agent",  # `assistant` with one tool, `add`
            PYTHONPATH=os.pathsep.join([str(ROOT), str(BENCH)]),
            BENCH_TOOL_LOG=str(tool_log),
        )
        self.env.pop("LOOMWORK_HTTP_ADDRESS", None)  # each worker: a free port
        self.server = Processes(home / f"{self.name}-server.log")
        self.log = home / f"{self.name}-workers.log"
        self.channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        cli = [sys.executable, "-m", "server.cli"]
        http = {"LOOMWORK_HTTP_ADDRESS": f"127.0.0.1:{free_port()}"}
        self.server.spawn([*cli, "server"], self.env | http)
        self.workers = WorkerProcesses([*cli, "worker"], self.env, self.log, ROOT)
        self.client = await Client.connect(self.address)
        await self.workers.replace_lost(self.client, self.queue)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.agents = agent_pb2_grpc.AgentServiceStub(self.channel)
        await asyncio.wait_for(self.channel.channel_ready(), 120)
        self.logs = [self.server.log, self.log]

    async def begin(self, on_first_text: Callable[[], None]) -> Run:
        request = agent_pb2.StreamRequest(agent_name="assistant", prompt=RECOVERY_PROMPT)
        run_id: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def read() -> None:
            first, retried, status = True, False, ""
            stream = self.agents.Stream(request, metadata=AUTH, timeout=RUN_TIMEOUT)
            async for response in stream:
                event = response.event
                if not run_id.done():
                    run_id.set_result(event.run_id)
                if first and event.HasField("text_delta"):
                    first = False
                    on_first_text()
                retried = retried or event.HasField("step_retrying")
                if event.HasField("run_finished"):
                    status = run_pb2.RunStatus.Name(event.run_finished.status)
            if status != "RUN_STATUS_SUCCEEDED":
                raise RuntimeError(f"{self.name}: run ended {status or 'without its end'}")
            self.retried = retried
            await self.handle(run_id.result()).result()

        done = asyncio.create_task(read())
        either: list[asyncio.Future[Any]] = [run_id, done]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not run_id.done():
            done.result()  # raises why the stream ended with no event
        return Run(self.handle(run_id.result()), run_id.result(), done)

    def handle(self, run_id: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(f"agent/assistant/bench/{run_id}")

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        self.workers.stop()
        self.server.stop()


class PeerSystem:
    """A peer's two worker processes (bench/peers.py `--worker`); this process its client."""

    last_kill: tuple[WorkflowHandle[Any, Any], float]

    def __init__(
        self, name: str, endpoints: Servers, model_url: str, home: Path, tool_log: Path
    ) -> None:
        self.name = name
        self.module: Any = importlib.import_module(PEER_MODULES[name])
        self.address = endpoints.temporal_address
        self.queue = f"recovery-{name}"
        self.env = dict(
            os.environ,
            OPENAI_BASE_URL=model_url,
            OPENAI_API_KEY="x",
            OPENAI_AGENTS_DISABLE_TRACING="1",  # as in bench/peers.py
            BENCH_TOOL_LOG=str(tool_log),
        )
        self.args = [sys.executable, str(BENCH / "peers.py"), "--worker"]
        self.log = home / f"{name}-workers.log"
        self.logs = [self.log]

    async def start(self) -> None:
        os.environ.update(OPENAI_BASE_URL=self.env["OPENAI_BASE_URL"], OPENAI_API_KEY="x")
        self.client = await Client.connect(self.address, plugins=self.module.client_plugins())
        args = [*self.args, self.name, self.address, self.queue]
        self.workers = WorkerProcesses(args, self.env, self.log, ROOT)
        await self.workers.replace_lost(self.client, self.queue)

    async def begin(self, on_first_text: Callable[[], None]) -> Run:
        [workflow] = self.module.WORKFLOWS
        handle = await self.client.start_workflow(
            workflow.run,
            RECOVERY_PROMPT,
            id=f"{self.name}-{uuid.uuid4().hex[:12]}",
            task_queue=self.queue,
        )

        async def read() -> None:
            try:
                await self.module.stream(self.client, handle, on_first_text)
            except (RPCError, WorkflowQueryFailedError) as error:
                # A workflow task that tripped the sandbox's deadlock detector under load
                # fails the subscriber's poll (bench/peers.py); the run goes on.
                print(f"  {self.name}: run {handle.id}'s stream failed: {error}", flush=True)
            await handle.result()

        return Run(handle, handle.id, asyncio.create_task(read()))

    async def stop(self) -> None:
        self.workers.stop()


async def one_run(system: System, tool_log: Path, kill: bool) -> float | None:
    """Seconds from the SIGKILL (undisturbed: from the start) to the run's end; None if it
    did not end within RUN_TIMEOUT."""
    streaming = asyncio.Event()
    started = time.monotonic()
    run = await system.begin(streaming.set)
    if kill:
        waiter = asyncio.create_task(streaming.wait())
        await asyncio.wait({waiter, run.done}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if not streaming.is_set():
            waiter.cancel()
            raise RuntimeError(f"{system.name}: the run's answer did not stream")
        await asyncio.sleep(0.3)
        system.workers.lose(await worker_of_pending_activity(run.handle), signal.SIGKILL)
        started = time.monotonic()
        system.last_kill = (run.handle, time.time())
    try:
        await asyncio.wait_for(run.done, RUN_TIMEOUT)
    except TimeoutError:  # counted as lost; ended so that it holds no worker
        print(f"  {system.name}: run {run.handle.id} did not end in {RUN_TIMEOUT:.0f} s")
        await run.handle.terminate("the benchmark gave up on it")
        return None
    ended = time.monotonic()
    if (n := calls(tool_log, run.tool_key)) != 1:
        raise RuntimeError(f"{system.name}: the tool ran {n} times in run {run.handle.id}")
    if kill and isinstance(system, LoomworkSplit) and not system.retried:
        raise RuntimeError(f"{system.name}: the stream did not mark the retried step")
    return ended - started


@dataclass
class Figures:
    undisturbed: float
    killed: list[float]
    lost: int  # runs that did not end within RUN_TIMEOUT
    load: str
    timeline: str


async def timeline(system: System) -> str:
    """The last killed run's Temporal history from 1 s before the kill: seconds from the kill
    to each event but the routine ones (workflow tasks that went through, signals, updates:
    counted), with each activity start's attempt and worker pid."""
    handle, killed_at = system.last_kill
    lines, routine = [], 0
    async for event in handle.fetch_history_events():
        at = event.event_time.seconds + event.event_time.nanos / 1e9 - killed_at
        kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_").lower()
        if at < -1:
            continue
        if kind in ROUTINE_EVENTS:
            routine += 1
            continue
        if event.HasField("activity_task_started_event_attributes"):
            started = event.activity_task_started_event_attributes
            kind += f" (attempt {started.attempt}, pid {started.identity.split('@')[0]})"
        lines.append(f"    {at:+6.2f} s  {kind}")
    lines.append(f"    ({routine} workflow task, signal and update events besides)")
    return "\n".join(lines)


async def measure(system: System, tool_log: Path, runs: int) -> Figures:
    try:
        await system.start()
        await one_run(system, tool_log, kill=False)  # warm: the workers' first run
        load = load_average()
        undisturbed: list[float] = []
        killed: list[float] = []
        lost = 0
        for _ in range(runs):
            for kill, samples in ((False, undisturbed), (True, killed)):
                seconds = await one_run(system, tool_log, kill=kill)
                if seconds is None:
                    lost += 1
                else:
                    samples.append(seconds)
            await system.workers.replace_lost(system.client, system.queue)
        load = f"{load} → {load_average()}"
        median = statistics.median(undisturbed)
        return Figures(median, killed, lost, load, await timeline(system))
    except BaseException:
        for path in (p for p in getattr(system, "logs", []) if p.exists()):
            print(f"--- {path}:\n{path.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        await system.stop()


def table(rows: dict[str, Figures], peers: list[str]) -> None:
    def p50(f: Figures) -> float:  # a lost run counts as never ending
        return statistics.median(f.killed + [float("inf")] * f.lost)

    best = min((p50(rows[p]) for p in peers), default=float("nan"))
    print(
        f"  {'system':15s} {'SIGKILL → end p50':>18s} {'max':>7s} {'× best peer':>12s}"
        f" {'undisturbed':>12s}   samples (s); load (1/5/15 min, start → end)"
    )
    for name, f in rows.items():
        samples = " ".join(f"{s:.1f}" for s in f.killed) + (f", {f.lost} lost" if f.lost else "")
        worst = max(f.killed, default=0.0) if not f.lost else float("inf")
        print(
            f"  {name:15s} {p50(f):16.1f} s {worst:5.1f} s {p50(f) / best:11.2f}×"
            f" {f.undisturbed:10.1f} s   {samples}; {f.load}"
        )


async def bench(endpoints: Servers, model_url: str, home: Path, args: Any) -> None:
    tool_log = home / "tool-calls.log"
    systems: dict[str, Callable[[], System]] = {
        "loomwork-split": lambda: LoomworkSplit(endpoints, model_url, home, tool_log),
        "pydantic-ai": lambda: PeerSystem("pydantic-ai", endpoints, model_url, home, tool_log),
        "openai-agents": lambda: PeerSystem("openai-agents", endpoints, model_url, home, tool_log),
    }
    names: list[str] = args.systems
    peers = [n for n in names if n in PEER_MODULES]
    for round_no in range(args.rounds):
        order = names if round_no % 2 == 0 else list(reversed(names))
        rows: dict[str, Figures] = {}
        for name in order:
            rows[name] = await measure(systems[name](), tool_log, args.runs)
            figures = rows[name]
            print(f"  measured {name}: {figures.killed} s after SIGKILL, {figures.load}")
            print(f"  {name}: the last killed run's history from 1 s before the kill:")
            print(figures.timeline, flush=True)
        print(
            f"round {round_no + 1} ({' → '.join(order)}): worker SIGKILLed mid-stream, "
            f"{args.runs} runs each, kill → the run's end"
        )
        table({n: rows[n] for n in names}, peers)
    print(
        "  (× = over the best peer's p50 this round; every run that ended succeeded, its tool"
        f" run once; lost: not ended in {RUN_TIMEOUT:.0f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--systems", nargs="+", choices=ALL_SYSTEMS, default=ALL_SYSTEMS)
    args = parser.parse_args()
    with servers_and_model() as (endpoints, model_url, home):
        asyncio.run(bench(endpoints, model_url, home, args))


if __name__ == "__main__":
    main()
