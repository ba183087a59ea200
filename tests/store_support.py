"""Memory stores for tests: a whole service (runtime, worker, gRPC server) over one store,
and the local DynamoDB-compatible endpoint (moto's server) the DynamoDB store runs on."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import grpc
import psycopg
from psycopg import conninfo, sql

from loomwork.config import Settings
from protos.loomwork.v1 import agent_pb2_grpc, memory_pb2_grpc
from server.embedded.home import pick_free_port
from server.runtime import Runtime
from server.transport.grpc_app import build_grpc_app
from tests.support import RunningWorker, unique

# The DynamoDB store's table in tests (moto starts empty every session).
DYNAMODB_TABLE = "loomwork-test"

# `moto_server` as its CLI runs it, but answering one request at a time: moto's threaded
# server applies a TransactWriteItems without isolation from concurrent requests, which
# real DynamoDB (serializable transactions) never does.
_MOTO_SERVER = """
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import MotoRequestHandler
app = DomainDispatcherApplication(create_backend_app)
run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=False, request_handler=MotoRequestHandler)
"""


@contextmanager
def moto_server() -> Iterator[str]:
    """A `moto_server` process on a free local port: its endpoint URL."""
    port = pick_free_port(set())
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOTO_SERVER, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class StoreService:
    """Loomwork with its memory in one store, as a calling service reaches it."""

    name: str
    runtime: Runtime
    channel: grpc.aio.Channel

    @property
    def memory(self) -> memory_pb2_grpc.MemoryServiceStub:
        return memory_pb2_grpc.MemoryServiceStub(self.channel)

    @property
    def agents(self) -> agent_pb2_grpc.AgentServiceStub:
        return agent_pb2_grpc.AgentServiceStub(self.channel)


async def database_beside(database_url: str, name: str) -> str:
    """The URL of database `name` on the server of `database_url`, created if missing: a
    deployment of its own (its vectors, its recorded memory store)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute("select 1 from pg_database where datname = %s", (name,))
        if await cur.fetchone() is None:
            await conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return conninfo.make_conninfo(database_url, dbname=name)


@asynccontextmanager
async def store_service(settings: Settings, store: str) -> AsyncIterator[StoreService]:
    """Loomwork over `store` in a database of its own, with its own worker (task queue)
    and gRPC server; `settings` are the session's."""
    assert settings.database_url
    own = settings.model_copy(
        update={
            "memory_store": store,
            "database_url": await database_beside(settings.database_url, f"loomwork_{store}"),
            "task_queue": unique(f"{store}-queue"),
            "dynamodb_table": DYNAMODB_TABLE,
        }
    )
    runtime = await Runtime.open(own)
    worker = RunningWorker(runtime)
    app = build_grpc_app(runtime, "127.0.0.1:0", health_interval=0.3)
    try:
        await app.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield StoreService(store, runtime, channel)
    finally:
        await app.stop(grace=1.0)
        await worker.stop()
        await runtime.close()
