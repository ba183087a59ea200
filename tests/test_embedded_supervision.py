"""The embedded stack keeps its servers running: each one killed (SIGKILL) comes back on its
port with its data while health says NOT_SERVING and then SERVING again by itself; stopping
is clean after a server died, and after one died for good (it could not start again)."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from loomwork.config import Settings
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from server.embedded import EmbeddedEndpoints, EmbeddedStack
from server.runtime import Runtime
from server.transport.grpc_app import build_grpc_app
from tests.conftest import free_port
from tests.support import wait_serving

ROOT = Path(__file__).resolve().parent.parent
WAIT = 90.0  # generous upper bound for "this comes back", never a timing assertion
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _pid(home: Path, server: str) -> int:
    if server == "postgres":
        return int((home / "postgres" / "postmaster.pid").read_text().split()[0])
    return int((home / server / f"{server}.pid").read_text())


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def _until(check: Callable[[], object], what: str) -> None:
    """Wait until `check()` (run in a thread) returns without raising."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            await asyncio.to_thread(check)
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} never came back: {exc}") from exc
        await asyncio.sleep(0.2)


@dataclass
class WatchedStack:
    stack: EmbeddedStack
    endpoints: EmbeddedEndpoints
    lines: list[str]
    health: health_pb2_grpc.HealthStub

    @property
    def home(self) -> Path:
        return self.stack.home


@pytest.fixture
async def watched(settings: Settings, tmp_path: Path) -> AsyncIterator[WatchedStack]:
    """A stack of its own, its servers watched, with a gRPC server (health) over it."""
    lines: list[str] = []
    stack = EmbeddedStack(tmp_path / "home", temporal_ui=False, on_progress=lines.append)
    stack.restart_delay = 2.0  # long enough for health to see the server gone
    endpoints = await asyncio.to_thread(stack.start)
    try:
        own = settings.model_copy(
            update={
                "database_url": endpoints.database_url,
                "redis_url": endpoints.redis_url,
                "temporal_address": endpoints.temporal_address,
                "task_queue": f"supervision-{uuid.uuid4().hex[:8]}",
            }
        )
        runtime = await Runtime.open(own)
        try:
            app = build_grpc_app(runtime, "127.0.0.1:0", health_interval=0.3)
            await app.start()
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                    yield WatchedStack(stack, endpoints, lines, health_pb2_grpc.HealthStub(channel))
            finally:
                await app.stop(grace=1.0)
        finally:
            await runtime.close()
    finally:
        await asyncio.to_thread(stack.stop)


async def _health_dips_and_recovers(
    health: health_pb2_grpc.HealthStub, kill: Callable[[], None]
) -> None:
    """Kill a server; health says NOT_SERVING, then SERVING again by itself."""
    statuses = health.Watch(health_pb2.HealthCheckRequest(), timeout=WAIT)
    seen = [(await anext(aiter(statuses))).status]
    assert seen == [SERVING]
    kill()
    async for response in statuses:
        seen.append(response.status)
        if response.status == SERVING:
            break
    statuses.cancel()
    assert seen == [SERVING, NOT_SERVING, SERVING]


async def test_each_server_killed_comes_back_on_its_port_with_its_data(
    watched: WatchedStack,
) -> None:
    ep = watched.endpoints
    assert ep.database_url and ep.redis_url and ep.temporal_address
    with psycopg.connect(ep.database_url) as conn:
        conn.execute("create table kept (body text)")
        conn.execute("insert into kept values ('a row')")
    with redis.Redis.from_url(ep.redis_url) as r:
        r.set("kept", "a key")
    client = await Client.connect(ep.temporal_address)
    handle: WorkflowHandle[object, object] = await client.start_workflow(
        "NoWorkerRunsThis", id=f"kept-{uuid.uuid4().hex[:8]}", task_queue="nobody-polls"
    )

    def postgres_answers() -> None:
        with psycopg.connect(ep.database_url or "", connect_timeout=2) as conn:
            row = conn.execute("select body from kept").fetchone()
        assert row == ("a row",)

    def valkey_answers() -> None:
        with redis.Redis.from_url(ep.redis_url or "", socket_timeout=2) as r:
            assert r.get("kept") == b"a key"
            assert r.config_get("appendonly") == {"appendonly": "yes"}  # still persisting

    def temporal_answers() -> None:
        description = asyncio.run(_describe(ep.temporal_address or "", handle.id))
        assert description == (WorkflowExecutionStatus.RUNNING, handle.result_run_id)

    for server, answers in (
        ("valkey", valkey_answers),
        ("postgres", postgres_answers),
        ("temporal", temporal_answers),
    ):
        before = _pid(watched.home, server)
        await _health_dips_and_recovers(
            watched.health, functools.partial(os.kill, before, signal.SIGKILL)
        )
        await _until(answers, server)
        assert _pid(watched.home, server) != before

        def logged(server: str = server) -> None:
            assert any(line.startswith(f"{server} restarted") for line in watched.lines)

        await _until(logged, f"{server}'s restart line")
        died = [line for line in watched.lines if line.startswith(f"{server} died (")]
        assert died and died[0].endswith("; restarting it in 2.0s"), watched.lines
    assert watched.stack.endpoints == ep  # the same ports throughout
    assert watched.stack.lost == {}
    await asyncio.to_thread(watched.stack.stop)  # clean: raises nothing
    assert not (watched.home / "postgres" / "postmaster.pid").exists()


