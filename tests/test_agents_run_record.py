"""What a run carries from its start: run_started first (with the input messages and their
ids), the caller's metadata (bounded, passed to tools), the model's sampling settings, and the
run record GetRun and Generate answer with (thread, model, input, metadata, times)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from pydantic import BaseModel

from loomwork.agents.definitions import AgentDefinition, ModelSettings
from loomwork.errors import NotFound
from loomwork.testing import ScriptedToolCall, Turn
from loomwork.tools import Tool, ToolContext
from protos.loomwork.v1 import agent_pb2, run_pb2
from tests.support import auth, field_violations, unique


class _NoArgs(BaseModel):
    pass


async def _echo_metadata(args: _NoArgs, ctx: ToolContext) -> dict[str, Any]:
    return {"metadata": ctx.metadata}


@pytest.fixture(scope="session")
def ticket_agent(runtime) -> str:
    """An agent whose one tool answers with the run's metadata, sampling with top_p 0.3."""
    try:
        runtime.tools.get("echo_metadata")
    except NotFound:
        runtime.tools.register(
            Tool(
                name="echo_metadata",
                description="Answers with the caller's metadata for this run.",
                args=_NoArgs,
                run=_echo_metadata,
            )
        )
    try:
        runtime.agents.get("ticket-agent")
    except NotFound:
        runtime.agents.register(
            AgentDefinition(
                name="ticket-agent",
                instructions="Look up the ticket, then answer.",
                tool_names=["echo_metadata"],
                model_settings=ModelSettings(temperature=0.2, top_p=0.3),
            )
        )
    return "ticket-agent"


def _metadata() -> Any:
    request = agent_pb2.StreamRequest()
    request.metadata.update({"ticket": "T-42", "priority": 2})
    return request.metadata


async def test_a_run_announces_itself_first_and_carries_its_record(
    agents, token, model, ticket_agent
) -> None:
    model.set_script(
        [Turn(tool_calls=[ScriptedToolCall(name="echo_metadata")]), Turn(text="Ticket T-42.")]
    )
    thread_id = unique("thread")
    events = [
        r.event
        async for r in agents.Stream(
            agent_pb2.StreamRequest(
                agent_name=ticket_agent,
                prompt="What is my ticket?",
                thread_id=thread_id,
                metadata=_metadata(),
            ),
            metadata=auth(token),
        )
    ]
    run_id = events[0].run_id
    started = events[0].run_started
    assert events[0].HasField("run_started") and events[0].event_id == 1
    assert [m.id for m in started.input_messages] == [f"{run_id}.in.0"]
    assert started.input_messages[0].parts[0].text.text == "What is my ticket?"
    assert started.input_messages[0].thread_id == thread_id
    assert sum(e.HasField("run_started") for e in events) == 1

    # The tool saw the caller's metadata; the model was asked with the agent's sampling.
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert json_format.MessageToDict(result.result) == {
        "metadata": {"ticket": "T-42", "priority": 2}
    }
    assert model.requests[0].body["top_p"] == pytest.approx(0.3)
    assert model.requests[0].body["temperature"] == pytest.approx(0.2)

    run = (
        await agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token)
        )
    ).run
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert (run.thread_id, run.model) == (thread_id, "scripted")
    assert [m.id for m in run.input_messages] == [f"{run_id}.in.0"]
    assert json_format.MessageToDict(run.metadata) == {"ticket": "T-42", "priority": 2}
    created, began, ended = (
        t.ToDatetime() for t in (run.create_time, run.start_time, run.end_time)
    )
    assert created <= began <= ended
    assert run.output.text == "Ticket T-42."


async def test_a_waiting_run_reports_its_record_too(agents, token, model) -> None:
    model.set_script(
        [
            Turn(
                tool_calls=[
                    ScriptedToolCall(
                        name="send_email",
                        arguments={"to": "a@example.com", "subject": "Hi", "body": "hi"},
                    )
                ]
            )
        ]
    )
    request = agent_pb2.GenerateRequest(
        agent_name="assistant", prompt="Mail Ada.", metadata=_metadata()
    )
    run = (await agents.Generate(request, metadata=auth(token))).run
    try:
        assert run.status == run_pb2.RUN_STATUS_WAITING
        assert run.model == "scripted"
        assert [m.parts[0].text.text for m in run.input_messages] == ["Mail Ada."]
        assert json_format.MessageToDict(run.metadata) == {"ticket": "T-42", "priority": 2}
        assert run.create_time.seconds and run.start_time.seconds
        assert not run.end_time.seconds
    finally:
        await agents.CancelRun(
            agent_pb2.AgentServiceCancelRunRequest(run_id=run.id), metadata=auth(token)
        )


async def test_a_repeated_client_run_id_is_announced_once(agents, token, model) -> None:
    model.set_script([Turn(text="Once.")])
    request = agent_pb2.StreamRequest(
        agent_name="assistant", prompt="hi", client_run_id=unique("job")
    )
    first = [r.event async for r in agents.Stream(request, metadata=auth(token))]
    again = [r.event async for r in agents.Stream(request, metadata=auth(token))]
    assert [e.event_id for e in again] == [e.event_id for e in first]
    assert [e.HasField("run_started") for e in again].count(True) == 1
    assert len(model.requests) == 1


async def test_metadata_over_16_kib_is_rejected_before_anything_starts(
    agents, token, model
) -> None:
    request = agent_pb2.GenerateRequest(
        agent_name="assistant", prompt="hi", client_run_id=unique("big")
    )
    request.metadata.update({"blob": "x" * 17_000})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agents.Generate(request, metadata=auth(token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata" in field_violations(err.value)
    assert model.requests == []
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=request.client_run_id),
            metadata=auth(token),
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
