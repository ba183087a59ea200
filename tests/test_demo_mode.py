"""Demo mode: the demo tools and agent and the example workflows exist only in a process that
runs in demo mode (`loomwork up --demo`, LOOMWORK_DEMO=true), as the real RPCs list them.

The test session itself runs in demo mode (tests/conftest.py); the other processes here are
started as a user starts them, against the session's PostgreSQL, Redis and Temporal.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2, workflow_pb2, workflow_pb2_grpc
from tests.processes import ROOT, code_agents, listed_tools, loomwork_processes
from tests.support import auth, unique

DEMO_TOOLS = {"add", "word_count", "save_note", "send_email"}
REAL_TOOLS = {"update_working_memory", "rag_query"}
EXAMPLE_WORKFLOWS = {"order-pipeline", "ticket-triage", "expense-approval"}


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


def _wait_logged(log: Path, text: str) -> str:
    for _ in range(300):  # polled for up to ~30 s
        if text in log.read_text(errors="replace"):
            return log.read_text(errors="replace")
        time.sleep(0.1)
    pytest.fail(f"{text!r} never logged:\n{log.read_text()}")


async def test_the_test_session_runs_in_demo_mode(grpc_address: str, token: str) -> None:
    # The session's server runs on this event loop: the blocking calls go to a thread.
    await asyncio.to_thread(_assert_serves_the_demo, grpc_address, token)


def _assert_serves_the_demo(address: str, token: str) -> None:
    with grpc.insecure_channel(address) as channel:
        tools = {n: t.description for n, t in listed_tools(channel, token).items()}
        assert set(tools) >= DEMO_TOOLS | REAL_TOOLS
        assert "sends nothing" in tools["send_email"]
        assert "assistant" in code_agents(channel, token)
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
    with loomwork_processes(
        embedded, tmp_path, [["up", "--no-ui"]], LOOMWORK_TOKENS=f"{tenant_token}=plain:admin"
    ) as (address, logs):
        banner = _wait_logged(logs["up"], "Press Ctrl-C to stop")
        model_line = next(line for line in banner.splitlines() if "model " in line)
        assert "OPENAI_API_KEY" in model_line and "--demo" in model_line, model_line
        assert "example workflows" not in banner  # the banner's demo mode line
        with grpc.insecure_channel(address) as channel:
            assert set(listed_tools(channel, tenant_token)) == REAL_TOOLS
            assert code_agents(channel, tenant_token) == set()
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
        loomwork_processes(
            embedded,
            tmp_path,
            [["server"], ["worker"]],
            LOOMWORK_DEMO="true",
            LOOMWORK_TOKENS="demo=demo:admin",
        ) as (address, _),
        grpc.insecure_channel(address) as channel,
    ):
        tools = {n: t.description for n, t in listed_tools(channel, "demo").items()}
        # ... and the demo's agent, as other agents may call it.
        assert set(tools) == DEMO_TOOLS | REAL_TOOLS | {"agent:assistant"}
        assert "sends nothing" in tools["send_email"]
        assert code_agents(channel, "demo") == {"assistant"}
        assert _workflows(channel, "demo") == EXAMPLE_WORKFLOWS
        run = _generate(channel, "demo", "assistant", "What is 17 + 25?")
        assert run.status == run_pb2.RUN_STATUS_SUCCEEDED, run.error.message
        assert run.output.text == "The sum is 42."
