"""Loomwork beside the Temporal integrations of Pydantic AI and the OpenAI Agents SDK: the same
embedded Temporal dev server, the same scripted model, the same `add` tool.

    .venv/bin/pip install -e '.[bench]'        # the peers (never a runtime dependency)
    .venv/bin/python bench/peers.py [--runs 20] [--rounds 2] [--systems ...]

Systems: `loomwork-up` (`loomwork up` against the embedded servers: gRPC server and worker in
one process), `loomwork-split` (`loomwork server` and `loomwork worker`, two processes),
`pydantic-ai` (bench/peer_pydantic_ai.py) and `openai-agents` (bench/peer_openai_agents.py),
each peer's worker in a process of its own. The benchmark process is the client of all:
gRPC for Loomwork, a Temporal client with the peer's plugin for the peers. Every run is a
streaming run read to its end by the client, as a chat UI would (Pydantic AI's run also waits
for its subscriber to take the last event).

Columns, per system and round (one system at a time, the order reversed each round):
- one run with one tool call, p50: the model calls `add`, then answers; from the start to
  the end of the streamed run, `--runs` runs one after another;
- first token: a run answered with text at once (no tool), from the start to the first text
  delta the client receives, over the model's own first delta (called directly, p50);
- runs/s with 10 and with 50 in flight: 3× that many tool runs, that many at a time.
Ratios: each system's figure over the best peer's (Pydantic AI or OpenAI Agents) of the same
round. The fourth column, a worker SIGKILLed mid-stream, is bench/peers_recovery.py (it uses
this script's model and peers' workers). Event counts of one tool run's Temporal history are
printed per system: workflow tasks, activities, signals, events.

Starts embedded Postgres, Valkey and Temporal in a temporary home; the scripted model runs in
a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loomwork.testing import ChatRequest, Delay, ScriptedModelServer, ScriptedToolCall, Turn
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from server.embedded import EmbeddedStack

ROOT = Path(__file__).resolve().parent.parent
TOOL_PROMPT = "add 2 and 3"
TEXT_PROMPT = "hi"
# bench/peers_recovery.py: the tool run whose answer streams for ~2 s (80 words, 30 ms apart)
RECOVERY_PROMPT = "add 2 and 3, then say more"
SLOW_ANSWER = " ".join(f"word{i}" for i in range(80))
MODEL_DELAY = 0.02  # the scripted model's own time to its first chunk
AUTH = (("authorization", "Bearer bench"),)
PEER_MODULES = {"pydantic-ai": "peer_pydantic_ai", "openai-agents": "peer_openai_agents"}
ALL_SYSTEMS = ["loomwork-up", "loomwork-split", "pydantic-ai", "openai-agents"]


@dataclass(frozen=True)
class Servers:
    """The embedded stack's servers, every one started."""

    database_url: str
    redis_url: str
    temporal_address: str


# --- the scripted model --------------------------------------------------------------------


def script(request: ChatRequest) -> Delay:
    """Tool prompts: call `add`, then answer once its result is back (slowly for the recovery
    prompt); else answer at once."""
    prompt = request.last_user_text
    if request.tool_results and prompt == RECOVERY_PROMPT:
        return Delay(MODEL_DELAY, Turn(text=SLOW_ANSWER, chunk_size=8, chunk_delay=0.03))
    if request.tool_results:
        return Delay(MODEL_DELAY, Turn(text="The sum is 5.", chunk_size=4))
    if prompt in (TOOL_PROMPT, RECOVERY_PROMPT) and "add" in request.tool_names:
        call = ScriptedToolCall(name="add", arguments={"numbers": [2, 3]})
        return Delay(MODEL_DELAY, Turn(tool_calls=[call]))
    return Delay(MODEL_DELAY, Turn(text="Hello! How can I help you today?", chunk_size=4))


def serve_model() -> None:
    """`--serve-model`: the scripted model in this process until stdin closes."""
    model = ScriptedModelServer(script)
    print(model.start_in_thread(), flush=True)
    sys.stdin.read()
    model.stop_in_thread()


async def model_first_token(model_url: str, runs: int) -> float:
    """p50 ms to the model's own first text delta, streamed by one kept-alive client."""
    import openai

    client = openai.AsyncOpenAI(base_url=model_url, api_key="x")
    samples = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        stream = await client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": TEXT_PROMPT}], stream=True
        )
        first = 0.0
        async for chunk in stream:
            if not first and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
        samples.append((first - started) * 1000)
    await client.close()
    return statistics.median(samples[1:])


