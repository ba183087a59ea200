"""`loomwork` processes started as a user starts them (`python -m server.cli <command>`),
against the session's PostgreSQL, Redis and Temporal, on a task queue of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import grpc

from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc
from tests.conftest import free_port
from tests.support import TEST_SECRET_KEY, auth, unique, wait_serving

ROOT = Path(__file__).resolve().parent.parent
# Settings a developer's shell may hold that would change what these processes do.
UNSET = {"OPENAI_API_KEY", "OPENAI_BASE_URL", "LOOMWORK_CHAT_MODEL", "LOOMWORK_DEMO"}


def loomwork_environment(embedded: dict[str, str], tmp_path: Path, **env: str) -> dict[str, str]:
    """The environment of `loomwork` processes against the session's servers, on a gRPC
    address, HTTP address, home and task queue of their own (`env` on top)."""
    environment = {k: v for k, v in os.environ.items() if k not in UNSET}
    environment.update(
        DATABASE_URL=embedded["DATABASE_URL"],
        REDIS_URL=embedded["REDIS_URL"],
        TEMPORAL_ADDRESS=embedded["TEMPORAL_ADDRESS"],
        LOOMWORK_HOME=str(tmp_path / "home"),
        LOOMWORK_GRPC_ADDRESS=f"127.0.0.1:{free_port()}",
        LOOMWORK_HTTP_ADDRESS=f"127.0.0.1:{free_port()}",
        LOOMWORK_TASK_QUEUE=unique("processes-queue"),
        LOOMWORK_SECRET_KEY=TEST_SECRET_KEY,
        COLUMNS="200",
    )
    environment.update(env)
    return environment


def start_loomwork(
    command: list[str], environment: Mapping[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """`loomwork <command>` started as a user starts it, its output (stdout and stderr) to `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", *command],
        cwd=ROOT,
        env=dict(environment),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def stop_loomwork(role: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Stop it with SIGTERM; it must exit cleanly."""
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    assert process.returncode == 0, f"{role}: {log.read_text()}"


@contextmanager
def loomwork_processes(
    embedded: dict[str, str],
    tmp_path: Path,
    commands: list[list[str]],
    *,
    env_of: Mapping[str, Mapping[str, str]] | None = None,
    **env: str,
) -> Iterator[tuple[str, dict[str, Path]]]:
    """Start `loomwork <command>` for each command (`env`: for all, `env_of[role]`: for the
    one whose first word is `role`; a worker's HTTP endpoint, of probes and metrics, gets an
    address of its own); yield their gRPC address and logs once it serves; stop them with
    SIGTERM, each of which must exit cleanly."""
    environment = loomwork_environment(embedded, tmp_path, **env)
    address = environment["LOOMWORK_GRPC_ADDRESS"]
    logs = {command[0]: tmp_path / f"{command[0]}.log" for command in commands}
    own = {"worker": {"LOOMWORK_HTTP_ADDRESS": f"127.0.0.1:{free_port()}"}}
    procs = {
        command[0]: start_loomwork(
            command,
            {**environment, **own.get(command[0], {}), **(env_of or {}).get(command[0], {})},
            logs[command[0]],
        )
        for command in commands
    }
    try:
        wait_serving(address, procs, logs)
        yield address, logs
    finally:
        for role, proc in procs.items():
            stop_loomwork(role, proc, logs[role])


def listed_tools(channel: grpc.Channel, token: str) -> dict[str, agent_pb2.Tool]:
    """Every tool ListTools lists, by name."""
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    tools: dict[str, agent_pb2.Tool] = {}
    page = ""
    while True:
        response = stub.ListTools(
            agent_pb2.ListToolsRequest(page_size=100, page_token=page), metadata=auth(token)
        )
        tools.update({t.name: t for t in response.tools})
        page = response.next_page_token
        if not page:
            return tools


def code_agents(channel: grpc.Channel, token: str) -> set[str]:
    """The agents defined in code (not created by RPC), as ListAgents lists them."""
    response = agent_pb2_grpc.AgentServiceStub(channel).ListAgents(
        agent_pb2.ListAgentsRequest(page_size=100, source=agent_pb2.AGENT_SOURCE_CODE),
        metadata=auth(token),
    )
    return {a.name for a in response.agents}
