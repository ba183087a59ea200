"""A run's first step begun while Temporal starts the run (loomwork.agents.speculation): the
run's first activity takes it over, so the model is asked once; its text streams as a draft
once the run exists, which an activity running the step itself takes over (readers are told
to discard it); a step no activity takes over writes nothing before its run exists, and is
cancelled with its model call."""

from __future__ import annotations

import asyncio
import copy

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from loomwork.agents.events import StepRetrying, TextDeltaEvent, decode_event
from loomwork.agents.payloads import FirstStep
from loomwork.agents.run_models import AgentRunRequest
from loomwork.agents.run_start import announce_run, event_log_key
from loomwork.agents.speculation import SpeculativeSteps, until_adopted, until_confirmed
from loomwork.agents.steps import AgentSteps
from loomwork.messages import NewThread
from loomwork.streams import DraftTaken
from loomwork.testing import Delay, Turn
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
    assert not any(e.HasField("step_retrying") for e in events)  # its draft was kept
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
    from loomwork.agents.run_models import agent_run_workflow_id
    from workflows.agent_run import AgentRunWorkflow

    steps = runtime.agent_steps
    assert steps is not None
    model.set_script([Delay(30, then=Turn(text="too late"))])
    request = agent_run_request("never sent")
    key = event_log_key(TENANT, request.run_id)
    workflow_id = agent_run_workflow_id("assistant", TENANT, request.run_id)
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
    # Nor begun again once adopted: a second call naming the run's client id, late to
    # start it, must not ask the model again.
    assert not speculation.begin("a", step)
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


async def _announced(steps: AgentSteps, request: AgentRunRequest) -> str:
    """Announce `request` as the service does before it starts the run; its log's key."""
    agent = await steps.agents.get(TENANT, request.agent_name)
    await announce_run(steps.events, request, agent, "scripted")
    return event_log_key(TENANT, request.run_id)


async def _logged(steps: AgentSteps, key: str) -> list[str]:
    """The run's events after run_started: the text of a delta, else the event's type."""
    events = [decode_event(e.payload) for e in await steps.events.read(key, 1)]
    return [e.delta if isinstance(e, TextDeltaEvent) else e.type for e in events]


async def _until(check, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(250):
        if await check():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"never: {what}")


async def _drafting(runtime: Runtime, model) -> tuple[AgentSteps, AgentRunRequest, str]:  # type: ignore[no-untyped-def]
    """A run announced and confirmed here whose first step is streaming a long draft (the
    step's first delta is in the log, no activity has taken it over): its steps, its request
    as the service sends it to the workflow, and its log's key."""
    steps = runtime.agent_steps
    assert steps is not None
    model.set_script(
        [
            Turn(text="a draft that goes on and on", chunk_size=2, chunk_delay=0.1),
            Turn(text="The answer."),
        ]
    )
    request = agent_run_request("hi")
    key = await _announced(steps, request)
    assert steps.speculate(request)
    request.first_step_begun = True
    runtime.speculation.confirm(key)

    async def drafted() -> bool:
        return bool(await _logged(steps, key))

    await _until(drafted, "a draft delta in the log")
    return steps, request, key


async def test_a_first_step_streams_its_text_once_its_run_exists_before_it_is_taken_over(
    model, runtime: Runtime, worker
) -> None:
    """Confirmed (the run came to this process) but not adopted yet: its text is already in
    the run's log, so a reader sees it without waiting for the run's activity; other events
    wait for the activity, and adopting keeps what was streamed (no step_retrying)."""
    steps = runtime.agent_steps
    assert steps is not None
    model.set_script([Turn(text="Hello there, Ada.", chunk_size=6, chunk_delay=0.05)])
    request = agent_run_request("hi")
    key = await _announced(steps, request)
    assert steps.speculate(request)
    await _model_asked(model)
    await asyncio.sleep(0.3)
    assert await _logged(steps, key) == []  # not confirmed: the run may not exist
    runtime.speculation.confirm(key)

    async def streamed_all() -> bool:
        return "".join(await _logged(steps, key)) == "Hello there, Ada."

    await _until(streamed_all, "the whole text streamed before adoption")
    await asyncio.sleep(0.2)
    assert "".join(await _logged(steps, key)) == "Hello there, Ada."  # no usage yet
    first = await steps.start_and_step(request)  # the run's first activity
    assert first.output.text == "Hello there, Ada."
    assert len(model.requests) == 1
    logged = await _logged(steps, key)
    assert "".join(logged[:-2]) == "Hello there, Ada."
    assert logged[-2:] == ["usage", "step_finished"]  # published once adopted


