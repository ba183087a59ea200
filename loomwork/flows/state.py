"""A workflow run's state and events: what GetRun returns and WatchRun streams."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from loomwork.flows.nodes import StepKind

RunStatus = Literal["pending", "running", "suspended", "waiting", "succeeded", "failed", "canceled"]
StepStatus = Literal[
    "pending", "running", "succeeded", "failed", "suspended", "waiting", "skipped", "canceled"
]
_ACTIVE = ("pending", "running", "suspended", "waiting")
TERMINAL_RUN: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


class DslRunInput(BaseModel):
    """What StartRun hands the workflow."""

    tenant: str
    run_id: str
    workflow_id: str
    workflow_version: str
    input: dict[str, Any]
    metadata: dict[str, Any] = Field(default_factory=dict)
    # The starter published run_started already (StartRun and webhook routes do, as they
    # accept the run: activities/workflow_runs.py); the workflow then does not.
    announced: bool = False
    # A fork (ForkRun): the run it was forked from, and the recorded outputs of that run's
    # steps before the fork point, by step path; those steps are not run again.
    forked_from: str = ""
    reused: dict[str, Any] = Field(default_factory=dict)


class ResumeRequest(BaseModel):
    """Resume data for one suspended step: the Update's and the signal's payload."""

    step_id: str
    resume_data: dict[str, Any] = Field(default_factory=dict)
    request_id: str = ""
    run_id: str = ""  # accepted (the RPC's JSON form carries it) and ignored


def temporal_workflow_id(workflow_id: str, tenant: str, run_id: str) -> str:
    """`wf/<workflow>/<tenant>/<run>`: readable in the Temporal UI, unique per tenant."""
    return f"wf/{workflow_id}/{tenant}/{run_id}"


def run_search_attributes(tenant: str, workflow_id: str, run_id: str) -> dict[str, str]:
    """The Keyword search attributes a run starts with (LoomworkStatus then follows it)."""
    return {
        "LoomworkTenant": tenant,
        "LoomworkWorkflow": workflow_id,
        "LoomworkRun": run_id,
        "LoomworkStatus": "PENDING",
    }


class RunError(BaseModel):
    """Why a step or run failed: the error type (e.g. the exception class) and message."""

    type: str
    message: str
    retryable: bool = False


class StepRun(BaseModel):
    """One execution of a step within a run (a foreach item or loop iteration is its own)."""

    step_id: str
    path: str
    iteration: int = 0
    kind: StepKind
    status: StepStatus = "pending"
    input: Any = None
    output: Any = None
    error: RunError | None = None
    attempts: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    next_attempt_time: datetime | None = None
    suspend_payload: dict[str, Any] | None = None
    resume_data: dict[str, Any] | None = None
    suspend_time: datetime | None = None
    resume_time: datetime | None = None
    wake_time: datetime | None = None
    # A suspended step with a suspend timeout: when it stops waiting for resume data.
    expire_time: datetime | None = None
    # In a fork: the run whose recorded output this step reused (it did not run again).
    reused_from: str = ""


class RunState(BaseModel):
    """Everything about one run; kept by its workflow, answered by its `state` query."""

    tenant: str
    run_id: str
    workflow_id: str
    workflow_version: str
    status: RunStatus = "pending"
    input: dict[str, Any] = Field(default_factory=dict)
    output: dict[str, Any] | None = None
    error: RunError | None = None
    steps: list[StepRun] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    # Id of the run's terminal event: WatchRun rebuilds that event with it once the run's
    # events have expired from Redis.
    terminal_event_id: int = 0
    # A fork: the run it was forked from (ForkRun).
    forked_from: str = ""

    def step(self, path: str) -> StepRun | None:
        for step_run in self.steps:
            if step_run.path == path:
                return step_run
        return None

    def suspended_matching(self, step_id_or_path: str) -> list[StepRun]:
        """Suspended executions whose path, or step id, is `step_id_or_path`."""
        exact = [s for s in self.steps if s.status == "suspended" and s.path == step_id_or_path]
        if exact:
            return exact
        return [s for s in self.steps if s.status == "suspended" and s.step_id == step_id_or_path]

    def derived_status(self) -> RunStatus:
        """Status from the steps, for a run that has not ended."""
        active = [
            s for s in self.steps if s.status in ("running", "suspended", "waiting", "pending")
        ]
        if any(s.status == "suspended" for s in active):
            return "suspended"
        if active and all(s.status == "waiting" for s in active):
            return "waiting"
        return "running"


class RunStarted(BaseModel):
    time: datetime | None = None  # when published
    type: Literal["run_started"] = "run_started"
    workflow_id: str
    workflow_version: str
    input: dict[str, Any]


class RunPending(BaseModel):
    """No worker had taken the run yet, `waited_seconds` after it started (published once,
    by a server whose WatchRun waited on it; the run begins once a worker polls
    `task_queue`)."""

    time: datetime | None = None  # when published
    type: Literal["run_pending"] = "run_pending"
    task_queue: str
    waited_seconds: float


class StepEvent(BaseModel):
    time: datetime | None = None  # when published
    type: Literal[
        "step_started",
        "step_succeeded",
        "step_failed",
        "step_suspended",
        "step_resumed",
        "step_retrying",
        "step_waiting",
        "step_skipped",
    ]
    step: StepRun


class RunFinished(BaseModel):
    time: datetime | None = None  # when published
    type: Literal["run_finished"] = "run_finished"
    status: Literal["succeeded", "canceled"]
    output: dict[str, Any] | None = None
    error: RunError | None = None


class RunFailed(BaseModel):
    time: datetime | None = None  # when published
    type: Literal["run_failed"] = "run_failed"
    error: RunError


WorkflowEvent = Annotated[
    RunStarted | RunPending | StepEvent | RunFinished | RunFailed, Field(discriminator="type")
]
_EVENT: TypeAdapter[WorkflowEvent] = TypeAdapter(WorkflowEvent)


def is_terminal(event: WorkflowEvent) -> bool:
    return isinstance(event, RunFinished | RunFailed)


def terminal_event(state: RunState) -> WorkflowEvent:
    """The terminal event of an ended run, rebuilt from its state."""
    if state.status == "failed":
        error = state.error or RunError(type="Failed", message="the run failed")
        return RunFailed(time=state.end_time, error=error)
    status: Literal["succeeded", "canceled"] = (
        "canceled" if state.status == "canceled" else "succeeded"
    )
    return RunFinished(time=state.end_time, status=status, output=state.output, error=state.error)


def encode_event(event: WorkflowEvent) -> bytes:
    return _EVENT.dump_json(event)


def decode_event(payload: bytes) -> WorkflowEvent:
    return _EVENT.validate_json(payload)


def event_log_key(tenant: str, run_id: str) -> str:
    """The run's event log; workflow runs have their own namespace beside agent runs."""
    return f"{tenant}/wf/{run_id}"
