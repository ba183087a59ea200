"""Agent runs: listing through Temporal visibility, thread resolution, read-only memory and
structured output streamed as partial objects."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import jsonschema
import pytest
from google.protobuf import json_format, struct_pb2

from loomwork.testing import ScriptedToolCall, Turn
from protos.loomwork.v1 import agent_pb2, memory_pb2, message_pb2, run_pb2
from tests.support import auth, field_violations, unique


def _struct(value: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def _texts(message: message_pb2.Message) -> str:
    return "".join(p.text.text for p in message.parts if p.HasField("text"))


async def _generate(agents, token, **fields) -> agent_pb2.AgentRun:
    request = agent_pb2.GenerateRequest(agent_name=fields.pop("agent_name", "assistant"), **fields)
    return (await agents.Generate(request, metadata=auth(token))).run


async def _list_until(agents, token, request, expected: int) -> list[agent_pb2.AgentRun]:
    """Visibility is eventually consistent: ask until `expected` runs are listed."""
    runs: list[agent_pb2.AgentRun] = []
    for _ in range(100):
        runs = list((await agents.ListRuns(request, metadata=auth(token))).runs)
        if len(runs) >= expected:
            return runs
        await asyncio.sleep(0.1)
    return runs


# -- ListRuns


async def test_list_runs_filters_by_resource_thread_status_and_pages(
    agents, token, other_token, model
) -> None:
    resource = unique("lister")
    model.set_script(
        [
            Turn(text="one"),
            Turn(text="two"),
            Turn(
                tool_calls=[
                    ScriptedToolCall(
                        "send_email", {"to": "a@b.c", "subject": "s", "body": "b"}, id="c1"
                    )
                ]
            ),
        ]
    )
    first = await _generate(agents, token, prompt="1", resource_id=resource)
    second = await _generate(agents, token, prompt="2", resource_id=resource)
    stream = agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="mail", resource_id=resource),
        metadata=auth(token),
    )
    waiting = None
    async for response in stream:
        if response.event.HasField("approval_requested"):
            waiting = (
                await agents.GetRun(
                    agent_pb2.AgentServiceGetRunRequest(run_id=response.event.run_id),
                    metadata=auth(token),
                )
            ).run
            break
    stream.cancel()
    assert waiting is not None and waiting.status == run_pb2.RUN_STATUS_WAITING

    by_resource = agent_pb2.AgentServiceListRunsRequest(resource_id=resource)
    runs = await _list_until(agents, token, by_resource, 3)
    assert {r.id for r in runs} == {first.id, second.id, waiting.id}
    listed = {r.id: r for r in runs}
    assert listed[first.id].thread_id == first.thread_id
    assert listed[first.id].agent_name == "assistant"
    assert listed[first.id].resource_id == resource
    assert listed[first.id].temporal_workflow_id == first.temporal_workflow_id
    assert listed[first.id].create_time.seconds > 0

    only_thread = await _list_until(
        agents,
        token,
        agent_pb2.AgentServiceListRunsRequest(thread_id=second.thread_id),
        1,
    )
    assert [r.id for r in only_thread] == [second.id]

    in_waiting = await _list_until(
        agents,
        token,
        agent_pb2.AgentServiceListRunsRequest(
            resource_id=resource, statuses=[run_pb2.RUN_STATUS_WAITING]
        ),
        1,
    )
    assert [(r.id, r.status) for r in in_waiting] == [(waiting.id, run_pb2.RUN_STATUS_WAITING)]
    succeeded = await _list_until(
        agents,
        token,
        agent_pb2.AgentServiceListRunsRequest(
            resource_id=resource, statuses=[run_pb2.RUN_STATUS_SUCCEEDED]
        ),
        2,
    )
    assert {r.id for r in succeeded} == {first.id, second.id}
    assert {r.status for r in succeeded} == {run_pb2.RUN_STATUS_SUCCEEDED}

    # Cancelled, the waiting run's status follows.
    await agents.CancelRun(
        agent_pb2.AgentServiceCancelRunRequest(run_id=waiting.id), metadata=auth(token)
    )
    canceled = await _list_until(
        agents,
        token,
        agent_pb2.AgentServiceListRunsRequest(
            resource_id=resource, statuses=[run_pb2.RUN_STATUS_CANCELED]
        ),
        1,
    )
    assert [r.id for r in canceled] == [waiting.id]

    seen: list[str] = []
    page_token = ""
    for _ in range(5):
        page = await agents.ListRuns(
            agent_pb2.AgentServiceListRunsRequest(
                resource_id=resource, page_size=2, page_token=page_token
            ),
            metadata=auth(token),
        )
        assert len(page.runs) <= 2
        seen += [r.id for r in page.runs]
        page_token = page.next_page_token
        if not page_token:
            break
    assert sorted(seen) == sorted({first.id, second.id, waiting.id})

    theirs = await agents.ListRuns(by_resource, metadata=auth(other_token))
    assert list(theirs.runs) == []


async def test_list_runs_validates_its_input(agents, token) -> None:
    cases = [
        (agent_pb2.AgentServiceListRunsRequest(page_size=5000), "page_size"),
        (agent_pb2.AgentServiceListRunsRequest(agent_name="no spaces"), "agent_name"),
        (agent_pb2.AgentServiceListRunsRequest(thread_id="a b"), "thread_id"),
        (agent_pb2.AgentServiceListRunsRequest(statuses=[42]), "statuses[0]"),
        (agent_pb2.AgentServiceListRunsRequest(page_token="garbage"), "page_token"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agents.ListRuns(request, metadata=auth(token))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in field_violations(err.value), field
    # A resource id with quotes is a value, not query syntax.
    odd = await agents.ListRuns(
        agent_pb2.AgentServiceListRunsRequest(resource_id="o'brien\" OR 1=1"),
        metadata=auth(token),
    )
    assert list(odd.runs) == []


# -- thread resolution and read-only memory


async def test_thread_resolution_latest_and_session(agents, memory_stub, token, model) -> None:
    resource = unique("resolver")
    model.set_script([Turn(text=f"answer {i}") for i in range(6)])
    latest = agent_pb2.THREAD_RESOLUTION_LATEST
    first = await _generate(
        agents, token, prompt="a", resource_id=resource, thread_resolution=latest
    )
    assert first.thread_id  # none existed: a new one
    again = await _generate(
        agents, token, prompt="b", resource_id=resource, thread_resolution=latest
    )
    assert again.thread_id == first.thread_id
    fresh = await _generate(
        agents,
        token,
        prompt="c",
        resource_id=resource,
        thread_resolution=agent_pb2.THREAD_RESOLUTION_NEW,
    )
    assert fresh.thread_id != first.thread_id
    newest = await _generate(
        agents, token, prompt="d", resource_id=resource, thread_resolution=latest
    )
    assert newest.thread_id == fresh.thread_id

    session = agent_pb2.THREAD_RESOLUTION_SESSION
    s1 = await _generate(
        agents,
        token,
        prompt="e",
        resource_id=resource,
        thread_resolution=session,
        session_key="support",
    )
    s2 = await _generate(
        agents,
        token,
        prompt="f",
        resource_id=resource,
        thread_resolution=session,
        session_key="support",
    )
    assert s1.thread_id == s2.thread_id and s1.thread_id not in (first.thread_id, fresh.thread_id)
    stored = await memory_stub.ListMessages(
        memory_pb2.ListMessagesRequest(thread_id=s1.thread_id), metadata=auth(token)
    )
    assert [_texts(m) for m in stored.messages] == ["e", "answer 4", "f", "answer 5"]
    thread = await memory_stub.GetThread(
        memory_pb2.GetThreadRequest(thread_id=s1.thread_id), metadata=auth(token)
    )
    assert thread.thread.resource_id == resource


async def test_thread_resolution_validates_its_input(agents, token) -> None:
    latest, session = agent_pb2.THREAD_RESOLUTION_LATEST, agent_pb2.THREAD_RESOLUTION_SESSION
    cases = [
        ({"thread_resolution": latest}, "resource_id"),
        ({"thread_resolution": latest, "resource_id": "r", "thread_id": "t"}, "thread_id"),
        ({"thread_resolution": session, "resource_id": "r"}, "session_key"),
        ({"session_key": "k", "resource_id": "r"}, "session_key"),
        ({"thread_resolution": agent_pb2.THREAD_RESOLUTION_EXISTING}, "thread_id"),
        ({"thread_resolution": 99}, "thread_resolution"),
        ({"resource_id": "x" * 300}, "resource_id"),
    ]
    for fields, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _generate(agents, token, prompt="hi", **fields)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert field in field_violations(err.value), (fields, field_violations(err.value))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _generate(
            agents,
            token,
            prompt="hi",
            thread_id=unique("missing"),
            thread_resolution=agent_pb2.THREAD_RESOLUTION_EXISTING,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_read_only_memory_reads_history_and_saves_nothing(
    agents, memory_stub, token, model
) -> None:
    thread_id = unique("ro")
    model.set_script([Turn(text="Hello Ada."), Turn(text="You are Ada.")])
    await _generate(agents, token, prompt="I am Ada.", thread_id=thread_id)
    read_only = agent_pb2.AgentMemorySettings(
        read_only=True,
        working_memory=agent_pb2.WorkingMemorySettings(enabled=True, template="# Notes\n"),
    )
    run = await _generate(agents, token, prompt="Who am I?", thread_id=thread_id, memory=read_only)
    assert run.output.text == "You are Ada."
    sent = model.requests[1]
    assert [m.get("content") for m in sent.messages[1:]] == [
        "I am Ada.",
        "Hello Ada.",
        "Who am I?",
    ]
    assert "update_working_memory" not in sent.tool_names  # nothing to write memory with
    stored = await memory_stub.ListMessages(
        memory_pb2.ListMessagesRequest(thread_id=thread_id), metadata=auth(token)
    )
    assert [_texts(m) for m in stored.messages] == ["I am Ada.", "Hello Ada."]


# -- structured output

_TRIP = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 1},
        "sights": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}


async def _stream_object(agents, token, **fields) -> list[agent_pb2.AgentRunEvent]:
    request = agent_pb2.StreamObjectRequest(
        agent_name=fields.pop("agent_name", "assistant"), **fields
    )
    return [r.event async for r in agents.StreamObject(request, metadata=auth(token))]


async def test_stream_object_sends_growing_partials_then_the_validated_object(
    agents, token, model
) -> None:
    answer = '{"city": "Lisbon", "days": 3, "sights": ["Belem tower", "Alfama"]}'
    model.set_script([Turn(text=answer, chunk_size=4)])
    events = await _stream_object(agents, token, prompt="Plan a trip", output_schema=_struct(_TRIP))
    kinds = [e.WhichOneof("event") for e in events]
    assert "text_delta" not in kinds
    assert events[0].run_started.structured_output
    partials = [
        json_format.MessageToDict(e.object_partial.object)
        for e in events
        if e.HasField("object_partial")
    ]
    assert len(partials) >= 5
    assert partials[0].keys() <= {"city"} and partials[-1]["city"] == "Lisbon"
    for before, after in itertools.pairwise(partials):
        assert before != after and set(before) <= set(after)
    assert kinds.index("object_final") > kinds.index("object_partial")
    final = json_format.MessageToDict(
        next(e for e in events if e.HasField("object_final")).object_final.object
    )
    assert final == {"city": "Lisbon", "days": 3, "sights": ["Belem tower", "Alfama"]}
    assert events[-1].HasField("run_finished")
    assert json_format.MessageToDict(events[-1].run_finished.output.object) == final
    assert model.requests[0].json_schema == _TRIP


async def test_stream_object_partials_are_not_validated_only_the_final_is(
    agents, token, model
) -> None:
    """As ObjectPartial says: a partial may miss required properties and end in a string cut
    short (here not yet one of its enum's values); object_final validates."""
    schema = {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["pending", "shipped"]},
            "count": {"type": "integer"},
        },
        "required": ["status", "count"],
        "additionalProperties": False,
    }
    model.set_script([Turn(text='{"status": "shipped", "count": 3}', chunk_size=3)])
    events = await _stream_object(agents, token, prompt="Status?", output_schema=_struct(schema))
    partials = [
        json_format.MessageToDict(e.object_partial.object)
        for e in events
        if e.HasField("object_partial")
    ]
    checker = jsonschema.Draft202012Validator(schema)
    invalid = [p for p in partials if not checker.is_valid(p)]
    assert {"status": "shi"} in invalid  # cut short, and without `count`
    final = next(e for e in events if e.HasField("object_final")).object_final.object
    assert checker.is_valid(json_format.MessageToDict(final))