async def test_an_activity_that_runs_the_first_step_itself_takes_its_draft_over(
    model, runtime: Runtime, worker
) -> None:
    """The run's first activity ran in another process (no eager activity, another replica
    polled first): it fences off the draft streamed here (whose next delta is refused, so its
    model call ends), publishes step_retrying for attempt 1 and streams its own answer. A
    reader that discards a retried step's text, as step_retrying asks, reads that answer
    alone."""
    steps, request, key = await _drafting(runtime, model)
    elsewhere = copy.copy(steps)  # the same stores, but no step begun in its process
    elsewhere.speculation = None
    first = await elsewhere.start_and_step(request)
    assert first.output.text == "The answer."
    assert await _disconnected(model)  # the draft's next delta was refused: its call ended
    with pytest.raises(DraftTaken):
        await runtime.speculation.adopt(key)  # type: ignore[misc]
    logged = await _logged(steps, key)
    retry = logged.index("step_retrying")
    draft = "".join(logged[:retry])
    assert draft and "a draft that goes on and on".startswith(draft)
    assert "".join(logged[retry + 1 : -2]) == "The answer."  # none of the draft after it
    assert logged[-2:] == ["usage", "step_finished"]
    events = [decode_event(e.payload) for e in await steps.events.read(key, 1)]
    assert [(e.step, e.attempt) for e in events if isinstance(e, StepRetrying)] == [(1, 1)]


async def test_a_draft_stops_when_its_run_ends_before_any_activity_took_it_over(
    model, runtime: Runtime, worker
) -> None:
    """Cancelled through another replica before its first activity started: the run's log
    ended, so the draft's next delta is refused and its model call ends then, not at the
    step's time to live; nothing more of it is in the log."""
    steps, _, key = await _drafting(runtime, model)
    ended = await steps.events.append(key, b'{"type": "run_finished"}', terminal=True)
    assert await _disconnected(model)  # within 4 s; its time to live is 10
    assert await steps.events.last_id(key) == ended


async def test_a_sub_runs_first_step_begun_by_its_caller_is_taken_over_elsewhere(
    model, runtime: Runtime, worker
) -> None:
    """A sub-agent run's first step, begun by the step that called it, drafts into the
    top-level run's log under a draft of its own; its first activity, run in another
    process, takes that draft over (the top-level run's own draft untouched) and marks the
    restart with the sub-run's path."""
    steps = runtime.agent_steps
    assert steps is not None
    model.set_script(
        [
            Turn(text="a draft that goes on and on", chunk_size=2, chunk_delay=0.1),
            Turn(text="The answer."),
        ]
    )
    top = agent_run_request("hi")
    key = await _announced(steps, top)
    sub = agent_run_request("ask").model_copy(
        update={"parents": [top.run_id], "announced": False, "first_step_begun": True}
    )
    assert steps.speculate(sub)  # confirmed at once: the caller's recorded step starts it

    async def drafted() -> bool:
        return any(not kind.endswith("started") for kind in await _logged(steps, key))

    await _until(drafted, "a draft delta of the sub-run in the top-level log")
    elsewhere = copy.copy(steps)
    elsewhere.speculation = None
    first = await elsewhere.start_and_step(sub)
    assert first.output.text == "The answer."
    assert await _disconnected(model)  # the draft's next delta was refused: its call ended
    with pytest.raises(DraftTaken):
        await runtime.speculation.adopt(event_log_key(TENANT, sub.run_id))  # type: ignore[misc]
    events = [decode_event(e.payload) for e in await steps.events.read(key, 1)]
    assert {e.run_path for e in events} == {sub.run_path}
    kinds = [e.delta if isinstance(e, TextDeltaEvent) else e.type for e in events]
    assert kinds[0] == "run_started" and kinds.count("run_started") == 1
    retry = kinds.index("step_retrying")
    assert "a draft that goes on and on".startswith("".join(kinds[1:retry]))
    assert "".join(kinds[retry + 1 : -2]) == "The answer."
    assert not await steps.events.take_draft(key, "step:1")  # the top-level run's: no draft
