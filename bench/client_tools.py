"""Client tools: the round trip from a `tool_call_requested` event to the model's next call,
against a bare Temporal Update round trip measured in the same run.

    .venv/bin/python bench/client_tools.py [--runs 40]

- Client-tool round trip: a `Stream` call declares a client tool, the model calls it; from
  the moment the caller reads `tool_call_requested` until the model receives its next
  request (the caller answers at once with `SubmitToolResults`; the run takes the result,
  publishes `tool_result` and starts its next model step).
- Bare Update round trip: a bare workflow waits on a condition; from sending it an Update
  (whose handler sets the condition) until its next activity starts. Started eagerly, as
  agent runs are, on a worker of the same process and Temporal (unsandboxed).
- Goal: client-tool round trip p50 ≤ 2× the bare one. For context, the model client's own
  request (a direct `ChatModel.stream` through the worker's client with the run's messages
  and tools, call → the model has it) is printed, and the ratio without it.

The scripted model and the caller of `Stream` share a process of their own, as a model and
a client are other services in production; each reads its own clock (`perf_counter`, one
monotonic clock for both). Each call runs on an idle service (a pause between calls, so a
run's tail does not land on the next measurement). Starts embedded Postgres, Valkey and
Temporal in a temporary home.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bare_update import BareUpdateToActivity, activity_started, bare_update_next
from scripted_settings import scripted_settings

from loomwork.config import Settings
from loomwork.llm.chat import ChatMessage
from loomwork.testing import ChatRequest, ScriptedModelServer, ScriptedToolCall, Turn
from loomwork.tools.client_tools import ClientTool
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from server.temporal import register_search_attributes
from server.transport.grpc_app import build_grpc_app
from server.worker import build_worker, needs_no_serialization_context, workflow_runner

AUTH = (("authorization", "Bearer bench"),)
BARE_QUEUE = "bench-bare-update"
IDLE_PAUSE = 0.1  # seconds between calls measured "on an idle service"
WEATHER_DESCRIPTION = "The weather in a city."
WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


async def run(settings: Settings, peer: Peer, runs: int) -> None:
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    worker = build_worker(runtime)
    # Set up as Loomwork's own worker is: its sandbox (this module passed through, as
    # Loomwork's workflow modules are), sticky queue and heartbeat settings.
    runner = workflow_runner(
        settings.workflow_sandbox,
        context_free=needs_no_serialization_context(runtime.temporal.data_converter),
    )
    assert isinstance(runner, SandboxedWorkflowRunner)
    bare_worker = Worker(
        runtime.temporal,
        task_queue=BARE_QUEUE,
        workflows=[BareUpdateToActivity],
        activities=[bare_update_next],
        workflow_runner=dataclasses.replace(
            runner, restrictions=runner.restrictions.with_passthrough_modules(__name__)
        ),
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
        max_heartbeat_throttle_interval=timedelta(seconds=1),
    )
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    async with worker, bare_worker:
        await peer.tell(str(app.port))

        async def bare() -> tuple[float, float]:
            """ms from sending the Update to the next activity's start, and to its answer."""
            workflow_id = f"bare-update-{uuid.uuid4()}"
            handle = await runtime.temporal.start_workflow(
                BareUpdateToActivity.run,
                id=workflow_id,
                task_queue=BARE_QUEUE,
                request_eager_start=True,
            )
            assert await handle.query(BareUpdateToActivity.waiting)  # its first task has run
            await asyncio.sleep(IDLE_PAUSE)
            started = time.perf_counter()
            _ = await handle.execute_update(BareUpdateToActivity.answer, "sunny")
            answered = time.perf_counter()
            await handle.result()
            next_started = activity_started.pop(workflow_id)
            return (next_started - started) * 1000, (answered - started) * 1000

        # The agent's second model call, made directly through the worker's own model client.
        assistant = runtime.agents.get("assistant")
        tools = [*runtime.tools.specs(list(assistant.tool_names)), declared_tool().spec()]

        async def model_own() -> float:
            """ms from a direct model call (the run's tools) to the model receiving it."""
            prompt = f"own:{uuid.uuid4().hex}"
            started = time.perf_counter()
            chat = runtime.chat_models(settings.chat_model)
            await chat.stream(
                [ChatMessage.system(assistant.instructions), ChatMessage.user(prompt)], tools=tools
            )
            [arrived] = await peer.ask(f"arrived {prompt}")
            return (arrived - started) * 1000

        await peer.ask("run")  # warm every path once
        await bare()
        await model_own()
        client, bare_trip, submit, bare_answer, own = [], [], [], [], []
        for _ in range(runs):  # interleaved
            trip, answered = await peer.ask("run")
            client.append(trip)
            submit.append(answered)
            await asyncio.sleep(IDLE_PAUSE)
            trip, answered = await bare()
            bare_trip.append(trip)
            bare_answer.append(answered)
            await asyncio.sleep(IDLE_PAUSE)
            own.append(await model_own())
            await asyncio.sleep(IDLE_PAUSE)
    await app.stop(0)
    await runtime.close()

    c, b, m = (statistics.median(x) for x in (client, bare_trip, own))
    print(f"client tools on an idle service; {runs} runs each, p50")
    print(
        f"  client-tool round trip  {c:6.1f} ms   bare Update round trip {b:6.1f} ms"
        f"   ratio {c / b:4.2f}×  (goal ≤ 2×; {'met' if c <= 2 * b else 'missed'})"
    )
    s, a = statistics.median(submit), statistics.median(bare_answer)
    print(
        f"    tool_call_requested read → SubmitToolResults answered {s:5.1f} ms;"
        f" bare Update sent → answered {a:5.1f} ms"
    )
    print(f"    spread (p10–p90): client tool {_quantiles(client)}, bare {_quantiles(bare_trip)}")
    print(
        f"    of which the model client's own request (call → the model has it) {m:4.1f} ms;"
        f" less it, {c - m:5.1f} ms: ratio {(c - m) / b:4.2f}×"
    )


