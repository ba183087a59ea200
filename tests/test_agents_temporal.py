"""Agent runs as Temporal holds them: a run accepted while no worker polls its task queue is
PENDING (answered without waiting on a worker) until one comes; a run whose worker is gone is
reported as such instead of hanging; a run the service hands its own worker is running from
the start; a model that errs (5xx) or hangs past LOOMWORK_MODEL_TIMEOUT is retried by
Temporal; and a person reading a run in the Temporal UI finds it by readable id, search
attributes and activity summaries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from temporalio.api.enums.v1 import EventType

from loomwork.config import Settings
from loomwork.testing import Delay, Failure, ScriptedToolCall, Turn
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from server.runtime import Runtime
from tests.support import RunningWorker, another_server, auth, own_runtime, unique
from workflows.search_attributes import AGENT, RESOURCE, RUN, STATUS, TENANT, THREAD


@dataclass
class WorkerlessServer:
    runtime: Runtime
    agents: agent_pb2_grpc.AgentServiceStub


@pytest.fixture
async def workerless(settings: Settings, runtime: Runtime) -> AsyncIterator[WorkerlessServer]:
    """A server process with no worker in it (`loomwork server`), on a task queue of its own
    that no worker polls yet (next to the session's, which registered the search attributes)."""
    async with own_runtime(settings) as own, another_server(own) as channel:
        yield WorkerlessServer(own, agent_pb2_grpc.AgentServiceStub(channel))


async def _get(agents: agent_pb2_grpc.AgentServiceStub, token: str, run_id: str):  # type: ignore[no-untyped-def]
    # A deadline well under the state query's: a GetRun that waited on a worker fails here.
    return (
        await agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token), timeout=3
        )
    ).run


async def _until(agents, token: str, run_id: str, status: int):  # type: ignore[no-untyped-def]
    for _ in range(400):
        run = await _get(agents, token, run_id)
        if run.status == status:
            return run
        await asyncio.sleep(0.05)
    pytest.fail(f"run {run_id} never reached {run_pb2.RunStatus.Name(status)}")


async def _event_types(runtime: Runtime, workflow_id: str) -> list[int]:
    handle = runtime.temporal.get_workflow_handle(workflow_id)
    return [event.event_type async for event in handle.fetch_history_events()]


async def test_a_run_no_worker_took_is_pending_until_one_comes(
    workerless: WorkerlessServer, token, model
) -> None:
    agents, runtime = workerless.agents, workerless.runtime
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("send_email", {"to": "ada@example.com"}, id="m1")]),
            Turn(text="Sent."),
        ]
    )
    stream = agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="mail Ada"), metadata=auth(token)
    )
    first = await anext(aiter(stream))
    assert first.event.HasField("run_started")
    run_id = first.event.run_id
    stream.cancel()  # the caller leaves; the run stays accepted

    pending = await _get(agents, token, run_id)
    assert pending.status == run_pb2.RUN_STATUS_PENDING
    assert pending.agent_name == "assistant"
    assert [p.text.text for p in pending.input_messages[0].parts] == ["mail Ada"]
    assert pending.HasField("create_time") and not pending.HasField("start_time")
    listed = await agents.ListRuns(
        agent_pb2.AgentServiceListRunsRequest(statuses=[run_pb2.RUN_STATUS_PENDING]),
        metadata=auth(token),
    )
    assert run_id in [r.id for r in listed.runs]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await agents.ResumeRun(
            agent_pb2.AgentServiceResumeRunRequest(
                run_id=run_id,
                decisions=[agent_pb2.ApprovalDecision(tool_call_id="m1", approve={})],
            ),
            metadata=auth(token),
            timeout=3,
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has not started yet" in (error.value.details() or "")

    worker = RunningWorker(runtime)
    try:
        waiting = await _until(agents, token, run_id, run_pb2.RUN_STATUS_WAITING)
        assert [p.tool_call_id for p in waiting.pending_approvals] == ["m1"]
        assert waiting.HasField("start_time")
    finally:
        await worker.stop()

    # Its worker gone, the run's live state has no one to answer: said so, not a hang.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token), timeout=30
        )
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no worker answered" in (error.value.details() or "")

    worker = RunningWorker(runtime)
    try:
        await agents.ResumeRun(
            agent_pb2.AgentServiceResumeRunRequest(
                run_id=run_id,
                decisions=[agent_pb2.ApprovalDecision(tool_call_id="m1", approve={})],
            ),
            metadata=auth(token),
        )
        done = await _until(agents, token, run_id, run_pb2.RUN_STATUS_SUCCEEDED)
    finally:
        await worker.stop()
    assert done.output.text == "Sent."
    # Started PENDING, so the workflow itself said RUNNING once a worker took it.
    types = await _event_types(runtime, done.temporal_workflow_id)
    upsert = EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    assert types.index(upsert) < types.index(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)


