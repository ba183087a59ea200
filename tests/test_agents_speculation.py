"""A run's first step begun while Temporal starts the run (loomwork.agents.speculation): the
run's first activity takes it over, so the model is asked once; a step no activity takes
over writes nothing before its run exists, publishes nothing, and is cancelled with its
model call."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from loomwork.agents.run import FirstStep
from loomwork.agents.speculation import SpeculativeSteps, until_adopted, until_confirmed
from loomwork.agents.steps import event_log_key
from loomwork.llm.scripted_server import Delay, Turn
from loomwork.memory.models import NewThread
from protos.loomwork.v1 import agent_pb2, memory_pb2, run_pb2
from server.runtime import Runtime
from tests.support import agent_run_request, auth, unique

TENANT = "alpha"  # the `token` fixture's tenant


async def test_a_run_started_here_takes_over_its_first_step_begun_early(
    agents, memory_stub, token, model, runtime: Runtime
) -> None:
    thread_id = unique("chat")
    model.set_script([Turn(text="Hello, Ada.")])
    adopted = runtime.speculation.adopted
    events = [
        response.event
        async for response in agents.Stream(
            agent_pb2.StreamRequest(agent_name="assistant", prompt="I am Ada", thread_id=thread_id),
            metadata=auth(token),
        )
    ]
    # Begun by the service and taken over by the run's first activity: the model was asked
    # once, and the step's events came once, in order, after run_started.
    assert runtime.speculation.adopted == adopted + 1
    assert len(model.requests) == 1
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    assert events[0].HasField("run_started")
    assert "".join(e.text_delta.text for e in events) == "Hello, Ada."
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_SUCCEEDED
    stored = await memory_stub.ListMessages(
        memory_pb2.ListMessagesRequest(thread_id=thread_id), metadata=auth(token)
    )
    assert [m.parts[0].text.text for m in stored.messages] == ["I am Ada", "Hello, Ada."]
    # Temporal shows the step as the run's first activity, run once.
    run = await agents.GetRun(
        agent_pb2.AgentServiceGetRunRequest(run_id=events[0].run_id), metadata=auth(token)
    )
    history = runtime.temporal.get_workflow_handle(
        run.run.temporal_workflow_id
    ).fetch_history_events()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        async for e in history
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert scheduled == ["agent_start_and_step"]


async def _model_asked(model, n: int = 1) -> None:  # type: ignore[no-untyped-def]
    for _ in range(200):
        if len(model.requests) >= n:
            return
        await asyncio.sleep(0.02)
    pytest.fail("the model was never asked")


async def _disconnected(model) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(200):
        if model.requests[0].disconnected:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_first_step_whose_run_never_started_leaves_nothing_behind(
    model, runtime: Runtime, worker
) -> None:
    """The start failed (or went elsewhere), so the step is abandoned: a thread's run wrote
    no message (it waits for its run to exist before writing) and a stateless run's model
    call, already under way, was aborted; neither published an event."""
    steps = runtime.agent_steps
    assert steps is not None
    model.set_script([Delay(30, then=Turn(text="too late"))])
    thread = await runtime.memory.create_thread(TENANT, NewThread())
    with_thread = agent_run_request("never sent", thread_id=thread.id)
    stateless = agent_run_request("never sent")
    assert steps.speculate(with_thread) and steps.speculate(stateless)
    await _model_asked(model)
    await asyncio.sleep(0.3)
    assert len(model.requests) == 1  # the stateless run's: the other waits to write first
    for request in (with_thread, stateless):
        runtime.speculation.abandon(event_log_key(TENANT, request.run_id))
    assert await _disconnected(model)
    page = await runtime.memory.list_messages(TENANT, thread.id)
    assert page.messages == []
    for request in (with_thread, stateless):
        key = event_log_key(TENANT, request.run_id)
        assert await runtime.events.last_id(key) == 0
        assert runtime.speculation.adopt(key) is None  # a late activity begins its own


async def test_a_first_step_no_activity_takes_over_is_cancelled_unpublished(
    model, runtime: Runtime, worker
) -> None:
    """Confirmed (the run exists), but its first activity ran in another process: the step
    wrote the run's input, as that activity does too (by message id), published nothing, and
    was cancelled with its model call after the time to live."""
    steps = runtime.agent_steps
    assert steps is not None
    thread = await runtime.memory.create_thread(TENANT, NewThread())
    model.set_script([Delay(30, then=Turn(text="too late"))])
    request = agent_run_request("never sent", thread_id=thread.id)
    key = event_log_key(TENANT, request.run_id)
    ttl, runtime.speculation.ttl = runtime.speculation.ttl, 2.0
    try:
        assert steps.speculate(request)
    finally:
        runtime.speculation.ttl = ttl
    runtime.speculation.confirm(key)
    await _model_asked(model)
    assert await _disconnected(model)  # cancelled at the time to live
    page = await runtime.memory.list_messages(TENANT, thread.id)
    assert [m.parts[0].text for m in page.messages] == ["never sent"]  # type: ignore[union-attr]
    assert await runtime.events.last_id(key) == 0
    assert runtime.speculation.adopt(key) is None


async def test_cancel_run_stops_a_first_step_no_activity_took_over_yet(
    agents, token, model, runtime: Runtime, worker
) -> None:
    """CancelRun of a run whose first activity has not taken its step over (its first task is
    still on the way) aborts the step's model call at once, not at the step's time to live."""
    from activities.agents import AgentActivities
    from loomwork.agents.directory import RunDirectory
    from server.servicers.agent import workflow_id_for
    from workflows.agent_run import AgentRunWorkflow

    steps = runtime.agent_steps
    assert steps is not None
    model.set_script([Delay(30, then=Turn(text="too late"))])
    request = agent_run_request("never sent")
    key = event_log_key(TENANT, request.run_id)
    workflow_id = workflow_id_for("assistant", TENANT, request.run_id)
    await RunDirectory(runtime.redis).record(TENANT, request.run_id, workflow_id)
    # On a task queue whose worker runs the workflow and its bookkeeping but not the model
    # steps: the run's first activity is scheduled and never starts, so nothing takes the
    # step over.
    queue = unique("no-model-steps")
    bookkeeping = AgentActivities(steps)
    async with Worker(
        runtime.temporal,
        task_queue=queue,
        workflows=[AgentRunWorkflow],
        activities=[bookkeeping.publish, bookkeeping.finish],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        await runtime.temporal.start_workflow(
            AgentRunWorkflow.run, request, id=workflow_id, task_queue=queue
        )
        assert steps.speculate(request)
        runtime.speculation.confirm(key)
        await _model_asked(model)
        cancelled = await agents.CancelRun(
            agent_pb2.AgentServiceCancelRunRequest(run_id=request.run_id), metadata=auth(token)
        )
        assert cancelled.run.id == request.run_id
        assert await _disconnected(model)  # within 4 s; its time to live is 10
        assert runtime.speculation.adopt(key) is None


async def test_steps_wait_for_confirmation_and_adoption_and_pause_after_a_refusal() -> None:
    speculation: SpeculativeSteps[str] = SpeculativeSteps(ttl=5, pause=60, refusals=3)
    seen: list[str] = []

    async def step() -> str:
        await until_confirmed()
        seen.append("writes")
        await until_adopted()
        seen.append("publishes")
        return "done"

    assert speculation.begin("a", step)
    assert not speculation.begin("a", step)  # one step per run
    await asyncio.sleep(0.05)
    assert seen == []
    speculation.confirm("a")
    await asyncio.sleep(0.05)
    assert seen == ["writes"]
    task = speculation.adopt("a")
    assert task is not None and await task == "done"
    assert seen == ["writes", "publishes"]
    assert speculation.adopt("a") is None  # adopted once
    # Outside a step nothing waits.
    await asyncio.wait_for(until_adopted(), 1)

    # Starts that keep going elsewhere pause speculation (it would only cost model calls);
    # one alone does not (a repeated call racing its first joins the run under way).
    for key in ("b", "c"):
        assert speculation.begin(key, step)
        speculation.abandon(key, refused=True)
    assert speculation.begin("d", step)
    speculation.confirm("d")  # taken here: the count starts again
    for key in ("e", "f"):
        assert speculation.begin(key, step)
        speculation.abandon(key, refused=True)
    assert speculation.begin("g", step)
    speculation.abandon("g", refused=True)  # the third in a row
    assert not speculation.begin("h", step)
    await speculation.close()


async def test_an_adopted_step_failing_fails_its_adopter() -> None:
    speculation: SpeculativeSteps[FirstStep] = SpeculativeSteps()

    async def step() -> FirstStep:
        raise RuntimeError("model down")

    assert speculation.begin("a", step)
    await asyncio.sleep(0.01)  # failed before anyone took it over: not logged as lost
    task = speculation.adopt("a")
    assert task is not None
    with pytest.raises(RuntimeError, match="model down"):
        await task
