"""`loomwork up` runs its Temporal worker in a process of its own: runs (demo tools and all)
complete there; a worker killed (SIGKILL) is started again, health says NOT_SERVING meanwhile
and SERVING again by itself, and the next run completes; stopping `up` stops the worker; a
worker that cannot start again is given up on, and `up` is told."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx2
import pytest

from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from server.worker_process import WorkerProcess
from tests.conftest import free_port
from tests.processes import loomwork_environment
from tests.support import wait_serving

ROOT = Path(__file__).resolve().parent.parent
POLLS = 600  # looks 0.2 s apart: a generous bound for "this happens", not a timing check


def _until_logged(log: Path, proc: subprocess.Popen[bytes], pattern: str) -> re.Match[str]:
    text = ""
    for _ in range(POLLS):
        text = log.read_text(errors="replace")
        if found := re.search(pattern, text):
            return found
        assert proc.poll() is None, f"loomwork up exited:\n{text}"
        time.sleep(0.2)
    pytest.fail(f"never logged {pattern!r}:\n{text}")


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _sum(address: str) -> agent_pb2.GenerateResponse:
    with grpc.insecure_channel(address) as channel:
        response: agent_pb2.GenerateResponse = agent_pb2_grpc.AgentServiceStub(channel).Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="What is 17 + 25?"),
            metadata=(("authorization", "Bearer dev"),),
            timeout=120,  # an RPC deadline, generous: not a timing check
        )
    return response


def test_up_restarts_its_killed_worker_process_and_runs_go_on(tmp_path: Path) -> None:
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
    worker = 0
    try:
        banner = _until_logged(log, proc, r"(?s)worker +process (\d+), task queue.*Press Ctrl-C")
        first = int(banner.group(1))
        assert first != proc.pid and _parent_of(first) == proc.pid
        wait_serving(address, {"up": proc}, {"up": log})
        # The demo's agent and tools are the worker's: the offline model adds with `add`.
        answer = _sum(address)
        assert answer.run.status == run_pb2.RUN_STATUS_SUCCEEDED, answer.run.error.message
        assert answer.run.output.text == "The sum is 42."

        os.kill(first, signal.SIGKILL)
        _until_logged(log, proc, r"worker died \(killed by SIGKILL\)")
        _until_logged(log, proc, r"worker restarted \(")
        text = log.read_text()
        assert "not serving: worker: the worker process is not running" in text, text
        worker = int(re.findall(r"worker process (\d+) is polling", text)[-1])
        assert worker != first and _running(worker) and not _running(first)
        wait_serving(address, {"up": proc}, {"up": log})

        answer = _sum(address)
        assert answer.run.status == run_pb2.RUN_STATUS_SUCCEEDED, answer.run.error.message
        assert answer.run.output.text == "The sum is 42."
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(90)
    assert proc.returncode == 0, log.read_text()
    assert worker and not _running(worker), "the worker outlived `loomwork up`"


def test_a_worker_that_cannot_start_again_is_given_up_and_stop_is_clean(
    embedded: dict[str, str], tmp_path: Path
) -> None:
    env = loomwork_environment(embedded, tmp_path, LOOMWORK_HTTP_ADDRESS="127.0.0.1:0")
    lines: list[str] = []
    lost: list[str] = []
    worker = WorkerProcess(env, progress=lines.append, on_lost=lost.append)
    worker.restart_delay, worker.restart_attempts = 0.2, 2
    worker.start()
    try:
        first = worker.pid
        assert worker.ready() and _running(first)
        probe = httpx2.get(f"http://{worker.http_address}/healthz", timeout=10)
        assert probe.status_code == 200
        # From now on it meets a setting it refuses at start (and exits 1).
        worker.env = {**env, "LOOMWORK_LOG_FORMAT": "neither-json-nor-console"}
        os.kill(first, signal.SIGKILL)
        for _ in range(POLLS * 2):
            if lost:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the worker was never given up on: {lines}")
        assert lost[0].startswith("worker died and could not be started again (2 tries)"), lost
        assert "worker died (killed by SIGKILL)" in "\n".join(lines)
        assert worker.lost() and not worker.ready()
    finally:
        worker.stop()  # clean: raises nothing, with nothing left to stop
    assert worker.lost(), "given up on, still after the stop"