async def test_stream_says_when_no_worker_takes_its_run(
    settings: Settings, runtime: Runtime, token, model
) -> None:
    """A Stream caller whose run no worker takes is told so on the stream (once, as a
    numbered event of the run), and the run goes on when a worker comes."""
    async with (
        own_runtime(settings, pending_notice_seconds=0.5) as own,
        another_server(own) as channel,
    ):
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        model.set_script([Turn(text="Here I am.")])
        stream = agents.Stream(
            agent_pb2.StreamRequest(agent_name="assistant", prompt="anyone?"),
            metadata=auth(token),
        )
        events = aiter(stream)
        started = (await asyncio.wait_for(anext(events), 10)).event
        pending = (await asyncio.wait_for(anext(events), 10)).event
        assert started.HasField("run_started")
        assert pending.event_id == 2 and pending.HasField("run_pending")
        assert pending.run_pending.task_queue == own.settings.task_queue
        assert pending.run_pending.waited.ToTimedelta().total_seconds() >= 0.5

        worker = RunningWorker(own)
        try:
            rest = [response.event async for response in events]
        finally:
            await worker.stop()
        assert "".join(e.text_delta.text for e in rest) == "Here I am."
        assert rest[-1].HasField("run_finished")
        assert [e.event_id for e in [started, pending, *rest]] == list(range(1, len(rest) + 3))
        assert not any(e.HasField("run_pending") for e in rest)  # said once

        replayed = [
            r.event
            async for r in agents.WatchRun(
                agent_pb2.AgentServiceWatchRunRequest(run_id=started.run_id),
                metadata=auth(token),
            )
        ]
        assert [e.WhichOneof("event") for e in replayed][:2] == ["run_started", "run_pending"]

        # A run a worker took is not "pending", however slow its model.
        worker = RunningWorker(own)
        try:
            model.set_script([Delay(1.5, then=Turn(text="Slow."))])
            slow = [
                r.event
                async for r in agents.Stream(
                    agent_pb2.StreamRequest(agent_name="assistant", prompt="take your time"),
                    metadata=auth(token),
                )
            ]
        finally:
            await worker.stop()
        assert slow[0].HasField("run_started")
        assert not any(e.HasField("run_pending") for e in slow)
        assert "".join(e.text_delta.text for e in slow) == "Slow."


async def test_a_run_the_service_hands_its_own_worker_runs_from_the_start(
    agents, token, model, runtime: Runtime
) -> None:
    model.set_script([Turn(text="Hi.")])
    answer = await agents.Generate(
        agent_pb2.GenerateRequest(agent_name="assistant", prompt="hello"), metadata=auth(token)
    )
    workflow_id = answer.run.temporal_workflow_id
    history = [
        e async for e in runtime.temporal.get_workflow_handle(workflow_id).fetch_history_events()
    ]
    started = history[0].workflow_execution_started_event_attributes
    status = started.search_attributes.indexed_fields[STATUS.name]
    assert status.data == b'"RUNNING"'
    types = [e.event_type for e in history]
    scheduled = types.index(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    # No status write stands between the start and the first model step.
    assert EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES not in types[:scheduled]


async def test_a_person_can_read_a_run_in_the_temporal_ui(
    agents, token, model, runtime: Runtime
) -> None:
    """The run's workflow id, search attributes and every activity's summary say what it is."""
    model.set_script(
        [Turn(tool_calls=[ScriptedToolCall("add", {"numbers": [1, 2]})]), Turn(text="3.")]
    )
    thread = unique("ui-thread")
    answer = await agents.Generate(
        agent_pb2.GenerateRequest(
            agent_name="assistant", prompt="1 + 2?", thread_id=thread, resource_id="ada"
        ),
        metadata=auth(token),
    )
    handle = runtime.temporal.get_workflow_handle(answer.run.temporal_workflow_id)
    assert handle.id == f"agent/assistant/alpha/{answer.run.id}"
    await handle.result()  # Generate answers as the run finishes, a moment before it closes
    attributes = (await handle.describe()).typed_search_attributes
    assert [attributes.get(key) for key in (TENANT, AGENT, THREAD, RESOURCE, RUN, STATUS)] == [
        "alpha",
        "assistant",
        thread,
        "ada",
        answer.run.id,
        "SUCCEEDED",
    ]
    converter = runtime.temporal.data_converter.payload_converter
    summaries = [
        converter.from_payload(event.user_metadata.summary, str)
        async for event in handle.fetch_history_events()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert summaries == [
        "model scripted, step 1 (loads the context)",
        "tool add",
        "model scripted, step 2",
    ]


@pytest.fixture
async def impatient(settings: Settings, runtime: Runtime) -> AsyncIterator[WorkerlessServer]:
    """A server with its own worker whose model requests time out after 1 s."""
    async with own_runtime(settings, model_timeout=1.0) as own:
        worker = RunningWorker(own)
        try:
            async with another_server(own) as channel:
                yield WorkerlessServer(own, agent_pb2_grpc.AgentServiceStub(channel))
        finally:
            await worker.stop()


async def test_a_failing_or_hanging_model_is_retried_by_temporal(
    impatient: WorkerlessServer, token, model
) -> None:
    model.set_script(
        [
            Failure(status=500, message="upstream broke"),
            Delay(3, then=Turn(text="too late")),  # past the 1 s timeout
            Turn(text="ok"),
        ]
    )
    events = [
        r.event
        async for r in impatient.agents.Stream(
            agent_pb2.StreamRequest(agent_name="assistant", prompt="hi"), metadata=auth(token)
        )
    ]
    assert [e.step_retrying.attempt for e in events if e.HasField("step_retrying")] == [2, 3]
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert events[-1].run_finished.output.text == "ok"
    assert len(model.requests) == 3
