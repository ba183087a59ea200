"""Agent run overhead: Generate, time to first delta and stream relay rate, each against a
bare baseline measured in the same run, with the scripted model answering instantly.

    .venv/bin/python bench/agent_generate.py [--runs 40]

- Generate p50 over a bare Temporal workflow whose one activity calls the same model
  through the same `ChatModel` (goal ≤ 1.5×).
- Time to first text delta through `Stream`, over the model's own first delta, against one
  bare workflow start (goal: ≤ one bare workflow start more than the model's own), each
  call on an idle service; back-to-back calls are printed too. The service begins a run's
  first step as it starts the run, and its text streams as a draft once the run exists
  (`LOOMWORK_SPECULATIVE_FIRST_STEP`, default on; set it to `false` to measure without).
- Relay rate: events/s that `WatchRun` relays from a run's event log (1000 one-character
  text deltas) over a raw grpc.aio server stream sending the same number of messages
  (goal ≥ 0.5×); and, for the whole path, model deltas/s delivered live by `Stream`.

The scripted model and the caller of `Stream` for the first-delta measurements each run in
a process of their own, as a model and a client are other services in production (in-process
they share the service's GIL and event loop). Starts embedded Postgres, Valkey and Temporal
in a temporary home.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import grpc
from temporalio import activity, workflow
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripted_settings import scripted_settings

from loomwork.agents.directory import RunDirectory
from loomwork.agents.events import RunFinished, RunStarted, TextDeltaEvent, encode_event
from loomwork.agents.run_models import RunOutcome
from loomwork.agents.run_start import event_log_key
from loomwork.config import Settings
from loomwork.llm.chat import ChatMessage, ChatModel, TextDelta, ToolCallDelta, ToolCallDone
from loomwork.llm.shared import SharedChatModels
from loomwork.testing import ChatRequest, ScriptedModelServer, Turn
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from server.temporal import register_search_attributes
from server.transport.grpc_app import build_grpc_app
from server.worker import build_worker

AUTH = (("authorization", "Bearer bench"),)
BARE_QUEUE = "bench-bare"
IDLE_PAUSE = 0.1  # seconds between calls measured "on an idle service"


_shared: dict[str, SharedChatModels] = {}


def warm_model(base_url: str) -> ChatModel:
    """The model over one kept-alive client per endpoint, as agent workers call it: creating
    an `openai` client costs ~30 ms (TLS context), which no baseline should carry."""
    shared = _shared.setdefault(base_url, SharedChatModels(base_url=base_url, api_key="x"))
    return shared("scripted")


@activity.defn(name="bare_model_call")
async def bare_model_call(base_url: str) -> str:
    result = await warm_model(base_url).stream([ChatMessage.user("hi")])
    return result.text


@workflow.defn(name="BareModelCall")
class BareModelCall:
    @workflow.run
    async def run(self, base_url: str) -> str:
        return await workflow.execute_activity(
            bare_model_call, base_url, start_to_close_timeout=timedelta(seconds=30)
        )


@workflow.defn(name="BareNothing")
class BareNothing:
    @workflow.run
    async def run(self) -> None:
        return None


_activity_started: dict[str, float] = {}  # workflow id -> perf_counter() as its activity ran


@activity.defn(name="bare_mark_started")
async def bare_mark_started() -> None:
    _activity_started[activity.info().workflow_id or ""] = time.perf_counter()


@workflow.defn(name="BareToActivity")
class BareToActivity:
    """The Temporal part of a Stream call without the rest: started eagerly as agent runs
    are (the bare start above is a plain start), then one activity."""

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(
            bare_mark_started, start_to_close_timeout=timedelta(seconds=30)
        )


def _p50(samples: list[float]) -> float:
    return statistics.median(samples)


async def run(settings: Settings, model_url: str, runs: int) -> None:
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    worker = build_worker(runtime)
    bare_worker = Worker(
        runtime.temporal,
        task_queue=BARE_QUEUE,
        workflows=[BareModelCall, BareNothing, BareToActivity],
        activities=[bare_model_call, bare_mark_started],
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    async with worker, bare_worker, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        agents = agent_pb2_grpc.AgentServiceStub(ch)

        async def generate() -> None:
            await agents.Generate(
                agent_pb2.GenerateRequest(agent_name="assistant", prompt="hi"), metadata=AUTH
            )

        async def bare() -> None:
            await runtime.temporal.execute_workflow(
                BareModelCall.run, model_url, id=f"bare-{uuid.uuid4()}", task_queue=BARE_QUEUE
            )

        async def bare_start() -> None:
            await runtime.temporal.execute_workflow(
                BareNothing.run, id=f"nothing-{uuid.uuid4()}", task_queue=BARE_QUEUE
            )

        async def timed(fn: Callable[[], Awaitable[None]], n: int) -> list[float]:
            await fn()
            out = []
            for _ in range(n):
                started = time.perf_counter()
                await fn()
                out.append((time.perf_counter() - started) * 1000)
            return out

        gen, base, start = [], [], []
        for _ in range(2):  # interleaved rounds
            gen += await timed(generate, runs // 2)
            base += await timed(bare, runs // 2)
            start += await timed(bare_start, runs // 2)

        # time to first delta, measured by a caller in its own process
        caller = await Caller.start(app.port, model_url)
        await caller.ask("model")  # warm: the agent worker's client is warm too
        # On an idle service: each call starts once the previous one (and its run's tail:
        # saving, closing the workflow) is over, the bare start measured the same way.
        ttfd, model_ttfd, idle_start, to_activity, phases = [], [], [], [], []
        adopted_before = runtime.speculation.adopted
        for _ in range(runs):  # interleaved
            first, announced, published = await caller.ask("stream")
            ttfd.append(first)
            phases.append((announced, published))
            await asyncio.sleep(IDLE_PAUSE)
            model_ttfd.append((await caller.ask("model"))[0])
            await asyncio.sleep(IDLE_PAUSE)
            started = time.perf_counter()
            await bare_start()
            idle_start.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(IDLE_PAUSE)
            workflow_id, started = f"to-activity-{uuid.uuid4()}", time.perf_counter()
            await runtime.temporal.execute_workflow(
                BareToActivity.run, id=workflow_id, task_queue=BARE_QUEUE, request_eager_start=True
            )
            to_activity.append((_activity_started.pop(workflow_id) - started) * 1000)
            await asyncio.sleep(IDLE_PAUSE)
        adopted = runtime.speculation.adopted - adopted_before
        # Back to back: the next call starts as the previous stream ends (on 2 cores the
        # previous run's tail lands on it).
        busy_ttfd = [(await caller.ask("stream"))[0] for _ in range(runs)]
        await caller.close()

        # relay rate: WatchRun of a run whose 1000 one-character deltas are in its event log
        n = LIVE_DELTAS
        run_id = await _published_run(runtime, n)
        started = time.perf_counter()
        relayed = 0
        async for response in agents.WatchRun(
            agent_pb2.AgentServiceWatchRunRequest(run_id=run_id), metadata=AUTH
        ):
            relayed += response.event.HasField("text_delta")
        relay = relayed / (time.perf_counter() - started)
        assert relayed == n

        # live: a model streaming 1000 one-character chunks, through Stream (deltas that
        # arrive while an append is in flight are merged into one event)
        started = time.perf_counter()
        chars = events = 0
        async for response in agents.Stream(
            agent_pb2.StreamRequest(agent_name="assistant", prompt=LONG), metadata=AUTH
        ):
            if response.event.HasField("text_delta"):
                chars += len(response.event.text_delta.text)
                events += 1
        live = chars / (time.perf_counter() - started)
        assert chars == n

        raw_rate = await _raw_stream_rate(n)

    await app.stop(0)
    await runtime.close()

    print(f"agent runs with the scripted model answering at once; {runs} runs each")
    g, b = _p50(gen), _p50(base)
    print(
        f"  Generate p50            {g:7.1f} ms   bare workflow+activity p50 {b:7.1f} ms"
        f"   ratio {g / b:4.2f}×  (goal ≤ 1.5×)"
    )
    t, m, s = _p50(ttfd), _p50(model_ttfd), _p50(idle_start)
    print(
        f"  first delta p50         {t:7.1f} ms   model's own {m:6.1f} ms   over the model"
        f" {t - m:+6.1f} ms  (goal: ≤ one bare start, +{s:.1f} ms; "
        f"{'met' if t - m <= s else 'missed'} by {abs(s - (t - m)):.1f} ms)"
    )
    floor = _p50(to_activity)
    gap = t - m - floor
    print(
        f"    Temporal's part alone: a bare eager workflow runs its one activity at {floor:.1f} ms;"
        f" the first delta (less the model's own) comes {abs(gap):.1f} ms"
        f" {'after' if gap >= 0 else 'before'} (a speculative first step streams its text"
        " as the run exists, before the run's activity starts)"
    )
    print(
        f"    first steps begun as the run was started and taken over by its activity:"
        f" {adopted} of {runs} (LOOMWORK_SPECULATIVE_FIRST_STEP="
        f"{'true' if settings.speculative_first_step else 'false'})"
    )
    a, d = _p50([p[0] for p in phases]), _p50([p[1] for p in phases])
    print(
        f"    where: run_started made at {a:4.1f} ms, first delta made at {d:4.1f} ms"
        f" (p50s); back to back: first delta {_p50(busy_ttfd):5.1f} ms,"
        f" bare start {_p50(start):5.1f} ms"
    )
    print(
        f"  relay rate (WatchRun)   {relay:7.0f} events/s   raw grpc.aio stream {raw_rate:7.0f}/s"
        f"   ratio {relay / raw_rate:4.2f}×  (goal ≥ 0.5×)"
    )
    print(
        f"  live Stream             {live:7.0f} model deltas/s in {events} events"
        f"   ratio to raw {live / raw_rate:4.2f}×"
    )


async def _published_run(runtime: Runtime, n: int) -> str:
    """A finished run of the bench tenant whose log holds run_started, `n` one-character
    text deltas and run_finished, as an agent run publishes them."""
    run_id = f"run_relay_{uuid.uuid4().hex[:8]}"
    key = event_log_key("bench", run_id)
    await RunDirectory(runtime.redis).record("bench", run_id, f"agent/assistant/bench/{run_id}")
    await runtime.events.append(
        key, encode_event(RunStarted(agent_name="assistant", model="scripted", max_steps=1))
    )
    for _ in range(n):
        await runtime.events.append(key, encode_event(TextDeltaEvent(step=1, delta="x")))
    outcome = RunOutcome(
        run_id=run_id, agent_name="assistant", status="succeeded", finish_reason="stop"
    )
    await runtime.events.append(key, encode_event(RunFinished(outcome=outcome)), terminal=True)
    return run_id


async def _raw_stream_rate(n: int) -> float:
    """A bare grpc.aio server-streaming handler sending `n` AgentRunEvent-sized messages."""

    async def handler(
        request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.StreamResponse]:
        for i in range(n):
            event = agent_pb2.AgentRunEvent(event_id=i + 1, run_id="run_x")
            event.text_delta.text = "x"
            yield agent_pb2.StreamResponse(event=event)

    generic = grpc.method_handlers_generic_handler(
        "bench.Raw",
        {
            "Stream": grpc.unary_stream_rpc_method_handler(
                handler,
                request_deserializer=lambda b: b,
                response_serializer=agent_pb2.StreamResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_stream(
            "/bench.Raw/Stream",
            request_serializer=lambda b: b,
            response_deserializer=agent_pb2.StreamResponse.FromString,
        )
        started = time.perf_counter()
        count = 0
        async for _ in call(b""):
            count += 1
        rate = count / (time.perf_counter() - started)
    await server.stop(0)
    return rate


LONG = "long"  # the prompt the bench model answers with LIVE_DELTAS one-character chunks
LIVE_DELTAS = 1000


def bench_script(request: ChatRequest) -> Turn:
    if request.last_user_text == LONG:
        return Turn(text="x" * LIVE_DELTAS, chunk_size=1)
    return Turn(text="ok", chunk_size=2)


def serve_model() -> None:
    """`--serve-model`: the scripted model in this process until stdin closes."""
    model = ScriptedModelServer(bench_script)
    print(model.start_in_thread(), flush=True)
    sys.stdin.read()
    model.stop_in_thread()


async def first_delta_stream(agents: agent_pb2_grpc.AgentServiceStub) -> tuple[float, ...]:
    """One Stream call, read to the end: ms to its first text delta, and when (ms from the
    call) run_started and that delta were made (their event times: a delta is made as the
    model sends it, and published once its step is owned by the run's activity)."""
    started, wall = time.perf_counter(), time.time()
    first = announced = published = 0.0
    request = agent_pb2.StreamRequest(agent_name="assistant", prompt="hi")
    async for response in agents.Stream(request, metadata=AUTH):
        event = response.event
        at = (event.time.ToDatetime().timestamp() - wall) * 1000
        if event.HasField("run_started"):
            announced = at
        if event.HasField("text_delta") and not first:
            first, published = time.perf_counter(), at
    return (first - started) * 1000, announced, published


async def first_delta_model(chat: ChatModel) -> tuple[float, ...]:
    """ms to the model's own first delta, called directly."""
    started = time.perf_counter()
    seen: list[float] = []

    async def on_event(event: TextDelta | ToolCallDelta | ToolCallDone) -> None:
        if not seen:
            seen.append(time.perf_counter())

    await chat.stream([ChatMessage.user("hi")], on_event=on_event)
    return ((seen[0] - started) * 1000,)


async def call_loop(port: int, model_url: str) -> None:
    """`--caller`: answers `stream` and `model` commands read from stdin, one per line."""
    loop = asyncio.get_running_loop()
    chat = warm_model(model_url)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        while command := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            if command == "stream":
                result = await first_delta_stream(agents)
            else:
                result = await first_delta_model(chat)
            print(*result, flush=True)


class Caller:
    """The `--caller` process, asked one command at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, port: int, model_url: str) -> Caller:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--caller",
            str(port),
            model_url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def ask(self, command: str) -> list[float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{command}\n".encode())
        await self.process.stdin.drain()
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError("the caller process exited")
        return [float(x) for x in line.split()]

    async def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        await self.process.wait()


@contextlib.contextmanager
def bench_setup() -> Iterator[tuple[Settings, str]]:
    """Embedded Postgres, Valkey and Temporal in a temporary home, and the scripted model in a
    process of its own: the service's settings for them, and the model's URL."""
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        stack = EmbeddedStack(Path(tmp), temporal_ui=False)
        endpoints = stack.start()
        model = subprocess.Popen(
            [sys.executable, __file__, "--serve-model"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert model.stdout is not None
            model_url = model.stdout.readline().strip()
            yield (
                scripted_settings(endpoints, model_url),
                model_url,
            )
        finally:
            model.communicate()  # closes its stdin: it stops
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--serve-model", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--caller", nargs=2, metavar=("PORT", "MODEL_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_model:
        return serve_model()
    if args.caller:
        return asyncio.run(call_loop(int(args.caller[0]), args.caller[1]))
    with bench_setup() as (settings, model_url):
        asyncio.run(run(settings, model_url, args.runs))


if __name__ == "__main__":
    main()
