"""Tool calls that need approval: the run waits, and resumes by ResumeRun (with edited
arguments) or by a plain Temporal signal."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import struct_pb2

from loomwork.testing import ScriptedToolCall, Turn
from protos.loomwork.v1 import agent_pb2, run_pb2
from tests.support import (
    auth,
    collect_events,
    field_violations,
    generate_until_waiting,
    signal_workflow,
    unique,
    wait_agent_run_finished,
)


async def _wait_waiting(agents, token, run_id: str) -> agent_pb2.AgentRun:
    for _ in range(200):
        try:
            run = (
                await agents.GetRun(
                    agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token)
                )
            ).run
        except grpc.aio.AioRpcError as err:  # the run may not be recorded yet
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
        else:
            if run.status == run_pb2.RUN_STATUS_WAITING:
                return run
        await asyncio.sleep(0.05)
    pytest.fail("the run never waited for approval")


_EMAIL = {"to": "ada@example.com", "subject": "Hi", "body": "Hello Ada"}


async def test_approval_by_resume_run_with_edited_arguments(agents, token, model) -> None:
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("send_email", _EMAIL, id="call_mail")]),
            Turn(text="Sent."),
        ]
    )
    run_id = unique("mail")
    stream = agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="mail Ada", client_run_id=run_id),
        metadata=auth(token),
    )
    collected = asyncio.ensure_future(collect_events(stream))
    waiting = await _wait_waiting(agents, token, run_id)
    [pending] = waiting.pending_approvals
    assert (pending.tool_call_id, pending.tool_name) == ("call_mail", "send_email")
    assert pending.arguments["to"] == "ada@example.com"

    async def resume(*decisions: agent_pb2.ApprovalDecision):
        return await agents.ResumeRun(
            agent_pb2.AgentServiceResumeRunRequest(run_id=run_id, decisions=decisions),
            metadata=auth(token),
        )

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await resume(agent_pb2.ApprovalDecision(tool_call_id="call_other", approve={}))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    bad = struct_pb2.Struct()
    bad.update({**_EMAIL, "to": "not-an-address"})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await resume(
            agent_pb2.ApprovalDecision(
                tool_call_id="call_mail", approve=agent_pb2.ToolCallApproval(edited_arguments=bad)
            )
        )
    assert "decisions[0].approve.edited_arguments" in field_violations(err.value)

    edited = struct_pb2.Struct()
    edited.update({**_EMAIL, "to": "bob@example.com"})
    answer = await resume(
        agent_pb2.ApprovalDecision(
            tool_call_id="call_mail", approve=agent_pb2.ToolCallApproval(edited_arguments=edited)
        )
    )
    assert answer.run.status != run_pb2.RUN_STATUS_WAITING
    events = await collected
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds.index("approval_requested") < kinds.index("approval_resolved")
    resolved = next(e.approval_resolved for e in events if e.HasField("approval_resolved"))
    assert resolved.approved and resolved.arguments_edited
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert not result.is_error and result.result.struct_value["to"] == "bob@example.com"
    assert events[-1].run_finished.output.text == "Sent."


async def test_rejection_by_plain_temporal_signal(agents, token, model, runtime, settings) -> None:
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("send_email", _EMAIL, id="call_x")]),
            Turn(text="Understood, I did not send it."),
        ]
    )
    run_id = unique("mail")
    waiting = await generate_until_waiting(agents, token, run_id, "call_x")
    payload = '{"decisions": [{"tool_call_id": "call_x", "approve": false, "reason": "not now"}]}'
    await signal_workflow(
        settings.temporal_address, waiting.temporal_workflow_id, "resume", payload
    )
    run = await wait_agent_run_finished(agents, token, run_id)
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    rejected = run.output.messages[1].parts[0].tool_result
    assert rejected.is_error and "not now" in rejected.result.string_value
    assert run.output.text == "Understood, I did not send it."
