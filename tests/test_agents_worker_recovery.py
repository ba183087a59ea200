"""A worker lost in the middle of a model stream: the step starts again on another worker and
the run completes; the stream marks the retried step. Killed (SIGKILL), the step is retried
once its short heartbeat timeout passes; stopped (SIGTERM), the worker hands the step back at
once instead of finishing it in its grace period. Timings live in bench/worker_recovery.py."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from temporalio.api.enums.v1 import EventType, TaskQueueKind, TimeoutType
from temporalio.api.history.v1 import HistoryEvent

from activities.heartbeats import HAND_BACK_RETRY
from loomwork.agents.events import AgentEvent, StepRetrying, decode_event
from loomwork.agents.run_models import AgentRunRequest, RunOutcome
from loomwork.agents.run_start import event_log_key
from loomwork.messages import NewMessage, Role, TextPart
from loomwork.retries import ATTEMPT_LOST, WORKER_SHUTDOWN
from loomwork.testing import ChatRequest, ScriptedModelServer, Turn
from server.runtime import Runtime
from tests.support import unique, worker_process
from workflows.agent_run import AgentRunWorkflow

SLOW = "slowly " * 200  # ~20 s as streamed below: the worker is lost long before its end


def _script(request: ChatRequest) -> Turn:
    if request.index == 0:  # the first attempt streams slowly (requests are cleared first)
        return Turn(text=SLOW, chunk_size=7, chunk_delay=0.1)
    return Turn(text="Recovered.")


def _env(model_server: ScriptedModelServer) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": model_server.base_url,
        "OPENAI_API_KEY": "test-key",
        "LOOMWORK_CHAT_MODEL": "scripted",
        "LOOMWORK_DEMO": "true",  # the `assistant` agent
    }


async def _lose_worker_mid_stream(
    runtime: Runtime,
    embedded: Mapping[str, str],
    model_server: ScriptedModelServer,
    log: Path,
    how: signal.Signals,
) -> tuple[RunOutcome, list[HistoryEvent], list[AgentEvent]]:
    """A run whose first model step streams on a worker that is then lost (`how`); a second
    worker finishes it. Its outcome, history and events."""
    queue = unique("recovery")
    model_server.requests.clear()
    model_server.set_script(_script)
    first = worker_process(embedded, queue, log, **_env(model_server))
    second: subprocess.Popen[bytes] | None = None
    run_id = unique("run")
    key = event_log_key("alpha", run_id)
    try:
        handle = await runtime.temporal.start_workflow(
            AgentRunWorkflow.run,
            AgentRunRequest(
                tenant="alpha",
                run_id=run_id,
                agent_name="assistant",
                input_messages=[NewMessage(role=Role.USER, parts=[TextPart(text="go slowly")])],
            ),
            id=f"agent/assistant/alpha/{run_id}",
            task_queue=queue,
        )
        deadline = asyncio.get_running_loop().time() + 60
        while not any(  # the first worker is streaming the model's text
            decode_event(e.payload).type == "text_delta" for e in await runtime.events.read(key, 0)
        ):
            if first.poll() is not None or asyncio.get_running_loop().time() > deadline:
                raise AssertionError(await asyncio.to_thread(log.read_text))
            await asyncio.sleep(0.05)
        second = worker_process(embedded, queue, log, **_env(model_server))
        first.send_signal(how)
        outcome: RunOutcome = await asyncio.wait_for(handle.result(), 90)
        assert await asyncio.to_thread(first.wait, 30) is not None

        history = [event async for event in handle.fetch_history_events()]
        events = [decode_event(e.payload) for e in await runtime.events.read(key, 0)]
        return outcome, history, events
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.to_thread(process.wait, 30)
        model_server.set_script(None)


def _retried_step(history: list[HistoryEvent]) -> HistoryEvent:
    """The ActivityTaskStarted of the first model step's last attempt."""
    step_ids = {
        e.event_id
        for e in history
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "agent_start_and_step"
    }
    (started,) = [
        e
        for e in history
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and e.activity_task_started_event_attributes.scheduled_event_id in step_ids
    ]
    return started


def _check_recovered(
    outcome: RunOutcome, events: list[AgentEvent], model: ScriptedModelServer
) -> StepRetrying:
    """The run recovered; the step_retrying that marks its retried step."""
    assert outcome.status == "succeeded" and outcome.text == "Recovered."
    assert len(model.requests) == 2  # the step was streamed again from its start
    # The stream has the lost attempt's text, then marks the retry, then the new text.
    kinds = [e.type for e in events]
    retry = kinds.index("step_retrying")
    assert "text_delta" in kinds[:retry] and "text_delta" in kinds[retry:]
    assert kinds[-1] == "run_finished"
    assert kinds.count("step_retrying") == 1
    retrying = events[retry]
    assert isinstance(retrying, StepRetrying) and retrying.attempt == 2
    return retrying


async def test_a_worker_killed_mid_stream_is_replaced_after_its_heartbeat_timeout(
    runtime: Runtime, embedded: Mapping[str, str], model_server: ScriptedModelServer, tmp_path
) -> None:
    outcome, history, events = await _lose_worker_mid_stream(
        runtime, embedded, model_server, tmp_path / "workers.log", signal.SIGKILL
    )
    retrying = _check_recovered(outcome, events, model_server)
    # The killed attempt said nothing: the next one marks the retry, without a wait.
    assert retrying.error_type == ATTEMPT_LOST and retrying.backoff_seconds is None
    started = _retried_step(history).activity_task_started_event_attributes
    assert started.attempt == 2
    timeout = started.last_failure.timeout_failure_info
    assert timeout.timeout_type == TimeoutType.TIMEOUT_TYPE_HEARTBEAT
    # The task after the step went to the task queue, not to the killed worker's sticky
    # queue: no workflow task waited there for a worker that was gone.
    completed = next(
        i
        for i, e in enumerate(history)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        and e.activity_task_completed_event_attributes.scheduled_event_id
        == started.scheduled_event_id
    )
    after = next(
        e
        for e in history[completed:]
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED
    )
    queue = after.workflow_task_scheduled_event_attributes.task_queue
    assert queue.kind == TaskQueueKind.TASK_QUEUE_KIND_NORMAL, queue
    kinds = [e.event_type for e in history]
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT not in kinds


async def test_a_worker_stopped_mid_stream_hands_the_step_back_at_once(
    runtime: Runtime, embedded: Mapping[str, str], model_server: ScriptedModelServer, tmp_path
) -> None:
    outcome, history, events = await _lose_worker_mid_stream(
        runtime, embedded, model_server, tmp_path / "workers.log", signal.SIGTERM
    )
    retrying = _check_recovered(outcome, events, model_server)
    # The stopped worker said why as it handed the step back, and when it is tried again.
    assert retrying.error_type == WORKER_SHUTDOWN and "handed to another worker" in retrying.error
    assert retrying.backoff_seconds == HAND_BACK_RETRY.total_seconds()
    started = _retried_step(history).activity_task_started_event_attributes
    assert started.attempt == 2
    failure = started.last_failure
    assert failure.application_failure_info.type == "WorkerShutdown", failure
    assert "handed to another worker" in failure.message
