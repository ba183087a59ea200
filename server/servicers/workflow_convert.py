"""WorkflowService protobuf <-> loomwork.flows models."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, struct_pb2

from loomwork.flows.description import StepInfo, WorkflowInfo
from loomwork.flows.state import (
    RunError,
    RunFailed,
    RunFinished,
    RunPending,
    RunStarted,
    RunState,
    RunStatus,
    StepEvent,
    StepRun,
    WorkflowEvent,
)
from loomwork.retries import RetryPolicy
from protos.loomwork.v1 import run_pb2, workflow_pb2
from server.servicers.well_known_convert import dict_to_struct, set_timestamp

RUN_STATUS: dict[str, int] = {
    "pending": workflow_pb2.WORKFLOW_RUN_STATUS_PENDING,
    "running": workflow_pb2.WORKFLOW_RUN_STATUS_RUNNING,
    "suspended": workflow_pb2.WORKFLOW_RUN_STATUS_SUSPENDED,
    "waiting": workflow_pb2.WORKFLOW_RUN_STATUS_WAITING,
    "succeeded": workflow_pb2.WORKFLOW_RUN_STATUS_SUCCEEDED,
    "failed": workflow_pb2.WORKFLOW_RUN_STATUS_FAILED,
    "canceled": workflow_pb2.WORKFLOW_RUN_STATUS_CANCELED,
}
RUN_STATUS_NAMES: dict[int, RunStatus] = {v: k for k, v in RUN_STATUS.items()}  # type: ignore[misc]

STEP_STATUS: dict[str, int] = {
    "pending": workflow_pb2.WORKFLOW_STEP_STATUS_PENDING,
    "running": workflow_pb2.WORKFLOW_STEP_STATUS_RUNNING,
    "succeeded": workflow_pb2.WORKFLOW_STEP_STATUS_SUCCEEDED,
    "failed": workflow_pb2.WORKFLOW_STEP_STATUS_FAILED,
    "suspended": workflow_pb2.WORKFLOW_STEP_STATUS_SUSPENDED,
    "waiting": workflow_pb2.WORKFLOW_STEP_STATUS_WAITING,
    "skipped": workflow_pb2.WORKFLOW_STEP_STATUS_SKIPPED,
    "canceled": workflow_pb2.WORKFLOW_STEP_STATUS_CANCELED,
}

STEP_KIND: dict[str, int] = {
    "step": workflow_pb2.WORKFLOW_STEP_KIND_STEP,
    "agent": workflow_pb2.WORKFLOW_STEP_KIND_AGENT,
    "tool": workflow_pb2.WORKFLOW_STEP_KIND_TOOL,
    "workflow": workflow_pb2.WORKFLOW_STEP_KIND_WORKFLOW,
    "map": workflow_pb2.WORKFLOW_STEP_KIND_MAP,
    "sleep": workflow_pb2.WORKFLOW_STEP_KIND_SLEEP,
    "sleep_until": workflow_pb2.WORKFLOW_STEP_KIND_SLEEP_UNTIL,
    "branch": workflow_pb2.WORKFLOW_STEP_KIND_BRANCH,
    "parallel": workflow_pb2.WORKFLOW_STEP_KIND_PARALLEL,
    "foreach": workflow_pb2.WORKFLOW_STEP_KIND_FOREACH,
    "do_while": workflow_pb2.WORKFLOW_STEP_KIND_DO_WHILE,
    "do_until": workflow_pb2.WORKFLOW_STEP_KIND_DO_UNTIL,
}

# google.rpc.Code values for run errors.
_CANCELLED = 1
_FAILED_PRECONDITION = 9


def _duration(value: timedelta) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(value)
    return duration


def _value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if data is None:
        value.null_value = struct_pb2.NULL_VALUE
        return value
    wrapper = struct_pb2.Struct()
    wrapper.update({"v": data})
    return wrapper.fields["v"]


def _retry(policy: RetryPolicy) -> workflow_pb2.StepRetryPolicy:
    return workflow_pb2.StepRetryPolicy(
        max_attempts=policy.max_attempts,
        initial_interval=_duration(policy.initial_interval),
        backoff_coefficient=policy.backoff_coefficient,
        maximum_interval=_duration(policy.maximum_interval),
        non_retryable_error_types=list(policy.non_retryable_error_types),
        timeout=_duration(policy.timeout),
    )


def step_info_to_proto(info: StepInfo) -> workflow_pb2.WorkflowStep:
    step = workflow_pb2.WorkflowStep(
        id=info.id,
        description=info.description,
        kind=STEP_KIND[info.kind],  # type: ignore[arg-type]
        children=[step_info_to_proto(child) for child in info.children],
        condition=info.condition,
        default_branch=info.default_branch,
        workflow_id=info.workflow_id,
        agent_name=info.agent_name,
        tool_name=info.tool_name,
        concurrency=info.concurrency,
    )
    for name in ("input_schema", "output_schema", "suspend_schema", "resume_schema"):
        schema = getattr(info, name)
        if schema is not None:
            getattr(step, name).CopyFrom(dict_to_struct(schema))
    if info.retry is not None:
        step.retry_policy.CopyFrom(_retry(info.retry))
    if info.sleep_duration is not None:
        step.sleep_duration.CopyFrom(_duration(info.sleep_duration))
    if info.suspend_timeout is not None:
        step.suspend_timeout.CopyFrom(_duration(info.suspend_timeout))
    if info.resume_on_timeout is not None:
        step.resume_on_timeout.CopyFrom(dict_to_struct(info.resume_on_timeout))
    return step


def workflow_to_proto(info: WorkflowInfo) -> workflow_pb2.Workflow:
    return workflow_pb2.Workflow(
        id=info.id,
        description=info.description,
        version=info.version,
        input_schema=dict_to_struct(info.input_schema),
        output_schema=dict_to_struct(info.output_schema),
        steps=[step_info_to_proto(step) for step in info.steps],
    )


def run_error_to_proto(error: RunError, *, canceled: bool = False) -> run_pb2.RunError:
    return run_pb2.RunError(
        code=_CANCELLED if canceled else _FAILED_PRECONDITION,
        reason=error.type,
        message=error.message,
    )


def _set_time(target: Any, name: str, value: datetime | None) -> None:
    if value is not None:
        set_timestamp(getattr(target, name), value)


def step_run_to_proto(step: StepRun) -> workflow_pb2.WorkflowStepRun:
    out = workflow_pb2.WorkflowStepRun(
        step_id=step.step_id,
        path=step.path,
        iteration=step.iteration,
        kind=STEP_KIND[step.kind],  # type: ignore[arg-type]
        status=STEP_STATUS[step.status],  # type: ignore[arg-type]
        attempts=step.attempts,
        reused_from=step.reused_from,
    )
    if step.input is not None:
        out.input.CopyFrom(_value(step.input))
    if step.output is not None:
        out.output.CopyFrom(_value(step.output))
    if step.error is not None:
        out.error.CopyFrom(run_error_to_proto(step.error))
    if step.suspend_payload is not None:
        out.suspend_payload.CopyFrom(dict_to_struct(step.suspend_payload))
    if step.resume_data is not None:
        out.resume_data.CopyFrom(dict_to_struct(step.resume_data))
    for name in (
        "start_time",
        "end_time",
        "next_attempt_time",
        "suspend_time",
        "resume_time",
        "wake_time",
        "expire_time",
    ):
        _set_time(out, name, getattr(step, name))
    return out


def run_to_proto(
    state: RunState,
    *,
    temporal_workflow_id: str,
    temporal_run_id: str = "",
    last_event_id: int = 0,
    summary: bool = False,
) -> workflow_pb2.WorkflowRun:
    """A run; `summary` leaves out steps, input and output (what ListRuns returns)."""
    run = workflow_pb2.WorkflowRun(
        id=state.run_id,
        workflow_id=state.workflow_id,
        workflow_version=state.workflow_version,
        status=RUN_STATUS[state.status],  # type: ignore[arg-type]
        last_event_id=last_event_id,
        temporal_workflow_id=temporal_workflow_id,
        temporal_run_id=temporal_run_id,
        forked_from=state.forked_from,
    )
    if not summary:
        run.input.CopyFrom(dict_to_struct(state.input))
        if state.output is not None:
            run.output.CopyFrom(dict_to_struct(state.output))
        run.steps.extend(step_run_to_proto(step) for step in state.steps)
    if state.metadata:
        run.metadata.CopyFrom(dict_to_struct(state.metadata))
    if state.error is not None:
        run.error.CopyFrom(run_error_to_proto(state.error, canceled=state.status == "canceled"))
    for name in ("create_time", "start_time", "end_time"):
        _set_time(run, name, getattr(state, name))
    return run


_STEP_EVENT_FIELD = {
    "step_started": "step_started",
    "step_succeeded": "step_succeeded",
    "step_failed": "step_failed",
    "step_suspended": "step_suspended",
    "step_resumed": "step_resumed",
    "step_retrying": "step_retrying",
    "step_waiting": "step_waiting",
    "step_skipped": "step_skipped",
}


def event_to_proto(
    run_id: str, event_id: int, event: WorkflowEvent
) -> workflow_pb2.WorkflowRunEvent:
    out = workflow_pb2.WorkflowRunEvent(event_id=event_id, run_id=run_id)
    _set_time(out, "time", event.time)
    if isinstance(event, RunStarted):
        out.run_started.CopyFrom(
            workflow_pb2.WorkflowRunStarted(
                workflow_id=event.workflow_id,
                workflow_version=event.workflow_version,
                input=dict_to_struct(event.input),
            )
        )
    elif isinstance(event, RunPending):
        out.run_pending.task_queue = event.task_queue
        out.run_pending.waited.FromTimedelta(timedelta(seconds=event.waited_seconds))
    elif isinstance(event, StepEvent):
        getattr(out, _STEP_EVENT_FIELD[event.type]).CopyFrom(step_run_to_proto(event.step))
    elif isinstance(event, RunFinished):
        finished = workflow_pb2.WorkflowRunFinished(
            status=RUN_STATUS[event.status]  # type: ignore[arg-type]
        )
        if event.output is not None:
            finished.output.CopyFrom(dict_to_struct(event.output))
        out.run_finished.CopyFrom(finished)
    elif isinstance(event, RunFailed):
        out.run_failed.CopyFrom(run_error_to_proto(event.error))
    return out
