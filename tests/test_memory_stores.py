"""Choosing the memory store: a deployment keeps the store it started with (a switch is
refused with a clear message, not served as an empty memory), and the DynamoDB store
needs its extra."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import aioboto3
import psycopg
import pytest
from botocore.config import Config
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql
from redis.asyncio import Redis

from loomwork.config import Settings
from loomwork.errors import FailedPrecondition
from loomwork.messages import NewMessage, NewThread, Role, TextPart
from loomwork.storage.adapter import WorkingMemoryWrite
from loomwork.storage.database import Database
from loomwork.storage.dynamodb import DynamoMemoryStorage
from loomwork.storage.migrations import apply_migrations
from loomwork.storage.postgres import PostgresMemoryStorage
from loomwork.storage.redis_adapter import RedisMemoryStorage
from loomwork.storage.selection import OpenedStore, claim_memory_store, open_memory_store
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from server.transport.grpc_app import build_grpc_app
from tests.conftest import free_port
from tests.processes import ROOT, UNSET
from tests.store_support import StoreService, database_beside
from tests.support import TEST_SECRET_KEY, unique


async def test_switching_the_store_of_a_deployment_is_refused(
    settings: Settings, redis_store: StoreService
) -> None:
    # The session's deployment started on postgres; the redis store's has its own database.
    with pytest.raises(FailedPrecondition) as err:
        await Runtime.open(settings.model_copy(update={"memory_store": "redis"}), migrate=False)
    assert "memory is in postgres" in err.value.message
    assert "not redis" in err.value.message and "LOOMWORK_MEMORY_STORE" in err.value.message
    back = redis_store.runtime.settings.model_copy(update={"memory_store": "postgres"})
    with pytest.raises(FailedPrecondition) as err:
        await Runtime.open(back, migrate=False)
    assert "memory is in redis" in err.value.message and "not postgres" in err.value.message


def test_loomwork_server_says_why_it_will_not_start(embedded: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(
        DATABASE_URL=embedded["DATABASE_URL"],
        REDIS_URL=embedded["REDIS_URL"],
        TEMPORAL_ADDRESS=embedded["TEMPORAL_ADDRESS"],
        LOOMWORK_HOME=embedded["LOOMWORK_HOME"],
        LOOMWORK_TOKENS="t=tenant",
        LOOMWORK_SECRET_KEY=TEST_SECRET_KEY,
        LOOMWORK_GRPC_ADDRESS="127.0.0.1:0",
        LOOMWORK_HTTP_ADDRESS="127.0.0.1:0",
        LOOMWORK_TASK_QUEUE=unique("refused"),
        LOOMWORK_MEMORY_STORE="dynamodb",
        LOOMWORK_DYNAMODB_TABLE="memory",
    )
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "server"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = " ".join(done.stderr.split())  # as printed, wrapped to the terminal
    assert done.returncode != 0
    assert "memory is in postgres" in said and "not dynamodb table memory" in said
    assert "Traceback" not in said


async def test_threads_in_postgres_before_any_record_keep_memory_there(settings: Settings) -> None:
    """A deployment from before stores could be chosen has its threads in PostgreSQL."""
    assert settings.database_url
    name = unique("loomwork_legacy").replace("-", "_")
    db = Database(await database_beside(settings.database_url, name))
    await db.open()
    try:
        await apply_migrations(db)
        await PostgresMemoryStorage(db).create_thread("t", NewThread(id="old"))
        with pytest.raises(FailedPrecondition) as err:
            await claim_memory_store(db, "redis")
        assert "holds threads already" in err.value.message
        await claim_memory_store(db, "postgres")  # what it was: recorded now
        with pytest.raises(FailedPrecondition):
            await claim_memory_store(db, "redis")
    finally:
        await db.close()
        async with await psycopg.AsyncConnection.connect(
            settings.database_url, autocommit=True
        ) as conn:
            await conn.execute(sql.SQL("drop database {}").format(sql.Identifier(name)))


async def test_dynamodb_without_its_extra_is_a_clear_start_up_error(
    dynamodb_store: StoreService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        sys.modules, "aioboto3", None
    )  # as if `loomwork[dynamodb]` was not installed
    runtime = dynamodb_store.runtime
    with pytest.raises(FailedPrecondition) as err:
        await open_memory_store(runtime.settings, runtime.db)
    assert "aioboto3" in err.value.message
    assert "pip install 'loomwork[dynamodb]'" in err.value.message


async def test_health_is_not_serving_while_the_dynamodb_store_does_not_answer(
    dynamodb_store: StoreService,
) -> None:
    health = health_pb2_grpc.HealthStub(dynamodb_store.channel)
    serving = await health.Check(health_pb2.HealthCheckRequest())
    assert serving.status == health_pb2.HealthCheckResponse.SERVING

    nowhere = f"http://127.0.0.1:{free_port()}"
    quick = Config(connect_timeout=1, retries={"mode": "standard", "max_attempts": 1})
    async with aioboto3.Session().client("dynamodb", endpoint_url=nowhere, config=quick) as client:
        dead = DynamoMemoryStorage(client, table="loomwork-test")
        runtime = dataclasses.replace(
            dynamodb_store.runtime,
            store=OpenedStore(
                dead, "dynamodb table loomwork-test", client.close, ("dynamodb", dead.ping)
            ),
        )
        app = build_grpc_app(runtime, "127.0.0.1:0", health_interval=0.2)
        await app.start()
        try:
            assert app.health.last_problems is not None
            assert [p.split(":")[0] for p in app.health.last_problems] == ["dynamodb"]
        finally:
            await app.stop(grace=1)


async def test_memory_in_the_embedded_valkey_outlives_a_crash_of_the_server(
    tmp_path: Path,
) -> None:
    """`loomwork up`'s Valkey keeps an append-only file: what a write was answered for is
    in it, so a Valkey killed outright (SIGKILL) comes back with the memory."""

    async def stored(url: str, write: bool) -> tuple[list[str], str]:
        client = Redis.from_url(url)
        try:
            storage = RedisMemoryStorage(client)
            if write:
                await storage.create_thread("t", NewThread(id="kept"))
                await storage.append_messages(
                    "t", "kept", [NewMessage(role=Role.USER, parts=[TextPart(text="remember me")])]
                )
                await storage.put_working_memory(
                    "t", "thread", "kept", WorkingMemoryWrite(markdown="# notes")
                )
            messages = await storage.last_messages("t", "kept", 10)
            memory = await storage.get_working_memory("t", "thread", "kept")
            return [m.text for m in messages], memory.markdown if memory else ""
        finally:
            await client.aclose()

    home = tmp_path / "home"
    with EmbeddedStack(home, postgres=False, temporal=False, temporal_ui=False) as stack:
        assert stack.endpoints is not None and stack.endpoints.redis_url
        assert await stored(stack.endpoints.redis_url, write=True) == (["remember me"], "# notes")
        pid = int((home / "valkey" / "valkey.pid").read_text())
        os.kill(pid, signal.SIGKILL)  # no shutdown, no last rewrite of its files
    with EmbeddedStack(home, postgres=False, temporal=False, temporal_ui=False) as stack:
        assert stack.endpoints is not None and stack.endpoints.redis_url
        assert await stored(stack.endpoints.redis_url, write=False) == (["remember me"], "# notes")
