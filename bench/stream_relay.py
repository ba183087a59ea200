"""Stream relay rate: events/s that `WatchRun` relays from a run's event log, against a raw
grpc.aio server stream sending as many messages, in alternating rounds of one run.

    .venv/bin/python bench/stream_relay.py [--events 3000] [--rounds 11]

Each round reads, with WatchRun on a gRPC server of the service, a finished agent run whose
log holds run_started, `--events` one-character text deltas and run_finished (as the relay
figure of bench/agent_generate.py does), then a bare grpc.aio handler yielding as many
AgentRunEvent-sized messages; the ratio is what the relay (Redis reads, decoding, the
conversion to protobuf, the interceptors) costs over the transport alone. Prints the
median of each and the per-round ratios. Starts embedded Postgres, Valkey and Temporal in
a temporary home; no model and no worker (the runs it reads are already in their logs).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripted_settings import scripted_settings

from loomwork.agents.directory import RunDirectory
from loomwork.agents.events import RunFinished, RunStarted, TextDeltaEvent, encode_event
from loomwork.agents.run_models import RunOutcome
from loomwork.agents.run_start import event_log_key
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from server.transport.grpc_app import build_grpc_app

AUTH = (("authorization", "Bearer bench"),)


async def published_run(runtime: Runtime, n: int) -> str:
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


class RawStream:
    """A bare grpc.aio server-streaming handler sending `n` AgentRunEvent-sized messages."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.server = grpc.aio.server()

    async def start(self) -> int:
        n = self.n

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
        self.server.add_generic_rpc_handlers((generic,))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port


async def run(settings_home: Path, events: int, rounds: int) -> None:
    stack = EmbeddedStack(settings_home, temporal_ui=False)
    endpoints = stack.start()
    try:
        settings = scripted_settings(endpoints, "http://127.0.0.1:9/v1", settings_home)
        runtime = await Runtime.open(settings)
        app = build_grpc_app(runtime, "127.0.0.1:0")
        await app.start()
        raw = RawStream(events)
        raw_port = await raw.start()
        relay_rates: list[float] = []
        raw_rates: list[float] = []
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch,
            grpc.aio.insecure_channel(f"127.0.0.1:{raw_port}") as raw_ch,
        ):
            agents = agent_pb2_grpc.AgentServiceStub(ch)
            raw_call = raw_ch.unary_stream(
                "/bench.Raw/Stream",
                request_serializer=lambda b: b,
                response_deserializer=agent_pb2.StreamResponse.FromString,
            )
            for round_ in range(rounds + 1):  # the first round warms both up, not counted
                run_id = await published_run(runtime, events)
                started = time.perf_counter()
                relayed = 0
                async for response in agents.WatchRun(
                    agent_pb2.AgentServiceWatchRunRequest(run_id=run_id), metadata=AUTH
                ):
                    relayed += response.event.HasField("text_delta")
                relay = relayed / (time.perf_counter() - started)
                assert relayed == events, relayed
                started = time.perf_counter()
                count = 0
                async for _ in raw_call(b""):
                    count += 1
                plain = count / (time.perf_counter() - started)
                if round_:
                    relay_rates.append(relay)
                    raw_rates.append(plain)
        await raw.server.stop(0)
        await app.stop(grace=1.0)
        await runtime.close()
    finally:
        stack.stop()
    ratios = sorted(r / b for r, b in zip(relay_rates, raw_rates, strict=True))
    relay_p50, raw_p50 = statistics.median(relay_rates), statistics.median(raw_rates)
    print(f"stream relay, {events} events, {rounds} rounds")
    print(
        f"  WatchRun relay {relay_p50:7.0f} events/s   raw grpc.aio stream {raw_p50:7.0f}/s"
        f"   ratio of medians {relay_p50 / raw_p50:4.2f}×"
    )
    middle = statistics.median(ratios)
    print(f"  per-round ratios {ratios[0]:4.2f}×–{ratios[-1]:4.2f}× (median {middle:4.2f}×)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        asyncio.run(run(Path(tmp), args.events, args.rounds))


if __name__ == "__main__":
    main()
