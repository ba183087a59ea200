"""Agent Generate with tracing on (every span exported over OTLP to a local receiver) over
tracing off, with the scripted model answering at once: goal ≤ 1.1×.

    .venv/bin/python bench/tracing_overhead.py [--runs 60]

Two service processes (runtime, worker and gRPC server each, as `loomwork up` runs them) on
the same embedded stack and scripted model: one with OTEL_EXPORTER_OTLP_ENDPOINT set
(protocol grpc; the receiver runs in this process), one without. Calls alternate between
them in rounds, so what else loads the machine falls on both alike. Each run is one
Generate of the demo agent: its start, one model step and its end (~15 spans traced).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_generate import AUTH, bench_setup

from loomwork.config import Settings
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc
from server.runtime import Runtime
from server.temporal import register_search_attributes
from server.transport.grpc_app import build_grpc_app
from server.worker import build_worker
from tests.otlp_receiver import otlp_receiver


async def serve() -> None:
    """`--serve`: a service from the environment's settings, until stdin closes."""
    settings = Settings()
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    worker = build_worker(runtime)
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    async with worker:
        print(app.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await app.stop(0)
    await runtime.close()


def start_service(settings: Settings, queue: str, **env: str) -> tuple[subprocess.Popen[str], int]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": settings.redis_url or "",
        "TEMPORAL_ADDRESS": settings.temporal_address or "",
        "LOOMWORK_HOME": str(settings.home),
        "LOOMWORK_TOKENS": "bench=bench",
        "OPENAI_BASE_URL": settings.openai_base_url or "",
        "OPENAI_API_KEY": "x",
        "LOOMWORK_CHAT_MODEL": "scripted",
        "LOOMWORK_DEMO": "true",
        "LOOMWORK_TASK_QUEUE": queue,
        "LOOMWORK_LOG_FORMAT": "json",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


async def timed_generates(port: int, n: int) -> list[float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.GenerateRequest(agent_name="assistant", prompt="hi")
        await agents.Generate(request, metadata=AUTH)  # warm
        out = []
        for _ in range(n):
            started = time.perf_counter()
            await agents.Generate(request, metadata=AUTH)
            out.append((time.perf_counter() - started) * 1000)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return asyncio.run(serve())
    rounds = max(2, args.runs // 10)  # 10 calls a round: load that comes and goes hits both
    with bench_setup() as (settings, _), otlp_receiver() as receiver:
        off, off_port = start_service(settings, "bench-tracing-off")
        on, on_port = start_service(
            settings,
            "bench-tracing-on",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_SERVICE_NAME="loomwork-bench",
        )
        try:
            untraced: list[float] = []
            traced: list[float] = []
            for _ in range(rounds):  # interleaved
                untraced += asyncio.run(timed_generates(off_port, args.runs // rounds))
                traced += asyncio.run(timed_generates(on_port, args.runs // rounds))
        finally:
            for process in (off, on):
                process.communicate()  # closes its stdin: it stops (and flushes its spans)
        traces = len({span.trace_id for span in receiver.spans})
        spans = len(receiver.spans)
    u, t = statistics.median(untraced), statistics.median(traced)
    print(f"Agent Generate with the scripted model answering at once; {len(traced)} runs each")
    print(
        f"  tracing on p50 {t:7.1f} ms   tracing off p50 {u:7.1f} ms   ratio {t / u:4.2f}×"
        "  (goal ≤ 1.1×)"
    )
    print(
        f"  exported: {spans} spans in {traces} traces"
        f" ({spans / max(traces, 1):.1f} a trace; the warm-up calls included)"
    )


if __name__ == "__main__":
    main()
