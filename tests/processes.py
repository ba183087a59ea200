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
    one whose first word is `role`); yield their gRPC address and logs once it serves; stop
    them with SIGTERM, each of which must exit cleanly."""
    address = f"127.0.0.1:{free_port()}"
    environment = {k: v for k, v in os.environ.items() if k not in UNSET}
    environment.update(
        DATABASE_URL=embedded["DATABASE_URL"],
        REDIS_URL=embedded["REDIS_URL"],
        TEMPORAL_ADDRESS=embedded["TEMPORAL_ADDRESS"],
        LOOMWORK_HOME=str(tmp_path / "home"),
        LOOMWORK_GRPC_ADDRESS=address,
        LOOMWORK_HTTP_ADDRESS=f"127.0.0.1:{free_port()}",
        LOOMWORK_TASK_QUEUE=unique("processes-queue"),
        LOOMWORK_SECRET_KEY=TEST_SECRET_KEY,
        COLUMNS="200",
    )
    environment.update(env)
    logs = {command[0]: tmp_path / f"{command[0]}.log" for command in commands}
    procs = {
        command[0]: subprocess.Popen(
            [sys.executable, "-m", "server.cli", *command],
            cwd=ROOT,
            env={**environment, **(env_of or {}).get(command[0], {})},
            stdout=logs[command[0]].open("wb"),
            stderr=subprocess.STDOUT,
        )
        for command in commands
    }
    try:
        wait_serving(address, procs, logs)
        yield address, logs
    finally:
        for role, proc in procs.items():
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            assert proc.returncode == 0, f"{role}: {logs[role].read_text()}"


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