# --- the systems ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Processes:
    """Child processes of one system, logging to one file."""

    log: Path
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, args: list[str], env: dict[str, str]) -> None:
        self.children.append(
            subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT
            )
        )

    def tail(self) -> str:
        return f"--- {self.log}:\n" + self.log.read_text(errors="replace")[-3000:]

    def check(self) -> None:
        for child in self.children:
            if child.poll() is not None:
                raise RuntimeError(f"{child.args!r} exited ({child.returncode}):\n{self.tail()}")

    def stop(self) -> None:
        for child in self.children:
            child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
        self.children.clear()


class System(Protocol):
    name: str
    processes: Processes

    async def start(self) -> None: ...
    async def run(self, prompt: str, on_first_text: Callable[[], None]) -> str:
        """One streamed run read to its end; returns its Temporal workflow id."""
        ...

    async def stop(self) -> None: ...


class Loomwork:
    """`loomwork up` (one process), or `loomwork server` + `loomwork worker` (`split`)."""

    def __init__(self, endpoints: Servers, model_url: str, home: Path, split: bool) -> None:
        self.name = "loomwork-split" if split else "loomwork-up"
        self.split = split
        self.port = free_port()
        self.env = dict(
            os.environ,
            DATABASE_URL=endpoints.database_url,
            REDIS_URL=endpoints.redis_url,
            TEMPORAL_ADDRESS=endpoints.temporal_address,
            LOOMWORK_HOME=str(home / self.name),  # not the embedded stack's own home
            LOOMWORK_GRPC_ADDRESS=f"127.0.0.1:{self.port}",
            LOOMWORK_TOKENS="bench=bench:admin",
            LOOMWORK_SECRET_KEY="bench-secret-key-0123456789",
            OPENAI_BASE_URL=model_url,
            OPENAI_API_KEY="x",
            LOOMWORK_CHAT_MODEL="scripted",
            LOOMWORK_DEMO="true",  # the `assistant` agent and its `add` tool
        )
        self.processes = Processes(home / f"{self.name}.log")
        self.channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        cli = [sys.executable, "-m", "server.cli"]
        http = {"LOOMWORK_HTTP_ADDRESS": f"127.0.0.1:{free_port()}"}
        if self.split:
            self.processes.spawn([*cli, "server"], self.env | http)
            other = {"LOOMWORK_HTTP_ADDRESS": f"127.0.0.1:{free_port()}"}
            self.processes.spawn([*cli, "worker"], self.env | other)
        else:
            self.processes.spawn([*cli, "up", "--no-ui"], self.env | http)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.agents = agent_pb2_grpc.AgentServiceStub(self.channel)
        for _ in range(1200):
            self.processes.check()
            try:
                await self.run(TEXT_PROMPT, lambda: None)
                return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.25)
        raise RuntimeError(f"{self.name} did not answer")

    async def run(self, prompt: str, on_first_text: Callable[[], None]) -> str:
        request = agent_pb2.StreamRequest(agent_name="assistant", prompt=prompt)
        first, run_id, status = True, "", ""
        async for response in self.agents.Stream(request, metadata=AUTH, timeout=60):
            event = response.event
            run_id = run_id or event.run_id
            if first and event.HasField("text_delta"):
                first = False
                on_first_text()
            if event.HasField("run_finished"):
                status = run_pb2.RunStatus.Name(event.run_finished.status)
            if event.HasField("run_failed"):
                status = f"failed: {event.run_failed.message}"
        if status != "RUN_STATUS_SUCCEEDED" or first:
            raise RuntimeError(f"{self.name}: run {run_id} ended {status}, text: {not first}")
        return f"agent/assistant/bench/{run_id}"

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        self.processes.stop()