async def _describe(address: str, workflow_id: str) -> tuple[object, str]:
    client = await Client.connect(address)
    description = await client.get_workflow_handle(workflow_id).describe()
    return description.status, description.run_id


def test_stop_is_clean_after_every_server_died(tmp_path: Path) -> None:
    """Without a watch, nothing restarts them: stop() still ends cleanly."""
    home = tmp_path / "home"
    lines: list[str] = []
    stack = EmbeddedStack(home, temporal_ui=False, supervise=False, on_progress=lines.append)
    stack.start()
    try:
        for server in ("valkey", "postgres", "temporal"):
            os.kill(_pid(home, server), signal.SIGKILL)
        time.sleep(1.0)
    finally:
        stack.stop()  # used to raise EmbeddedError("pg_ctl stop failed") here
    assert any(line.startswith("postgres was not running") for line in lines), lines
    # The next start finds the stale postmaster.pid and starts PostgreSQL on the same data.
    with EmbeddedStack(home, temporal_ui=False) as again:
        assert again.endpoints is not None and again.endpoints.database_url
        with psycopg.connect(again.endpoints.database_url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)


def test_a_server_that_cannot_start_again_is_given_up_and_stop_is_clean(tmp_path: Path) -> None:
    lost: list[str] = []
    stack = EmbeddedStack(
        tmp_path / "home", postgres=False, temporal=False, on_server_lost=lost.append
    )
    stack.restart_delay, stack.restart_attempts = 0.3, 2
    ep = stack.start()
    assert ep.redis_url
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        os.kill(_pid(stack.home, "valkey"), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while True:  # take its port before the watch starts it again
            try:
                squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                squatter.bind(("127.0.0.1", _port(ep.redis_url)))
                squatter.listen()
                break
            except OSError:
                assert time.monotonic() < deadline, "valkey's port never came free"
                time.sleep(0.01)
        deadline = time.monotonic() + WAIT
        while not lost:
            assert time.monotonic() < deadline, "never given up"
            time.sleep(0.1)
        assert lost[0].startswith("valkey died and could not be started again (2 tries)")
        assert set(stack.lost) == {"valkey"}
    finally:
        squatter.close()
        stack.stop()  # clean: raises nothing


def test_loomwork_up_restarts_each_killed_server_and_keeps_serving(tmp_path: Path) -> None:
    """Under `loomwork up` (demo mode: its offline model): each embedded server killed is
    started again, logged, health serves again by itself, and an agent run (worker,
    Temporal, Redis, Postgres) still completes."""
    home, log = tmp_path / "home", tmp_path / "up.log"
    address = f"127.0.0.1:{free_port()}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "TEMPORAL_ADDRESS", "LOOMWORK_TOKENS"}
        and not k.startswith(("OPENAI_", "LOOMWORK_CHAT_MODEL"))
    }
    env.update(
        LOOMWORK_HOME=str(home),
        LOOMWORK_GRPC_ADDRESS=address,
        LOOMWORK_HTTP_ADDRESS=f"127.0.0.1:{free_port()}",
        LOOMWORK_DEMO="true",
        COLUMNS="200",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "up", "--no-ui"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_serving(address, {"up": proc}, {"up": log})
        for server in ("valkey", "postgres", "temporal"):
            os.kill(_pid(home, server), signal.SIGKILL)
            deadline = time.monotonic() + WAIT
            while f"{server} restarted on its ports and data" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            assert f"{server} died (" in log.read_text()
            wait_serving(address, {"up": proc}, {"up": log})
        with grpc.insecure_channel(address) as channel:
            answer = agent_pb2_grpc.AgentServiceStub(channel).Generate(
                agent_pb2.GenerateRequest(agent_name="assistant", prompt="still there?"),
                metadata=(("authorization", "Bearer dev"),),
                timeout=WAIT,
            )
        assert answer.run.status == run_pb2.RUN_STATUS_SUCCEEDED
        assert "still there?" in answer.run.output.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()
