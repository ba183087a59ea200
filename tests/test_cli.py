"""The client commands of the `loomwork` CLI (clients/cli/) against the real server.

The server runs in the session's event loop, so each CLI invocation (which runs its own
`asyncio.run`) happens in a worker thread while the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from clients.cli import register
from clients.cli.messages import message_from_json
from loomwork.demo.offline_model import offline_turn
from loomwork.testing import Delay, ScriptedModelServer, Turn
from protos.loomwork.v1 import message_pb2
from tests.mcp_servers import ThreadedMcpServer, notes_server

app = typer.Typer()
register(app)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def env(grpc_address: str, token: str) -> dict[str, str]:
    return {"LOOMWORK_GRPC_ADDRESS": grpc_address, "LOOMWORK_TOKEN": token, "COLUMNS": "200"}


async def _cli(env: dict[str, str], *args: str, input: str | None = None) -> Result:
    runner = CliRunner(env=env)
    return await asyncio.to_thread(runner.invoke, app, list(args), input=input)


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    assert result.exception is None, result.output
    return result


def _json(result: Result) -> Any:
    return json.loads(_ok(result).stdout)


def _failed(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.output


async def test_threads_create_get_list_update_delete(env: dict[str, str]) -> None:
    resource = _unique("res")
    created = _json(
        await _cli(
            env,
            *("threads", "create", "--resource", resource, "--title", "CLI thread"),
            *("--metadata", '{"team": "cli", "n": 2}', "--json"),
        )
    )
    thread_id = created["id"]
    assert thread_id.startswith("thr_")
    assert created["resource_id"] == resource
    assert created["metadata"] == {"team": "cli", "n": 2}
    assert created["message_count"] == 0

    got = _json(await _cli(env, "threads", "get", thread_id, "--json"))
    assert (got["id"], got["title"]) == (thread_id, "CLI thread")
    table = _ok(await _cli(env, "threads", "get", thread_id)).stdout
    assert thread_id in table and "CLI thread" in table

    chosen = _unique("my-thread")
    _ok(await _cli(env, "threads", "create", "--resource", resource, "--id", chosen))

    listed = _json(await _cli(env, "threads", "list", "--resource", resource, "--json"))
    assert [t["id"] for t in listed["threads"]] == [chosen, thread_id]
    one = _json(await _cli(env, "threads", "list", "--resource", resource, "-n", "1", "--json"))
    assert len(one["threads"]) == 1 and one["next_page_token"]
    every = _json(
        await _cli(env, "threads", "list", "--resource", resource, "-n", "1", "--all", "--json")
    )
    assert [t["id"] for t in every["threads"]] == [chosen, thread_id]
    table = _ok(await _cli(env, "threads", "list", "--resource", resource)).stdout
    assert thread_id in table and chosen in table

    updated = _json(await _cli(env, "threads", "update", thread_id, "--title", "renamed", "--json"))
    assert updated["title"] == "renamed"
    assert updated["metadata"] == {"team": "cli", "n": 2}

    for tid in (thread_id, chosen):
        assert tid in _ok(await _cli(env, "threads", "delete", tid)).stdout
    output = _failed(await _cli(env, "threads", "get", thread_id))
    assert "error: NOT_FOUND" in output


async def test_messages_append_and_list(env: dict[str, str]) -> None:
    thread_id = _json(await _cli(env, "threads", "create", "--json"))["id"]
    message_id = _unique("m")

    appended = _json(
        await _cli(
            env,
            *("messages", "append", thread_id, "--role", "system", "--text", "be brief"),
            *("--id", message_id, "--json"),
        )
    )
    assert [(m["id"], m["role"]) for m in appended["messages"]] == [(message_id, "ROLE_SYSTEM")]

    batch = [
        {"role": "user", "text": "weather in Paris?"},
        {
            "role": "ROLE_ASSISTANT",
            "parts": [
                {
                    "tool_call": {
                        "tool_call_id": "c1",
                        "tool_name": "get_weather",
                        "arguments": {"city": "Paris"},
                    }
                }
            ],
        },
        {
            "role": "tool",
            "parts": [{"tool_result": {"tool_call_id": "c1", "result": {"temp": 18}}}],
        },
    ]
    out = _json(
        await _cli(
            env, "messages", "append", thread_id, "--file", "-", "--json", input=json.dumps(batch)
        )
    )
    assert [m["role"] for m in out["messages"]] == ["ROLE_USER", "ROLE_ASSISTANT", "ROLE_TOOL"]

    # appending the same id again stores nothing new
    _ok(
        await _cli(
            env,
            "messages",
            "append",
            thread_id,
            "--role",
            "system",
            "--text",
            "be brief",
            "--id",
            message_id,
        )
    )
    listed = _json(await _cli(env, "messages", "list", thread_id, "--json"))
    messages = listed["messages"]
    assert len(messages) == 4
    assert messages[0]["id"] == message_id
    assert messages[1]["parts"] == [{"text": {"text": "weather in Paris?"}}]
    assert messages[2]["parts"][0]["tool_call"]["arguments"] == {"city": "Paris"}
    assert messages[3]["parts"][0]["tool_result"]["result"] == {"temp": 18}
    assert listed["next_page_token"] == ""

    last = _json(await _cli(env, "messages", "list", thread_id, "--last", "2", "--json"))
    assert [m["id"] for m in last["messages"]] == [m["id"] for m in messages[2:]]
    page = _json(await _cli(env, "messages", "list", thread_id, "--limit", "3", "--json"))
    assert len(page["messages"]) == 3 and page["next_page_token"]

    table = _ok(await _cli(env, "messages", "list", thread_id)).stdout
    assert "weather in Paris?" in table and "get_weather" in table and message_id in table
    _ok(await _cli(env, "threads", "delete", thread_id))


async def test_bad_call_names_the_field_without_traceback(env: dict[str, str]) -> None:
    thread_id = _json(await _cli(env, "threads", "create", "--json"))["id"]
    no_role = json.dumps([{"text": "who am I?"}])
    output = _failed(await _cli(env, "messages", "append", thread_id, "--file", "-", input=no_role))
    assert "error: INVALID_ARGUMENT" in output
    assert "messages[0].role" in output

    output = _failed(await _cli(env, "threads", "create", "--id", "no spaces allowed"))
    assert "error: INVALID_ARGUMENT" in output
    _ok(await _cli(env, "threads", "delete", thread_id))


async def test_client_side_bad_parameters_exit_2(env: dict[str, str]) -> None:
    for args in (
        ("threads", "create", "--metadata", "[1, 2]"),
        ("threads", "create", "--metadata", "{not json"),
        ("messages", "append", "thr_x", "--role", "robot", "--text", "hi"),
        ("messages", "append", "thr_x"),
        ("threads", "update", "thr_x"),
    ):
        result = await _cli(env, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output


async def test_wrong_token_and_unreachable_server(env: dict[str, str]) -> None:
    output = _failed(await _cli(env, "threads", "--token", "nope", "list"))
    assert "error: UNAUTHENTICATED" in output
    assert "LOOMWORK_TOKEN" in output

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    output = _failed(await _cli(env, "threads", "--address", f"127.0.0.1:{port}", "list"))
    assert "error: UNAVAILABLE" in output
    assert "loomwork up" in output


async def test_other_tenant_cannot_read(env: dict[str, str], other_token: str) -> None:
    thread_id = _json(await _cli(env, "threads", "create", "--json"))["id"]
    output = _failed(await _cli(env, "threads", "--token", other_token, "get", thread_id))
    assert "error: NOT_FOUND" in output
    _ok(await _cli(env, "threads", "delete", thread_id))


async def test_demo_runs_to_completion(
    env: dict[str, str], other_token: str, model_server: ScriptedModelServer
) -> None:
    model_server.set_script(offline_turn)  # what `loomwork up` uses without an API key
    try:
        result = _ok(await _cli(env, "demo", "--other-token", other_token))
    finally:
        model_server.set_script(None)
    output = result.stdout
    assert "idempotent" in output
    assert "INVALID_ARGUMENT" in output and "messages[0].role" in output
    assert "✗" not in output, output  # every expectation of the demo held
    assert "semantic recall" in output and "neighbouring message" in output
    assert "model calls tool add" in output and "The sum is 42." in output
    assert "run is WAITING: send_email" in output and "RUN_STATUS_WAITING" in output
    assert "email to ada@example.com is sent" in output
    assert "succeeded notify" in output and "confirmation for ord-" in output
    flat = " ".join(output.split())  # long lines wrap at the console's width
    # Guardrails: the card number never reached the model; the injection ended the run.
    assert "the model was given: (offline model) You said: My card is [REDACTED:card]" in flat
    assert "blocked by prompt_injection" in flat and "run ended RUN_STATUS_BLOCKED" in flat
    # ForkRun of the `add` run from step 2: step 1 and its tool call reused, not made again.
    assert re.search(r"forked from run_\w+: steps \[1\] reused, 0 tool call", flat), flat
    # A client tool: the run waited for the caller's answer, and the model read it.
    assert "the run waits for the caller: caller_location({})" in flat
    assert '"city": "Lisbon"' in flat and "The tool answered:" in flat
    assert "reused ['validate', 'process', 'store'], ran ['notify']" in flat  # ForkRun
    assert re.search(r"ListRuns by schedule: ([2-9]|\d\d+) runs started by demo-orders-", flat)
    assert "skipped escalate" in output and "skipped general" in output
    assert "suspended approve waiting for:" in output and "paid by Linus" in output
    assert "best match temporal" in output  # hybrid search found the crash document
    assert "citation [1] → looms" in output
    assert "answer: A loom weaves thread into cloth. [1]" in output  # no "# Looms" heading
    assert "demo finished" in output


def test_message_from_json_forms() -> None:
    short = message_from_json({"role": "assistant", "text": "hi", "id": "m1"})
    assert (short.role, short.id, short.parts[0].text.text) == (
        message_pb2.ROLE_ASSISTANT,
        "m1",
        "hi",
    )
    full = message_from_json(
        {"role": "ROLE_TOOL", "parts": [{"tool_result": {"tool_call_id": "c"}}]}
    )
    assert full.role == message_pb2.ROLE_TOOL
    with pytest.raises(ValueError, match="message 3"):
        message_from_json({"role": "user", "parts": [{"nope": {}}]}, 3)
    with pytest.raises(ValueError, match="unknown role"):
        message_from_json({"role": "robot", "text": "x"})


async def test_workflow_commands(env: dict[str, str]) -> None:
    listed = _ok(await _cli(env, "workflows", "list")).stdout
    assert "order-pipeline" in listed and "validate → process → store → notify" in listed
    shown = _ok(await _cli(env, "workflows", "show", "expense-approval")).stdout
    assert "approve" in shown and "can suspend" in shown
    expense = '{"employee": "Grace", "amount": 500, "reason": "laptop"}'
    run = _json(
        await _cli(env, "workflows", "start", "expense-approval", "--input", expense, "--json")
    )
    run_id = run["id"]
    for _ in range(100):
        got = _json(await _cli(env, "workflows", "get", run_id, "--json"))
        if got["status"] == "WORKFLOW_RUN_STATUS_SUSPENDED":
            break
        await asyncio.sleep(0.1)
    assert got["status"] == "WORKFLOW_RUN_STATUS_SUSPENDED"
    for _ in range(100):  # visibility catches up a moment later
        listed = _ok(
            await _cli(env, "workflows", "runs", "--workflow", "expense-approval", "-n", "1000")
        ).stdout
        row = next((line for line in listed.splitlines() if run_id in line), "")
        if "SUSPENDED" in row:
            break
        await asyncio.sleep(0.1)
    assert "SUSPENDED" in row and row.rstrip(" │").endswith("approve")  # what it waits on
    bad = _failed(await _cli(env, "workflows", "resume", run_id, "approve", "--data", "{}"))
    assert "INVALID_ARGUMENT" in bad and "resume_data.approved" in bad
    resumed = _ok(
        await _cli(
            env,
            "workflows",
            "resume",
            run_id,
            "approve",
            "--data",
            '{"approved": true, "approver": "Linus"}',
        )
    ).stdout
    assert "resumed approve" in resumed
    watched = _ok(await _cli(env, "workflows", "watch", run_id)).stdout
    assert "suspended approve" in watched and "run finished SUCCEEDED" in watched
    shown = _ok(await _cli(env, "workflows", "get", run_id)).stdout
    assert "SUCCEEDED" in shown and "paid by Linus" in shown


async def test_schedule_commands(env: dict[str, str]) -> None:
    schedule_id = _unique("cli-nightly")
    order = json.dumps(
        {
            "customer": "Ada",
            "country": "DE",
            "lines": [{"sku": "x", "quantity": 1, "unit_price": 10}],
        }
    )
    created = _json(
        await _cli(
            env,
            "schedules",
            "create",
            schedule_id,
            "--workflow",
            "order-pipeline",
            "--input",
            order,
            "--cron",
            "0 2 * * *",
            "--time-zone",
            "Europe/Paris",
            "--overlap",
            "buffer-one",
            "--paused",
            "--json",
        )
    )
    assert created["id"] == schedule_id and created["paused"] is True
    assert created["overlap_policy"] == "SCHEDULE_OVERLAP_POLICY_BUFFER_ONE"
    bad = _failed(
        await _cli(
            env,
            "schedules",
            "create",
            _unique("bad"),
            "--workflow",
            "order-pipeline",
            "--input",
            order,
            "--cron",
            "0 2 * * *",
            "--time-zone",
            "Nowhere/City",
        )
    )
    assert "INVALID_ARGUMENT" in bad and "schedule.time_zone" in bad
    for _ in range(100):  # visibility catches up a moment later
        listed = _ok(await _cli(env, "schedules", "list")).stdout
        if schedule_id in listed:
            break
        await asyncio.sleep(0.1)
    row = next(line for line in listed.splitlines() if schedule_id in line)
    assert "workflow order-pipeline" in row and "paused" in row
    assert "triggered" in _ok(await _cli(env, "schedules", "trigger", schedule_id)).stdout
    for _ in range(100):
        runs = _ok(await _cli(env, "workflows", "runs", "--schedule", schedule_id)).stdout
        if f"sch-{schedule_id}-" in runs:
            break
        await asyncio.sleep(0.1)
    assert f"sch-{schedule_id}-" in runs
    unpaused = _ok(await _cli(env, "schedules", "pause", schedule_id, "--unpause")).stdout
    assert "active" in unpaused
    assert "deleted" in _ok(await _cli(env, "schedules", "delete", schedule_id)).stdout
    gone = _failed(await _cli(env, "schedules", "get", schedule_id))
    assert "NOT_FOUND" in gone


async def test_agent_commands(
    env: dict[str, str], model_server: ScriptedModelServer, channel, token: str
) -> None:
    from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2
    from tests.support import auth

    listed = _ok(await _cli(env, "agents", "list")).stdout
    assert "assistant" in listed and "send_email" in listed
    model_server.set_script(offline_turn)
    try:
        ran = _ok(await _cli(env, "agents", "run", "assistant", "Please add 2 and 40")).stdout
        assert "tool call add" in ran and "The sum is 42." in ran and "SUCCEEDED" in ran

        # A run that needs approval streams until a person decides (here: by RPC).
        run_id = f"cli-{uuid.uuid4().hex[:8]}"
        running = asyncio.ensure_future(
            _cli(env, "agents", "run", "assistant", "Email ada@example.com: hi", "--id", run_id)
        )
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        call_id = ""
        for _ in range(200):  # by RPC: a second CLI call would fight the first for stdout
            try:
                got = await stub.GetRun(
                    agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token)
                )
            except grpc.aio.AioRpcError:
                got = None  # not recorded yet
            if got is not None and got.run.status == run_pb2.RUN_STATUS_WAITING:
                call_id = got.run.pending_approvals[0].tool_call_id
                break
            await asyncio.sleep(0.1)
        assert call_id
        await stub.ResumeRun(
            agent_pb2.AgentServiceResumeRunRequest(
                run_id=run_id,
                decisions=[agent_pb2.ApprovalDecision(tool_call_id=call_id, approve={})],
            ),
            metadata=auth(token),
        )
        streamed = _ok(await running).stdout
        assert "waiting for approval of send_email" in streamed
        assert "email to ada@example.com is sent" in streamed
        shown = _ok(await _cli(env, "agents", "get", run_id)).stdout
        assert "SUCCEEDED" in shown and "is sent" in shown
    finally:
        model_server.set_script(None)


async def test_a_followed_run_outlives_the_call_deadline(
    env: dict[str, str], model_server: ScriptedModelServer
) -> None:
    """`--timeout` bounds each call, not a run the command follows to its end."""
    model_server.set_script([Delay(2.0, then=Turn(text="slow but sure"))])
    try:
        ran = await _cli(env, "agents", "--timeout", "0.5", "run", "assistant", "take your time")
    finally:
        model_server.set_script(None)
    assert "slow but sure" in _ok(ran).stdout


def test_a_pending_run_is_described_with_what_to_do() -> None:
    from datetime import timedelta

    from clients.cli.agents import describe_event
    from protos.loomwork.v1 import agent_pb2

    event = agent_pb2.AgentRunEvent(event_id=2, run_id="run_x")
    event.run_pending.task_queue = "loomwork"
    event.run_pending.waited.FromTimedelta(timedelta(seconds=10.2))
    line = describe_event(event) or ""
    assert "waiting for a worker" in line and "in 10 s" in line
    assert "task queue loomwork" in line and "loomwork worker" in line

    from clients.cli.workflows import describe_event as describe_workflow_event
    from protos.loomwork.v1 import workflow_pb2

    run_event = workflow_pb2.WorkflowRunEvent(event_id=2, run_id="wfr_x")
    run_event.run_pending.task_queue = "loomwork"
    run_event.run_pending.waited.FromTimedelta(timedelta(seconds=10.2))
    assert describe_workflow_event(run_event) == line


async def test_mcp_server_commands(env: dict[str, str], tmp_path: Path) -> None:
    served = ThreadedMcpServer(
        notes_server("notes", tmp_path / "notes.jsonl"), require_header=("x-api-key", "k1")
    ).start()
    name = _unique("cli")[:20]
    try:
        added = _ok(
            await _cli(env, "mcp", "add", name, served.url, "--header", "x-api-key=k1")
        ).stdout
        assert f"mcp:{name}/save_note" in added and f"mcp:{name}/refuse" in added
        listed = _json(await _cli(env, "mcp", "list", "--json"))
        (mine,) = [s for s in listed if s["name"] == name]
        assert mine["url"] == served.url and mine["headers"] == {}  # never returned
        assert {t["name"] for t in mine["tools"]} == {"save_note", "refuse"}
        shown = _json(await _cli(env, "mcp", "show", name, "--json"))
        assert shown["source"] == "MCP_SERVER_SOURCE_TENANT"
        refreshed = _json(await _cli(env, "mcp", "refresh", name, "--json"))
        assert refreshed["list_time"] >= shown["list_time"]
        assert name in _ok(await _cli(env, "mcp", "list")).stdout
    finally:
        served.stop()
    # The server is gone: refreshing says where it could not be reached.
    assert served.url in _failed(await _cli(env, "mcp", "refresh", name))
    _ok(await _cli(env, "mcp", "remove", name))
    assert "NOT_FOUND" in _failed(await _cli(env, "mcp", "show", name))
    bad_header = await _cli(env, "mcp", "add", name, served.url, "--header", "no-equals")
    assert bad_header.exit_code == 2 and "NAME=VALUE" in bad_header.output


def test_a_client_tool_call_is_described_as_waiting_for_the_caller() -> None:
    from clients.cli.agents import describe_event
    from protos.loomwork.v1 import agent_pb2

    event = agent_pb2.AgentRunEvent(event_id=5, run_id="run_x")
    event.tool_call_requested.tool_call_id = "call_7"
    event.tool_call_requested.tool_name = "get_weather"
    event.tool_call_requested.arguments.update({"city": "Paris"})
    line = describe_event(event) or ""
    assert "waiting for the caller" in line and "get_weather" in line
    assert '{"city":"Paris"}' in line and "call_7" in line