class Peer:
    """A peer's worker in a process of its own (`--worker NAME`); this process its client."""

    def __init__(self, name: str, endpoints: Servers, model_url: str, home: Path):
        self.name = name
        self.module: Any = importlib.import_module(PEER_MODULES[name])
        self.address = endpoints.temporal_address
        self.queue = f"bench-{name}"
        # No tracing export: the Agents SDK sends traces to OpenAI unless told not to (its docs,
        # for other providers than OpenAI); here they would fail and retry in the background.
        self.env = dict(
            os.environ,
            OPENAI_BASE_URL=model_url,
            OPENAI_API_KEY="x",
            OPENAI_AGENTS_DISABLE_TRACING="1",
        )
        self.processes = Processes(home / f"{name}.log")
        self.client: Client | None = None
        self.stream_errors = 0

    async def start(self) -> None:
        os.environ.update(OPENAI_BASE_URL=self.env["OPENAI_BASE_URL"], OPENAI_API_KEY="x")
        self.client = await Client.connect(self.address, plugins=self.module.client_plugins())
        self.processes.spawn(
            [sys.executable, __file__, "--worker", self.name, self.address, self.queue], self.env
        )
        for attempt in range(3):  # once its worker polls; under load its first workflow task
            try:  # (importing the agent's modules in the sandbox) may fail once and be retried
                await self.run(TEXT_PROMPT, lambda: None)
                return
            except RPCError:
                if attempt == 2:
                    raise

    async def run(self, prompt: str, on_first_text: Callable[[], None]) -> str:
        assert self.client is not None
        [workflow] = self.module.WORKFLOWS
        handle = await self.client.start_workflow(
            workflow.run,
            prompt,
            id=f"{self.name}-{uuid.uuid4().hex[:12]}",
            task_queue=self.queue,
        )
        try:
            await self.module.stream(self.client, handle, on_first_text)
        except (RPCError, WorkflowQueryFailedError):
            # Under load a workflow task can trip the sandbox's deadlock detector (2 s); the
            # run goes on when Temporal retries the task, but a subscriber's poll fails.
            self.stream_errors += 1
        # A workflow task that keeps failing would hold the run forever: give up after 2 min.
        await asyncio.wait_for(handle.result(), 120)
        return handle.id

    async def stop(self) -> None:
        if self.stream_errors:
            print(f"  {self.name}: {self.stream_errors} runs' streams failed", flush=True)
        self.processes.stop()


async def serve_worker(name: str, address: str, queue: str) -> None:
    """`--worker NAME ADDRESS QUEUE`: the peer's Temporal worker, until SIGTERM."""
    from temporalio.worker import Worker

    module: Any = importlib.import_module(PEER_MODULES[name])
    getattr(module, "prepare_worker", lambda: None)()
    client = await Client.connect(address, plugins=module.client_plugins())
    worker = Worker(
        client,
        task_queue=queue,
        workflows=module.WORKFLOWS,
        activities=getattr(module, "ACTIVITIES", []),
        plugins=module.worker_plugins(),
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with worker:
        await stop.wait()


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Figures:
    latency_ms: float
    first_token_ms: float
    rate_10: float
    rate_50: float
    load: str


async def timed_runs(system: System, prompt: str, runs: int) -> tuple[list[float], list[float]]:
    """ms of each run, start to end, and to its first text."""
    whole, first = [], []
    for _ in range(runs):
        started = time.perf_counter()
        seen: list[float] = []

        def on_first_text(seen: list[float] = seen) -> None:
            seen.append(time.perf_counter())

        await system.run(prompt, on_first_text)
        whole.append((time.perf_counter() - started) * 1000)
        first.append((seen[0] - started) * 1000)
    return whole, first


async def rate(system: System, in_flight: int) -> float:
    """Tool runs per second, `in_flight` at a time, 3 × in_flight runs."""
    gate = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with gate:
            await system.run(TOOL_PROMPT, lambda: None)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(3 * in_flight)))
    return 3 * in_flight / (time.perf_counter() - started)


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


async def measure(system: System, runs: int, model_ms: float) -> tuple[Figures, str]:
    try:
        await system.start()
        load = load_average()
        await timed_runs(system, TOOL_PROMPT, 2)  # warm
        whole, _ = await timed_runs(system, TOOL_PROMPT, runs)
        _, first = await timed_runs(system, TEXT_PROMPT, runs)
        r10 = await rate(system, 10)
        r50 = await rate(system, 50)
        workflow_id = await system.run(TOOL_PROMPT, lambda: None)
        load = f"{load} → {load_average()}"
    except BaseException:
        print(system.processes.tail(), file=sys.stderr)
        raise
    finally:
        await system.stop()
    figures = Figures(statistics.median(whole), statistics.median(first), r10, r50, load)
    return figures, workflow_id