def _quantiles(samples: list[float]) -> str:
    deciles = statistics.quantiles(samples, n=10)
    return f"{deciles[0]:.1f}–{deciles[-1]:.1f} ms"


# -- the peer process: the scripted model and the caller ------------------------------------


def declared_tool() -> ClientTool:
    """The client tool the runs declare, as the worker offers it to the model."""
    return ClientTool(
        name="get_weather", description=WEATHER_DESCRIPTION, parameters_schema=WEATHER
    )


_model_called: dict[str, float] = {}  # tool call id -> perf_counter() as the model got its result


def peer_script(request: ChatRequest) -> Turn:
    """Call the client tool once per run (its id from the prompt), then answer; a direct
    call (its prompt `own:…`) is answered at once."""
    last = request.messages[-1]
    if request.last_user_text.startswith("own:"):
        _model_called[request.last_user_text] = time.perf_counter()
        return Turn(text="ok", chunk_size=2)
    if last.get("role") == "tool":
        _model_called[str(last.get("tool_call_id"))] = time.perf_counter()
        return Turn(text="ok", chunk_size=2)
    call_id = f"call_{request.last_user_text}"
    return Turn(tool_calls=[ScriptedToolCall("get_weather", {"city": "Paris"}, id=call_id)])


async def client_tool_round(agents: agent_pb2_grpc.AgentServiceStub, n: int) -> tuple[float, ...]:
    """One run whose model calls the client tool: ms from reading tool_call_requested to the
    model's next request, and to SubmitToolResults' answer."""
    tool = agent_pb2.ClientTool(name="get_weather", description=WEATHER_DESCRIPTION)
    tool.parameters_schema.update(WEATHER)
    request = agent_pb2.StreamRequest(agent_name="assistant", prompt=str(n), client_tools=[tool])
    read = answered = 0.0
    status = run_pb2.RUN_STATUS_UNSPECIFIED
    async for response in agents.Stream(request, metadata=AUTH):
        event = response.event
        if event.HasField("tool_call_requested"):
            read = time.perf_counter()
            await agents.SubmitToolResults(
                agent_pb2.SubmitToolResultsRequest(
                    run_id=event.run_id,
                    results=[
                        agent_pb2.ClientToolResult(
                            tool_call_id=event.tool_call_requested.tool_call_id,
                            result=struct_pb2.Value(string_value="sunny"),
                        )
                    ],
                ),
                metadata=AUTH,
            )
            answered = time.perf_counter()
        if event.HasField("run_finished"):
            status = event.run_finished.status
    assert status == run_pb2.RUN_STATUS_SUCCEEDED and read, "the run did not go as scripted"
    called = _model_called.pop(f"call_{n}")
    return (called - read) * 1000, (answered - read) * 1000


async def peer_loop() -> None:
    """`--peer`: the scripted model (its URL printed first), then, once the service's port
    is read from stdin, one client-tool round per `run` line; `arrived <prompt>` answers
    when a direct call with that prompt reached the model (perf_counter: CLOCK_MONOTONIC,
    the same clock in every process)."""
    model = ScriptedModelServer(peer_script)
    print(model.start_in_thread(), flush=True)
    loop = asyncio.get_running_loop()
    port = int(await loop.run_in_executor(None, sys.stdin.readline))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            agents = agent_pb2_grpc.AgentServiceStub(channel)
            n = 0
            while command := (await loop.run_in_executor(None, sys.stdin.readline)).split():
                if command[0] == "arrived":  # when a direct call reached the model
                    print(_model_called.pop(command[1]), flush=True)
                    continue
                n += 1
                print(*await client_tool_round(agents, n), flush=True)
    finally:
        model.stop_in_thread()


class Peer:
    """The `--peer` process, asked one line at a time."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        assert process.stdout is not None
        self.model_url = process.stdout.readline().strip()

    async def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{line}\n")
        self.process.stdin.flush()

    async def ask(self, command: str) -> list[float]:
        await self.tell(command)
        assert self.process.stdout is not None
        answer = await asyncio.to_thread(self.process.stdout.readline)
        if not answer:
            raise RuntimeError("the peer process exited")
        return [float(x) for x in answer.split()]


@contextlib.contextmanager
def bench_setup() -> Iterator[tuple[Settings, Peer]]:
    """Embedded Postgres, Valkey and Temporal in a temporary home, and the peer process: the
    service's settings (the peer's model), and the peer."""
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        stack = EmbeddedStack(Path(tmp), temporal_ui=False)
        endpoints = stack.start()
        process = subprocess.Popen(
            [sys.executable, __file__, "--peer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            peer = Peer(process)
            yield (
                scripted_settings(endpoints, peer.model_url, home=Path(tmp)),
                peer,
            )
        finally:
            process.communicate()  # closes its stdin: it stops
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return asyncio.run(peer_loop())
    with bench_setup() as (settings, peer):
        asyncio.run(run(settings, peer, args.runs))


if __name__ == "__main__":
    main()