async def test_stream_object_reports_a_final_that_fails_the_schema(agents, token, model) -> None:
    model.set_script([Turn(text='{"city": 7, "days": 0, "extra": true}')])
    events = await _stream_object(agents, token, prompt="Plan a trip", output_schema=_struct(_TRIP))
    assert not any(e.HasField("object_final") for e in events)
    failed = events[-1].run_failed
    assert failed.reason == "OUTPUT_SCHEMA_MISMATCH"
    problems = {v.field: v.description for v in failed.violations}
    assert set(problems) == {"$", "$.city", "$.days"}
    assert "extra" in problems["$"]
    assert failed.details["output"].startswith('{"city": 7')

    model.set_script([Turn(text="Sure! Lisbon for three days.")])
    events = await _stream_object(agents, token, prompt="Plan a trip", output_schema=_struct(_TRIP))
    assert events[-1].run_failed.reason == "OUTPUT_SCHEMA_MISMATCH"
    assert "not valid JSON" in events[-1].run_failed.violations[0].description


async def test_structured_output_from_a_stored_agent_and_by_generate(agents, token, model) -> None:
    name = unique("planner")
    await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(
                name=name, instructions="Plan trips.", output_schema=_struct(_TRIP)
            )
        ),
        metadata=auth(token),
    )
    model.set_script([Turn(text='{"city": "Porto", "days": 2}')])
    run = await _generate(agents, token, agent_name=name, prompt="Plan a trip")
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert json_format.MessageToDict(run.output.object) == {"city": "Porto", "days": 2}
    assert run.output.text == ""

    model.set_script([Turn(text='{"city": "Faro", "days": 1}')])
    events = await _stream_object(agents, token, agent_name=name, prompt="again")
    assert events[-1].run_finished.output.object["city"] == "Faro"

    with pytest.raises(grpc.aio.AioRpcError) as err:  # no schema anywhere
        await _stream_object(agents, token, prompt="hi")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _stream_object(
            agents, token, prompt="hi", output_schema=_struct({"type": "object", "required": 5})
        )
    assert "output_schema" in field_violations(err.value)
