"""An agent calling another as a tool, against the same two runs made one after the other by
the caller, measured in the same run.

    .venv/bin/python bench/sub_agents.py [--runs 30]

- Sub-agent: one `Generate` of `lead`, whose first step calls `agent:researcher` (a
  sub-agent run, a child workflow: one model step, its events into the lead's log), and
  whose second step answers.
- The same two runs by the caller: `Generate` of `researcher` (the same one step), then
  `Generate` of `lead_alone`, the same two steps as `lead` with a worker tool (`word_count`,
  a demo tool answering at once) called in place of the sub-agent.
- Three model calls either way, the scripted model answering at once. Goal: sub-agent p50
  ≤ 1.2× the two runs'. A run's first step begins as the service starts it, a sub-run's as
  the step that calls it ends (`LOOMWORK_SPECULATIVE_FIRST_STEP`, default on).

Each call runs on an idle service (a pause between calls), the two arms interleaved. The
scripted model runs on a thread of this process. Starts embedded Postgres, Valkey and
Temporal in a temporary home.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripted_settings import scripted_settings

from loomwork.config import Settings
from loomwork.testing import ChatRequest, ScriptedModelServer, ScriptedToolCall, Turn
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from server.temporal import register_search_attributes
from server.transport.grpc_app import build_grpc_app
from server.worker import build_worker

AUTH = (("authorization", "Bearer bench"),)
IDLE_PAUSE = 0.1  # seconds between calls measured "on an idle service"
AGENTS = [
    agent_pb2.Agent(name="researcher", instructions="researcher", description="Finds facts."),
    agent_pb2.Agent(name="lead", instructions="lead", tool_names=["agent:researcher"]),
    agent_pb2.Agent(name="lead_alone", instructions="lead_alone", tool_names=["word_count"]),
]


def script(request: ChatRequest) -> Turn:
    """The researcher answers; a lead calls its tool first (the researcher, or word_count),
    then answers."""
    agent = request.messages[0]["content"]
    if agent == "researcher":
        return Turn(text="The answer is 42.")
    if request.tool_results:
        return Turn(text="Lead: 42.")
    if agent == "lead":
        return Turn(tool_calls=[ScriptedToolCall("researcher", {"prompt": "find it"})])
    return Turn(tool_calls=[ScriptedToolCall("word_count", {"text": "The answer is 42."})])


async def run(settings: Settings, runs: int) -> None:
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    worker = build_worker(runtime)
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    async with worker, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        for agent in AGENTS:
            await agents.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent), metadata=AUTH)

        async def generate(agent: str) -> agent_pb2.AgentRun:
            request = agent_pb2.GenerateRequest(agent_name=agent, prompt="the answer?")
            run = (await agents.Generate(request, metadata=AUTH)).run
            assert run.status == run_pb2.RUN_STATUS_SUCCEEDED, run
            return run

        async def sub_agent() -> None:
            run = await generate("lead")
            assert run.output.steps == 2 and run.output.text == "Lead: 42."

        async def two_runs() -> None:
            await generate("researcher")
            await generate("lead_alone")

        async def timed(call: Callable[[], Awaitable[None]]) -> float:
            await asyncio.sleep(IDLE_PAUSE)
            started = time.perf_counter()
            await call()
            return (time.perf_counter() - started) * 1000

        await sub_agent()  # warm every path once
        await two_runs()
        nested, separate = [], []
        adopted = runtime.speculation.adopted
        for _ in range(runs):  # interleaved
            nested.append(await timed(sub_agent))
            separate.append(await timed(two_runs))
        adopted = runtime.speculation.adopted - adopted
    await app.stop(0)
    await runtime.close()

    n, s = statistics.median(nested), statistics.median(separate)
    print(f"an agent calling another as a tool, on an idle service; {runs} runs each, p50")
    print(
        f"  lead with one sub-agent call {n:6.1f} ms   the same two runs one after the other"
        f" {s:6.1f} ms   ratio {n / s:4.2f}×  (goal ≤ 1.2×; {'met' if n <= 1.2 * s else 'missed'})"
    )
    print(f"    spread (p10–p90): sub-agent {_deciles(nested)}, two runs {_deciles(separate)}")
    print(
        f"    first steps begun ahead and taken over by their activity: {adopted} of {4 * runs}"
        " (each round: the lead's and its sub-run's, the researcher's and lead_alone's)"
    )


def _deciles(samples: list[float]) -> str:
    deciles = statistics.quantiles(samples, n=10)
    return f"{deciles[0]:.1f}–{deciles[-1]:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        stack = EmbeddedStack(Path(tmp), temporal_ui=False)
        endpoints = stack.start()
        model = ScriptedModelServer(script)
        try:
            settings = scripted_settings(endpoints, model.start_in_thread(), home=Path(tmp))
            asyncio.run(run(settings, args.runs))
        finally:
            model.stop_in_thread()
            stack.stop()


if __name__ == "__main__":
    main()
