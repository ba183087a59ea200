"""ListMessages (50 messages) latency through Loomwork vs a bare grpc.aio echo servicer.

Both servers run in this process, on the same loop, over loopback; the echo
servicer returns a prebuilt response of the same 50 messages, so the ratio is
what Loomwork adds: interceptors (auth, errors), validation, Postgres, decoding.

    .venv/bin/python bench/list_messages.py [--calls 2000]

Starts embedded servers in a temporary home unless DATABASE_URL etc. are set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loomwork.config import Settings
from protos.loomwork.v1 import memory_pb2, memory_pb2_grpc, message_pb2
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from server.temporal import register_search_attributes
from server.transport.grpc_app import build_grpc_app

AUTH = (("authorization", "Bearer bench"),)


class EchoMemory(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(self, response: memory_pb2.ListMessagesResponse) -> None:
        self.response = response

    async def ListMessages(
        self, request: memory_pb2.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ListMessagesResponse:
        return self.response


async def _measure_sql(runtime: Runtime, thread_id: str, calls: int) -> list[float]:
    """The floor: the same newest-50 query straight through psycopg, no decoding."""
    sql = (
        "select * from (select id, thread_id, seq, role, content, create_time from messages"
        " where tenant_id = %s and thread_id = %s order by seq desc limit 50) m order by seq"
    )
    samples = []
    for i in range(calls + 50):
        started = time.perf_counter()
        async with runtime.db.connection() as conn:
            cur = await conn.execute(sql, ("bench", thread_id))
            await cur.fetchall()
        if i >= 50:
            samples.append((time.perf_counter() - started) * 1e6)
    return samples


async def _measure(stub: memory_pb2_grpc.MemoryServiceStub, request, calls: int) -> list[float]:
    for _ in range(50):  # warm-up
        await stub.ListMessages(request, metadata=AUTH)
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await stub.ListMessages(request, metadata=AUTH)
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def _pct(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1]


async def run(settings: Settings, calls: int) -> None:
    runtime = await Runtime.open(settings)
    # As `loomwork up` does: the appended messages' indexing runs carry search attributes.
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = memory_pb2_grpc.MemoryServiceStub(ch)
        thread = (await stub.CreateThread(memory_pb2.CreateThreadRequest(), metadata=AUTH)).thread
        await stub.AppendMessages(
            memory_pb2.AppendMessagesRequest(
                thread_id=thread.id,
                messages=[
                    message_pb2.Message(
                        role=message_pb2.ROLE_USER if i % 2 == 0 else message_pb2.ROLE_ASSISTANT,
                        parts=[
                            message_pb2.Part(
                                text=message_pb2.TextPart(text=f"message {i}: " + "lorem " * 30)
                            )
                        ],
                    )
                    for i in range(50)
                ],
            ),
            metadata=AUTH,
        )
        request = memory_pb2.ListMessagesRequest(thread_id=thread.id, last_n=50)
        real_response = await stub.ListMessages(request, metadata=AUTH)
        assert len(real_response.messages) == 50

        echo_server = grpc.aio.server()
        memory_pb2_grpc.add_MemoryServiceServicer_to_server(EchoMemory(real_response), echo_server)
        echo_port = echo_server.add_insecure_port("127.0.0.1:0")
        await echo_server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as echo_ch:
            echo = memory_pb2_grpc.MemoryServiceStub(echo_ch)
            # Interleave rounds so drift on the machine hits both alike.
            base: list[float] = []
            ours: list[float] = []
            sql: list[float] = []
            for _ in range(4):
                base += await _measure(echo, request, calls // 4)
                ours += await _measure(stub, request, calls // 4)
                sql += await _measure_sql(runtime, thread.id, calls // 4)
        await echo_server.stop(0)
    await app.stop(0)
    await runtime.close()

    b50, b99 = _pct(base, 50), _pct(base, 99)
    o50, o99 = _pct(ours, 50), _pct(ours, 99)
    print(f"ListMessages, 50 messages, {len(ours)} sequential calls each, same process and loop")
    print(f"  bare grpc.aio echo   p50 {b50:8.0f} µs   p99 {b99:8.0f} µs")
    print(f"  loomwork             p50 {o50:8.0f} µs   p99 {o99:8.0f} µs")
    print(f"  (raw psycopg query   p50 {_pct(sql, 50):8.0f} µs   p99 {_pct(sql, 99):8.0f} µs)")
    print(
        f"  ratio                p50 {o50 / b50:8.2f}×    p99 {o99 / b99:8.2f}×"
        "   (goal ≤ 2× / ≤ 3×)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        stack = EmbeddedStack(
            Path(tmp),
            postgres=not os.environ.get("DATABASE_URL"),
            redis=not os.environ.get("REDIS_URL"),
            temporal=not os.environ.get("TEMPORAL_ADDRESS"),
            temporal_ui=False,
        )
        endpoints = stack.start()
        try:
            settings = Settings(
                DATABASE_URL=os.environ.get("DATABASE_URL") or endpoints.database_url,
                REDIS_URL=os.environ.get("REDIS_URL") or endpoints.redis_url,
                TEMPORAL_ADDRESS=os.environ.get("TEMPORAL_ADDRESS") or endpoints.temporal_address,
                LOOMWORK_TOKENS="bench=bench:admin",
            )
            asyncio.run(run(settings, args.calls))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
