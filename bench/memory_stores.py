"""ListMessages (newest 50, cache off) on each memory store over the raw client call of that
store, in the same run.

    .venv/bin/python bench/memory_stores.py [--calls 1000] [--dynamodb-calls 200]
        [--stores postgres,redis,dynamodb]

For each store, a Loomwork runtime with `LOOMWORK_MEMORY_STORE=<store>` and
`LOOMWORK_CACHE=false` (its own database, as a deployment of its own) holds one thread of
50 messages (~190 bytes of text each). Timed, interleaved in rounds so drift on the
machine hits all alike:

- store read: `Memory.list_messages(last_n=50)`, what the ListMessages RPC does under its
  interceptors: validation, the adapter's reads, decoding into validated models;
- raw: the least the store's own client does to fetch the same 50 stored records, no
  decoding: the psycopg query through the pool; one EVALSHA of ZREVRANGE + HMGET on the
  thread's keys; one DynamoDB Query of the thread's message partition;
- RPC: the whole ListMessages call over loopback gRPC, for context.

DynamoDB is moto's server (`moto_server`, started here), a local stand-in whose latency is
not AWS's. The embedded PostgreSQL, Valkey and Temporal start in a temporary home.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import psycopg
from psycopg import conninfo, sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loomwork.config import Settings
from loomwork.storage.cached import CachedMemoryStorage
from loomwork.storage.dynamodb import DynamoMemoryStorage
from loomwork.storage.postgres import MESSAGE_COLUMNS
from loomwork.storage.redis_adapter import RedisMemoryStorage
from protos.loomwork.v1 import memory_pb2, memory_pb2_grpc, message_pb2
from server.embedded import EmbeddedStack
from server.embedded.home import pick_free_port
from server.runtime import Runtime
from server.temporal import register_search_attributes
from server.transport.grpc_app import build_grpc_app

AUTH = (("authorization", "Bearer bench"),)
TENANT = "bench"
STORES = ("postgres", "redis", "dynamodb")
ROUNDS = 10
Timed = Callable[[], Awaitable[Any]]

_RAW_REDIS = """
local ids = redis.call('ZREVRANGE', KEYS[1], 0, 49)
return redis.call('HMGET', KEYS[2], unpack(ids))
"""


async def _database(url: str, name: str) -> str:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return conninfo.make_conninfo(url, dbname=name)


async def _raw_call(runtime: Runtime, thread_id: str) -> Timed:
    """The store's own client fetching the thread's newest 50 stored records."""
    storage = runtime.memory.storage
    assert not isinstance(storage, CachedMemoryStorage), "run with the cache off"
    if isinstance(storage, RedisMemoryStorage):
        script = storage.redis.register_script(_RAW_REDIS)
        _, records, index = storage.thread_keys(TENANT, thread_id)
        return lambda: script(keys=[index, records])
    if isinstance(storage, DynamoMemoryStorage):
        table = storage.table
        thread = await table.get(storage.thread_key(TENANT, thread_id))
        assert thread is not None
        partition = storage.messages_pk(TENANT, int(thread["seq"]["N"]))
        return lambda: table.client.query(
            TableName=table.name,
            KeyConditionExpression="#pk = :pk",
            ExpressionAttributeNames={"#pk": "pk"},
            ExpressionAttributeValues={":pk": {"S": partition}},
            ScanIndexForward=False,
            ConsistentRead=True,
            Limit=50,
        )
    query = (
        f"select {MESSAGE_COLUMNS} from messages m where tenant_id = %s and thread_id = %s"
        " order by seq desc limit 50"
    )

    async def postgres() -> None:
        async with runtime.db.connection() as conn:
            cur = await conn.execute(query, (TENANT, thread_id))
            await cur.fetchall()

    return postgres


async def _samples(call: Timed, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        out.append((time.perf_counter() - started) * 1e6)
    return out


def _pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1]


async def measure(settings: Settings, store: str, calls: int) -> None:
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = memory_pb2_grpc.MemoryServiceStub(channel)
            thread = (
                await stub.CreateThread(memory_pb2.CreateThreadRequest(), metadata=AUTH)
            ).thread
            messages = [
                message_pb2.Message(
                    role=message_pb2.ROLE_USER if i % 2 == 0 else message_pb2.ROLE_ASSISTANT,
                    parts=[
                        message_pb2.Part(
                            text=message_pb2.TextPart(text=f"message {i}: " + "lorem " * 30)
                        )
                    ],
                )
                for i in range(50)
            ]
            for batch in (messages[:25], messages[25:]):  # DynamoDB: at most 49 per append
                await stub.AppendMessages(
                    memory_pb2.AppendMessagesRequest(thread_id=thread.id, messages=batch),
                    metadata=AUTH,
                )
            request = memory_pb2.ListMessagesRequest(thread_id=thread.id, last_n=50)

            async def rpc() -> None:
                await stub.ListMessages(request, metadata=AUTH)

            async def store_read() -> None:
                page = await runtime.memory.list_messages(TENANT, thread.id, last_n=50)
                assert len(page.messages) == 50

            raw = await _raw_call(runtime, thread.id)
            timed = {"store read": store_read, "raw": raw, "RPC": rpc}
            samples: dict[str, list[float]] = {name: [] for name in timed}
            for call in timed.values():
                await _samples(call, 50)  # warm-up
            for _ in range(ROUNDS):
                for name, call in timed.items():
                    samples[name] += await _samples(call, max(1, calls // ROUNDS))
    finally:
        await app.stop(0)
        await runtime.close()

    raw50, raw99 = _pct(samples["raw"], 50), _pct(samples["raw"], 99)
    print(f"{store}: ListMessages newest 50, cache off, {calls} sequential calls each")
    for name in ("raw", "store read", "RPC"):
        p50, p99 = _pct(samples[name], 50), _pct(samples[name], 99)
        print(
            f"  {name:10}  p50 {p50:7.0f} µs   p99 {p99:7.0f} µs"
            f"   over raw: p50 {p50 / raw50:5.2f}×  p99 {p99 / raw99:5.2f}×"
        )


def _moto(port: int) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(exe), "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(2.0)
    return proc


async def run(base: Settings, stores: list[str], calls: dict[str, int], moto_url: str) -> None:
    assert base.database_url
    for store in stores:
        settings = base.model_copy(
            update={
                "memory_store": store,
                "cache_enabled": False,
                "database_url": await _database(base.database_url, f"bench_{store}"),
                "aws_endpoint_url": moto_url,
            }
        )
        await measure(settings, store, calls[store])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--dynamodb-calls", type=int, default=200, help="moto is slow")
    parser.add_argument("--stores", default=",".join(STORES))
    args = parser.parse_args()
    stores = [s for s in args.stores.split(",") if s]
    port = pick_free_port(set())
    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
        os.environ.setdefault(name, value)  # moto takes any
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    moto = _moto(port) if "dynamodb" in stores else None
    try:
        with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
            stack = EmbeddedStack(Path(tmp), temporal_ui=False)
            endpoints = stack.start()
            try:
                settings = Settings(
                    DATABASE_URL=endpoints.database_url,
                    REDIS_URL=endpoints.redis_url,
                    TEMPORAL_ADDRESS=endpoints.temporal_address,
                    LOOMWORK_TOKENS=f"bench={TENANT}",
                    LOOMWORK_HOME=Path(tmp),
                )
                calls = {store: args.calls for store in STORES} | {"dynamodb": args.dynamodb_calls}
                asyncio.run(run(settings, stores, calls, f"http://127.0.0.1:{port}"))
            finally:
                stack.stop()
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait()


if __name__ == "__main__":
    main()