async def history_counts(client: Client, workflow_id: str) -> str:
    """Workflow tasks, activities, signals and events of one run's Temporal history."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    kinds = [e.event_type for e in history.events]
    tasks = kinds.count(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    activities = kinds.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    signals = kinds.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
    updates = kinds.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)
    return (
        f"{tasks} workflow tasks, {activities} activities, {signals} signals, "
        f"{updates} updates, {len(kinds)} events"
    )


def table(rows: dict[str, Figures], peers: list[str], model_ms: float) -> None:
    best = {
        "latency_ms": min((rows[p].latency_ms for p in peers), default=float("nan")),
        "first_token_ms": min((rows[p].first_token_ms for p in peers), default=float("nan")),
        "rate_10": max((rows[p].rate_10 for p in peers), default=float("nan")),
        "rate_50": max((rows[p].rate_50 for p in peers), default=float("nan")),
    }
    print(
        f"  {'system':15s} {'tool run p50':>15s} {'first token p50 (over model)':>32s}"
        f" {'runs/s @10':>13s} {'runs/s @50':>13s}   load (1/5/15 min, start → end)"
    )
    for name, f in rows.items():
        over = f.first_token_ms - model_ms
        print(
            f"  {name:15s} {f.latency_ms:6.0f} ms {f.latency_ms / best['latency_ms']:5.2f}×"
            f" {f.first_token_ms:6.0f} ms ({over:+5.0f} ms) "
            f"{f.first_token_ms / best['first_token_ms']:5.2f}×"
            f" {f.rate_10:6.1f} {f.rate_10 / best['rate_10']:5.2f}×"
            f" {f.rate_50:6.1f} {f.rate_50 / best['rate_50']:5.2f}×   {f.load}"
        )
    print(
        f"  (× = over the best peer's figure this round; the model's own first token: "
        f"{model_ms:.0f} ms)"
    )


async def bench(
    endpoints: Servers, model_url: str, home: Path, names: list[str], args: Any
) -> None:
    model_ms = await model_first_token(model_url, args.runs)
    systems: dict[str, Callable[[], System]] = {
        "loomwork-up": lambda: Loomwork(endpoints, model_url, home, split=False),
        "loomwork-split": lambda: Loomwork(endpoints, model_url, home, split=True),
        "pydantic-ai": lambda: Peer("pydantic-ai", endpoints, model_url, home),
        "openai-agents": lambda: Peer("openai-agents", endpoints, model_url, home),
    }
    client = await Client.connect(endpoints.temporal_address)
    peers = [n for n in names if n in PEER_MODULES]
    histories: dict[str, str] = {}
    for round_no in range(args.rounds):
        order = names if round_no % 2 == 0 else list(reversed(names))
        rows: dict[str, Figures] = {}
        for name in order:
            figures, workflow_id = await measure(systems[name](), args.runs, model_ms)
            rows[name] = figures
            print(f"  measured {name}: {figures}", flush=True)
            histories.setdefault(name, await history_counts(client, workflow_id))
        print(f"round {round_no + 1} ({' → '.join(order)}), {args.runs} runs per latency column")
        table({n: rows[n] for n in names}, peers, model_ms)
    print("one tool run's Temporal history:")
    for name in names:
        print(f"  {name:15s} {histories[name]}")


@contextmanager
def servers_and_model() -> Iterator[tuple[Servers, str, Path]]:
    """Embedded Postgres, Valkey and Temporal in a temporary home, the scripted model in a
    process of its own: (the servers, the model's URL, the home)."""
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        stack = EmbeddedStack(Path(tmp), temporal_ui=False)
        started = stack.start()
        assert started.database_url and started.redis_url and started.temporal_address
        endpoints = Servers(started.database_url, started.redis_url, started.temporal_address)
        model = subprocess.Popen(
            [sys.executable, __file__, "--serve-model"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert model.stdout is not None
            yield endpoints, model.stdout.readline().strip(), Path(tmp)
        finally:
            model.communicate()
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--systems", nargs="+", choices=ALL_SYSTEMS, default=ALL_SYSTEMS)
    parser.add_argument("--serve-model", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_model:
        return serve_model()
    if args.worker:
        return asyncio.run(serve_worker(*args.worker))
    with servers_and_model() as (endpoints, model_url, home):
        asyncio.run(bench(endpoints, model_url, home, args.systems, args))


if __name__ == "__main__":
    main()
