"""`loomwork up` end to end, as a user runs it: start, use, stop, start again, data still there."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from protos.loomwork.v1 import memory_pb2, memory_pb2_grpc, message_pb2
from tests.conftest import free_port
from tests.support import TEST_SECRET_KEY, auth, wait_serving
from workflows.stack_check import StackCheckInput, StackCheckResult, StackCheckWorkflow

ROOT = Path(__file__).resolve().parent.parent


def _start(home: Path, address: str, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "TEMPORAL_ADDRESS",
            "LOOMWORK_TOKENS",
            "LOOMWORK_SECRET_KEY",
        }
    }
    env.update(LOOMWORK_HOME=str(home), LOOMWORK_GRPC_ADDRESS=address, COLUMNS="200", **extra)
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "up", "--no-ui"],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _wait_up(proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # The last line of the "Loomwork is up" block: the whole block is in the log.
        if "Press Ctrl-C to stop" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"loomwork up exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"loomwork up did not come up in {timeout}s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"loomwork up did not stop on SIGTERM:\n{log.read_text()}")
    assert proc.returncode == 0, log.read_text()


def test_up_serves_and_data_survives_a_restart(tmp_path: Path) -> None:
    home, log = tmp_path / "home", tmp_path / "up.log"
    address = f"127.0.0.1:{free_port()}"
    proc = _start(home, address, log, LOOMWORK_POSTGRES_SETTINGS="work_mem=24MB")
    try:
        _wait_up(proc, log)
        text = log.read_text()
        assert address in text and "dev → tenant default" in text
        database = re.search(r"PostgreSQL\s+(postgresql://\S+)", text)
        assert database is not None, text
        with psycopg.connect(database[1]) as conn:  # the operator's setting reached it
            assert conn.execute("show work_mem").fetchone() == ("24MB",)
        assert "dev-other → tenant other" in text  # a second tenant, for the demo's isolation
        # With no LOOMWORK_SECRET_KEY, `up` makes a development key under its home, and says so.
        key_line = next(line for line in text.splitlines() if "secret key   " in line)
        assert "development key" in key_line and "LOOMWORK_SECRET_KEY" in key_line, key_line
        assert (home / "secret.key").is_file()
        with grpc.insecure_channel(address) as channel:
            stub = memory_pb2_grpc.MemoryServiceStub(channel)
            thread = (
                stub.CreateThread(
                    memory_pb2.CreateThreadRequest(
                        thread_id="kept", thread=memory_pb2.Thread(title="survives")
                    ),
                    metadata=auth("dev"),
                )
            ).thread
            stub.AppendMessages(
                memory_pb2.AppendMessagesRequest(
                    thread_id=thread.id,
                    messages=[
                        message_pb2.Message(
                            role=message_pb2.ROLE_USER,
                            parts=[message_pb2.Part(text=message_pb2.TextPart(text="remember me"))],
                        )
                    ],
                ),
                metadata=auth("dev"),
            )
    finally:
        _stop(proc, log)

    log = tmp_path / "up-again.log"
    proc = _start(home, address, log)
    try:
        _wait_up(proc, log)
        with grpc.insecure_channel(address) as channel:
            stub = memory_pb2_grpc.MemoryServiceStub(channel)
            got = stub.GetThread(
                memory_pb2.GetThreadRequest(thread_id="kept"), metadata=auth("dev")
            )
            assert got.thread.title == "survives"
            listed = stub.ListMessages(
                memory_pb2.ListMessagesRequest(thread_id="kept"), metadata=auth("dev")
            )
            assert [m.parts[0].text.text for m in listed.messages] == ["remember me"]
            with pytest.raises(grpc.RpcError) as other:  # the dev stack's second tenant
                stub.GetThread(
                    memory_pb2.GetThreadRequest(thread_id="kept"), metadata=auth("dev-other")
                )
            assert other.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        _stop(proc, log)


def test_up_with_taken_grpc_port_fails_with_a_clear_message(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        env = dict(os.environ, LOOMWORK_HOME=str(tmp_path / "h"), LOOMWORK_GRPC_ADDRESS=address)
        result = subprocess.run(
            [sys.executable, "-m", "server.cli", "up", "--no-ui"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "already in use" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_up_with_malformed_postgres_settings_says_how_to_write_them(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        LOOMWORK_HOME=str(tmp_path / "h"),
        LOOMWORK_GRPC_ADDRESS=f"127.0.0.1:{free_port()}",
        LOOMWORK_POSTGRES_SETTINGS="shared_buffers 2GB",
    )
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "up", "--no-ui"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "LOOMWORK_POSTGRES_SETTINGS" in output and "name=value" in output, output
    assert "Traceback" not in output


def test_server_and_worker_processes_against_external_services(embedded, tmp_path: Path) -> None:
    """The production entry points: `loomwork server` and `loomwork worker`, configured only by
    DATABASE_URL / REDIS_URL / TEMPORAL_ADDRESS (here: the session's servers)."""
    address = f"127.0.0.1:{free_port()}"
    env = dict(
        os.environ,
        DATABASE_URL=embedded["DATABASE_URL"],
        REDIS_URL=embedded["REDIS_URL"],
        TEMPORAL_ADDRESS=embedded["TEMPORAL_ADDRESS"],
        LOOMWORK_TOKENS="ops=ops-tenant",
        LOOMWORK_SECRET_KEY=TEST_SECRET_KEY,
        LOOMWORK_GRPC_ADDRESS=address,
        LOOMWORK_TASK_QUEUE="loomwork-process-test",
    )
    logs = {role: tmp_path / f"{role}.log" for role in ("server", "worker")}
    procs = {
        role: subprocess.Popen(
            [sys.executable, "-m", "server.cli", role],
            cwd=ROOT,
            env=env,
            stdout=logs[role].open("wb"),
            stderr=subprocess.STDOUT,
        )
        for role in ("server", "worker")
    }
    try:
        wait_serving(address, procs, logs, timeout=60)
        with grpc.insecure_channel(address) as channel:
            stub = memory_pb2_grpc.MemoryServiceStub(channel)
            created = stub.CreateThread(memory_pb2.CreateThreadRequest(), metadata=auth("ops"))
            assert created.thread.id.startswith("thr_")
        # The worker process serves its task queue: a workflow sent there completes.
        result = asyncio.run(_stack_check(embedded["TEMPORAL_ADDRESS"], "loomwork-process-test"))
        assert result.report.schema_version >= 1
        assert procs["worker"].poll() is None, logs["worker"].read_text()
    finally:
        for role, proc in procs.items():
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            assert proc.returncode == 0, f"{role}: {logs[role].read_text()}"


async def _stack_check(temporal_address: str, task_queue: str) -> StackCheckResult:
    client = await Client.connect(temporal_address, data_converter=pydantic_data_converter)
    return await client.execute_workflow(
        StackCheckWorkflow.run,
        StackCheckInput(requested_by="test_up"),
        id=f"stack-check/{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
        result_type=StackCheckResult,
        execution_timeout=timedelta(seconds=60),
    )


def test_server_without_external_services_says_what_is_missing(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "TEMPORAL_ADDRESS"}
    }
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "worker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "DATABASE_URL" in output and "loomwork up" in output and "Traceback" not in output


@pytest.mark.parametrize("role", ["server", "worker"])
def test_server_and_worker_refuse_to_start_without_a_secret_key(
    embedded, tmp_path: Path, role: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LOOMWORK_SECRET_KEY"}
    env.update(
        DATABASE_URL=embedded["DATABASE_URL"],
        REDIS_URL=embedded["REDIS_URL"],
        TEMPORAL_ADDRESS=embedded["TEMPORAL_ADDRESS"],
        LOOMWORK_TOKENS="ops=ops-tenant",
        LOOMWORK_HOME=str(tmp_path / "home"),
        COLUMNS="200",
    )
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", role],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "needs LOOMWORK_SECRET_KEY" in output and "Traceback" not in output
    assert not (tmp_path / "home" / "secret.key").exists()  # no development key made
