"""Waits that end, for agent runs: an approval past its timeout (the agent's, or its tool's
when shorter) is rejected and the run goes on; ListRuns says what a waiting run waits on;
a run whose workflow an operator terminated is FAILED with the reason, and its streams end."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from pydantic import BaseModel

from loomwork.errors import NotFound
from loomwork.testing import Delay, ScriptedToolCall, Turn
from loomwork.tools import ToolContext, tool, tool_of
from protos.loomwork.v1 import agent_pb2, run_pb2
from tests.support import auth, collect_events, generate_until_waiting, unique
from tests.test_agents_client_tools import to_the_end, until, weather_tool

_EMAIL = {"to": "ada@example.com", "subject": "Hi", "body": "Hello Ada"}


def _seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=value))
    return duration


async def _create_agent(agents, token: str, tools: list[str], approval_timeout: float) -> str:
    name = unique("patient")
    agent = agent_pb2.Agent(
        name=name,
        instructions="Send mail when asked.",
        tool_names=tools,
        approval_timeout=_seconds(approval_timeout),
    )
    created = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(agent=agent), metadata=auth(token)
    )
    assert created.agent.approval_timeout.ToTimedelta() == timedelta(seconds=approval_timeout)
    return name


async def _get(agents, token: str, run_id: str) -> agent_pb2.AgentRun:
    request = agent_pb2.AgentServiceGetRunRequest(run_id=run_id)
    return (await agents.GetRun(request, metadata=auth(token))).run


async def test_an_approval_past_the_agents_timeout_is_rejected_and_the_run_goes_on(
    agents, token, model
) -> None:
    name = await _create_agent(agents, token, ["send_email"], approval_timeout=1)
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("send_email", _EMAIL, id="late")]),
            Turn(text="Nobody approved, so I did not send it."),
        ]
    )
    run_id = unique("late")
    events = agents.Stream(
        agent_pb2.StreamRequest(agent_name=name, prompt="mail Ada", client_run_id=run_id),
        metadata=auth(token),
    )
    _, requested = await until(events, "approval_requested")
    approval = requested.approval_requested
    deadline = approval.expire_time.ToDatetime() - approval.request_time.ToDatetime()
    assert deadline == timedelta(seconds=1)
    rest = await to_the_end(events)
    [resolved] = [e.approval_resolved for e in rest if e.HasField("approval_resolved")]
    assert not resolved.approved
    assert resolved.reason == "no decision within 0:00:01"
    [result] = [e.tool_result for e in rest if e.HasField("tool_result")]
    assert result.is_error and "did not run: no decision within" in result.result.string_value
    assert rest[-1].run_finished.output.text == "Nobody approved, so I did not send it."
    # The model read the rejection as the call's result.
    assert "no decision within" in model.requests[1].messages[-1]["content"]
    run = await _get(agents, token, run_id)
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED and not run.pending_approvals
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agents.ResumeRun(
            agent_pb2.AgentServiceResumeRunRequest(
                run_id=run_id,
                decisions=[agent_pb2.ApprovalDecision(tool_call_id="late", approve={})],
            ),
            metadata=auth(token),
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


class _Payment(BaseModel):
    amount: float


async def _pay(args: _Payment, ctx: ToolContext) -> dict[str, Any]:
    return {"paid": args.amount}


@pytest.fixture(scope="module")
def quick_tool(runtime) -> str:
    """A tool whose approval lapses after a second, declared with `@tool`."""
    declared = tool_of(
        tool(
            name="pay_quickly",
            description="Pay an amount; a person approves each payment within a second.",
            requires_approval=True,
            approval_timeout=timedelta(seconds=1),
        )(_pay)
    )
    assert declared is not None
    try:
        runtime.tools.get(declared.name)
    except NotFound:
        runtime.tools.register(declared)
    return declared.name


async def test_a_tools_own_approval_timeout_wins_when_it_is_shorter(
    agents, token, model, quick_tool
) -> None:
    listed = await agents.ListTools(agent_pb2.ListToolsRequest(), metadata=auth(token))
    [declared] = [t for t in listed.tools if t.name == quick_tool]
    assert declared.requires_approval
    assert declared.approval_timeout.ToTimedelta() == timedelta(seconds=1)
    name = await _create_agent(agents, token, [quick_tool], approval_timeout=3600)
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall(quick_tool, {"amount": 12.5}, id="pay")]),
            Turn(text="The payment was not approved in time."),
        ]
    )
    run_id = unique("pay")
    waiting = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name=name, prompt="pay", client_run_id=run_id),
            metadata=auth(token),
        )
    ).run
    [pending] = waiting.pending_approvals
    assert pending.expire_time.ToDatetime() - pending.request_time.ToDatetime() == timedelta(
        seconds=1
    )
    events = await collect_events(
        agents.WatchRun(agent_pb2.AgentServiceWatchRunRequest(run_id=run_id), metadata=auth(token))
    )
    [resolved] = [e.approval_resolved for e in events if e.HasField("approval_resolved")]
    assert not resolved.approved and resolved.reason == "no decision within 0:00:01"
    assert events[-1].run_finished.output.text == "The payment was not approved in time."


def test_an_approval_timeout_needs_an_approval() -> None:
    with pytest.raises(TypeError, match="requires_approval"):
        tool(description="Pays.", approval_timeout=timedelta(seconds=1))(_pay)


async def _listed_waiting(agents, token: str, run_id: str) -> agent_pb2.AgentRun | None:
    """The run as ListRuns lists it among WAITING runs, asked again for a while (Temporal
    visibility lags a little); None if it never shows there."""
    request = agent_pb2.AgentServiceListRunsRequest(
        statuses=[run_pb2.RUN_STATUS_WAITING], page_size=1000
    )
    for _ in range(100):
        listed = {r.id: r for r in (await agents.ListRuns(request, metadata=auth(token))).runs}
        if run_id in listed:
            return listed[run_id]
        await asyncio.sleep(0.1)
    return None


async def _gone_from_waiting(agents, token: str, run_id: str) -> bool:
    request = agent_pb2.AgentServiceListRunsRequest(
        statuses=[run_pb2.RUN_STATUS_WAITING], page_size=1000
    )
    for _ in range(100):
        listed = {r.id for r in (await agents.ListRuns(request, metadata=auth(token))).runs}
        if run_id not in listed:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_list_runs_says_what_each_waiting_run_waits_on(agents, token, model) -> None:
    model.set_script(
        [
            Turn(
                tool_calls=[
                    ScriptedToolCall("send_email", _EMAIL, id="mail"),
                    ScriptedToolCall("get_weather", {"city": "Oslo"}, id="sky"),
                ]
            ),
            Turn(text="Done."),
        ]
    )
    run_id = unique("waits")
    waiting = (
        await agents.Generate(
            agent_pb2.GenerateRequest(
                agent_name="assistant",
                prompt="mail Ada and check the weather",
                client_run_id=run_id,
                client_tools=[weather_tool()],
            ),
            metadata=auth(token),
        )
    ).run
    assert waiting.status == run_pb2.RUN_STATUS_WAITING
    listed = await _listed_waiting(agents, token, run_id)
    assert listed is not None, "the waiting run is not listed among WAITING runs"
    assert [(p.tool_call_id, p.tool_name) for p in listed.pending_approvals] == [
        ("mail", "send_email")
    ]
    assert [(c.tool_call_id, c.tool_name) for c in listed.pending_tool_calls] == [
        ("sky", "get_weather")
    ]
    assert listed.pending_approvals[0].request_time.ToDatetime() == (
        waiting.pending_approvals[0].request_time.ToDatetime()
    )
    await agents.ResumeRun(
        agent_pb2.AgentServiceResumeRunRequest(
            run_id=run_id,
            decisions=[
                agent_pb2.ApprovalDecision(
                    tool_call_id="mail", reject=agent_pb2.ToolCallRejection(reason="no")
                )
            ],
        ),
        metadata=auth(token),
    )
    # Decided: only the client tool call is left to wait on.
    for _ in range(100):
        listed = await _listed_waiting(agents, token, run_id)
        assert listed is not None
        if not listed.pending_approvals:
            break
        await asyncio.sleep(0.1)
    assert [c.tool_call_id for c in listed.pending_tool_calls] == ["sky"]
    assert not listed.pending_approvals
    result = agent_pb2.ClientToolResult(tool_call_id="sky", error="offline")
    await agents.SubmitToolResults(
        agent_pb2.SubmitToolResultsRequest(run_id=run_id, results=[result]), metadata=auth(token)
    )
    assert await _gone_from_waiting(agents, token, run_id)


async def test_a_run_an_operator_terminated_is_failed_with_the_reason(
    agents, token, model, runtime
) -> None:
    model.set_script(
        [Turn(tool_calls=[ScriptedToolCall("send_email", _EMAIL, id="stop")]), Turn(text="-")]
    )
    run_id = unique("stopped")
    waiting = await generate_until_waiting(agents, token, run_id, "stop")
    watch = asyncio.ensure_future(
        collect_events(
            agents.WatchRun(
                agent_pb2.AgentServiceWatchRunRequest(run_id=run_id),
                metadata=auth(token),
                timeout=60,
            )
        )
    )
    await asyncio.sleep(0.5)  # the watcher has read what there is and waits
    handle = runtime.temporal.get_workflow_handle(waiting.temporal_workflow_id)
    await handle.terminate(reason="stopped by the operator")

    run = await _get(agents, token, run_id)
    assert run.status == run_pb2.RUN_STATUS_FAILED
    assert run.error.reason == "RUN_TERMINATED"
    assert run.error.code == grpc.StatusCode.ABORTED.value[0]
    assert "stopped by the operator" in run.error.message
    assert run.model == "scripted" and run.input_messages and not run.pending_approvals
    assert run.HasField("end_time")

    # The open stream ends with the run's terminal event, and so does a new one.
    events = await asyncio.wait_for(watch, 30)
    assert events[-1].HasField("run_failed")
    assert "stopped by the operator" in events[-1].run_failed.message
    again = await collect_events(
        agents.WatchRun(agent_pb2.AgentServiceWatchRunRequest(run_id=run_id), metadata=auth(token))
    )
    assert [e.event_id for e in again] == [e.event_id for e in events]
    assert again[-1].run_failed.reason == "RUN_TERMINATED"
    assert await _gone_from_waiting(agents, token, run_id)


async def test_generate_answers_when_the_runs_workflow_is_terminated(
    agents, token, model, runtime
) -> None:
    model.set_script([Delay(30, then=Turn(text="too late"))])
    run_id = unique("cut")
    answer = asyncio.ensure_future(
        agents.Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="think", client_run_id=run_id),
            metadata=auth(token),
            timeout=60,
        )
    )
    for _ in range(100):
        with contextlib.suppress(grpc.aio.AioRpcError):  # not recorded yet
            running = await _get(agents, token, run_id)
            if running.status == run_pb2.RUN_STATUS_RUNNING:
                break
        await asyncio.sleep(0.05)
    handle = runtime.temporal.get_workflow_handle(running.temporal_workflow_id)
    await handle.terminate(reason="cut short")
    run = (await asyncio.wait_for(answer, 30)).run
    assert run.status == run_pb2.RUN_STATUS_FAILED
    assert run.error.reason == "RUN_TERMINATED" and "cut short" in run.error.message
