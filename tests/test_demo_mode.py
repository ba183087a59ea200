"""Demo mode: the demo tools and agent and the example workflows exist only in a process that
runs in demo mode (`loomwork up --demo`, LOOMWORK_DEMO=true), as the real RPCs list them.

The test session itself runs in demo mode (tests/conftest.py); the other processes here are
started as a user starts them, against the session's PostgreSQL, Redis and Temporal.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2, workflow_pb2, workflow_pb2_grpc
from tests.conftest import free_port
from tests.support import auth, unique, wait_serving

ROOT = Path(__file__).resolve().parent.parent
DEMO_TOOLS = {"add", "word_count", "save_note", "send_email"}
REAL_TOOLS = {"update_working_memory", "rag_query"}
EXAMPLE_WORKFLOWS = {"order-pipeline", "ticket-triage", "expense-approval"}
# Settings a developer's shell may hold that would change what these processes do.
UNSET = {"OPENAI_API_KEY", "OPENAI_BASE_URL", "LOOMWORK_CHAT_MODEL", "LOOMWORK_DEMO"}


def _tools(channel: grpc.Channel, token: str) -> dict[str, str]:
    """Every tool ListTools lists: name -> description."""
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    tools: dict[str, str] = {}
    page = ""
    while True:
        response = stub.ListTools(
            agent_pb2.ListToolsRequest(page_size=100, page_token=page), metadata=auth(token)
        )
        tools.update({t.name: t.description for t in response.tools})
        page = response.next_page_token
        if not page:
            return tools


def _code_agents(channel: grpc.Channel, token: str) -> set[str]:
    """The agents defined in code (not created by RPC), as ListAgents lists them."""
    response = agent_pb2_grpc.AgentServiceStub(channel).ListAgents(
        agent_pb2.ListAgentsRequest(page_size=100, source=agent_pb2.AGENT_SOURCE_CODE),
        metadata=auth(token),
    )
    return {a.name for a in response.agents}


def _workflows(channel: grpc.Channel, token: str) -> set[str]:
    stub = workflow_pb2_grpc.WorkflowServiceStub(channel)
    ids: set[str] = set()
    page = ""
    while True:
        response = stub.ListWorkflows(
            workflow_pb2.ListWorkflowsRequest(page_size=100, page_token=page), metadata=auth(token)
        )
        ids.update(w.id for w in response.workflows)
        page = response.next_page_token
        if not page:
            return ids


def _generate(channel: grpc.Channel, token: str, agent: str, prompt: str) -> agent_pb2.AgentRun:
    return (
        agent_pb2_grpc.AgentServiceStub(channel)
        .Generate(
            agent_pb2.GenerateRequest(agent_name=agent, prompt=prompt),
            metadata=auth(token),
            timeout=60,
        )
        .run
    )


@contextmanager
def _processes(
    embedded: dict[str, str], tmp_path: Path, commands: list[list[str]], **env: str
) -> Iterator[tuple[str, dict[str, Path]]]:
    """`loomwork <command>` processes on the session's servers, on a task queue of their
    own, with no model configured; yields their gRPC address and logs once it serves."""
    address = f"127.0.0.1:{free_port()}"
    environment = {k: v for k, v in os.environ.items() if k not in UNSET}
    environment.update(
        DATABASE_URL=embedded["DATABASE_URL"],
        REDIS_URL=embedded["REDIS_URL"],
        TEMPORAL_ADDRESS=embedded["TEMPORAL_ADDRESS"],
        LOOMWORK_HOME=str(tmp_path / "home"),
        LOOMWORK_GRPC_ADDRESS=address,
        LOOMWORK_HTTP_ADDRESS=f"127.0.0.1:{free_port()}",
        LOOMWORK_TASK_QUEUE=unique("demo-mode-queue"),
        COLUMNS="200",
        **env,
    )
    logs = {command[0]: tmp_path / f"{command[0]}.log" for command in commands}
    procs = {
        command[0]: subprocess.Popen(
            [sys.executable, "-m", "server.cli", *command],
            cwd=ROOT,
            env=environment,
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


def _wait_logged(log: Path, text: str) -> str:
    deadline = time.monotonic() + 30
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{log.read_text()}"
        time.sleep(0.1)
    return log.read_text(errors="replace")


async def test_the_test_session_runs_in_demo_mode(grpc_address: str, token: str) -> None:
    # The session's server runs on this event loop: the blocking calls go to a thread.
    await asyncio.to_thread(_assert_serves_the_demo, grpc_address, token)


def _assert_serves_the_demo(address: str, token: str) -> None:
    with grpc.insecure_channel(address) as channel:
        tools = _tools(channel, token)
        assert set(tools) >= DEMO_TOOLS | REAL_TOOLS
        assert "sends nothing" in tools["send_email"]
        assert "assistant" in _code_agents(channel, token)
        assert _workflows(channel, token) >= EXAMPLE_WORKFLOWS


def test_production_entry_points_load_no_demo_or_test_code() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, server.cli, server.process, server.worker, server.transport.grpc_app\n"
            "print(sorted(m for m in sys.modules"
            " if m.startswith(('loomwork.demo', 'loomwork.testing'))))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


def test_without_demo_mode_there_is_no_demo_and_no_model(
    embedded: dict[str, str], tmp_path: Path
) -> None:
    """A plain `loomwork up` with no model configured: no tool that pretends to act, no
    demo agent, no example workflow; an agent run fails saying what to configure."""
    tenant_token = unique("plain")
    with _processes(
        embedded, tmp_path, [["up", "--no-ui"]], LOOMWORK_TOKENS=f"{tenant_token}=plain"
    ) as (address, logs):
        banner = _wait_logged(logs["up"], "Press Ctrl-C to stop")
        model_line = next(line for line in banner.splitlines() if "model " in line)
        assert "OPENAI_API_KEY" in model_line and "--demo" in model_line, model_line
        assert "example workflows" not in banner  # the banner's demo mode line
        with grpc.insecure_channel(address) as channel:
            assert set(_tools(channel, tenant_token)) == REAL_TOOLS
            assert _code_agents(channel, tenant_token) == set()
            assert _workflows(channel, tenant_token) == set()

            agent_pb2_grpc.AgentServiceStub(channel).CreateAgent(
                agent_pb2.CreateAgentRequest(
                    agent=agent_pb2.Agent(name="helper", instructions="Help.")
                ),
                metadata=auth(tenant_token),
            )
            run = _generate(channel, tenant_token, "helper", "hi")
        walk = subprocess.run(
            [sys.executable, "-m", "server.cli", "demo", "--address", address],
            cwd=ROOT,
            env={**os.environ, "LOOMWORK_TOKEN": tenant_token},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert walk.returncode == 1
    assert "not in demo mode" in walk.stderr and "loomwork up --demo" in walk.stderr, walk.stderr
    assert run.status == run_pb2.RUN_STATUS_FAILED
    assert run.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "loomwork up --demo", "LOOMWORK_DEMO"):
        assert name in run.error.message, run.error.message


def test_a_server_and_a_worker_in_demo_mode_serve_the_demo_on_the_offline_model(
    embedded: dict[str, str], tmp_path: Path
) -> None:
    """LOOMWORK_DEMO=true on a server and a worker started apart: both register the demo,
    and with no model configured the worker's agent runs use the offline model."""
    with (
        _processes(
            embedded,
            tmp_path,
            [["server"], ["worker"]],
            LOOMWORK_DEMO="true",
            LOOMWORK_TOKENS="demo=demo",
        ) as (address, _),
        grpc.insecure_channel(address) as channel,
    ):
        tools = _tools(channel, "demo")
        assert set(tools) == DEMO_TOOLS | REAL_TOOLS
        assert "sends nothing" in tools["send_email"]
        assert _code_agents(channel, "demo") == {"assistant"}
        assert _workflows(channel, "demo") == EXAMPLE_WORKFLOWS
        run = _generate(channel, "demo", "assistant", "What is 17 + 25?")
        assert run.status == run_pb2.RUN_STATUS_SUCCEEDED, run.error.message
        assert run.output.text == "The sum is 42."
