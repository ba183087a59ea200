"""The events an agent run publishes to its event log, and how they are encoded."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from loomwork.agents.run_models import PendingApproval, PendingToolCall, RunOutcome
from loomwork.llm.chat import ChatUsage
from loomwork.messages import NewMessage, ToolCallPart, ToolResultPart


def _now() -> datetime:
    return datetime.now(UTC)


class _Event(BaseModel):
    time: datetime = Field(default_factory=_now)
    step: int = 0


class RunStarted(_Event):
    type: Literal["run_started"] = "run_started"
    agent_name: str
    thread_id: str = ""
    resource_id: str = ""
    model: str
    max_steps: int
    structured_output: bool = False
    input_messages: list[NewMessage] = Field(default_factory=list)  # with their ids
    trace_id: str = ""  # the trace of the call that started the run ("" when not traced)


class RunPending(_Event):
    """No worker had taken the run yet, `waited_seconds` after it started: published once,
    by the service that started it (the run begins once a worker polls `task_queue`)."""

    type: Literal["run_pending"] = "run_pending"
    task_queue: str
    waited_seconds: float


class TextDeltaEvent(_Event):
    type: Literal["text_delta"] = "text_delta"
    delta: str


class ToolCallEvent(_Event):
    type: Literal["tool_call"] = "tool_call"
    call: ToolCallPart


class ToolResultEvent(_Event):
    type: Literal["tool_result"] = "tool_result"
    result: ToolResultPart


class ObjectPartialEvent(_Event):
    type: Literal["object_partial"] = "object_partial"
    object: dict[str, Any]


class ObjectFinalEvent(_Event):
    type: Literal["object_final"] = "object_final"
    object: dict[str, Any]


class UsageEvent(_Event):
    type: Literal["usage"] = "usage"
    usage: ChatUsage


class StepRetrying(_Event):
    type: Literal["step_retrying"] = "step_retrying"
    attempt: int


class StepFinished(_Event):
    type: Literal["step_finished"] = "step_finished"
    finish_reason: str
    usage: ChatUsage


class ApprovalRequested(_Event):
    type: Literal["approval_requested"] = "approval_requested"
    approval: PendingApproval


class ApprovalResolved(_Event):
    type: Literal["approval_resolved"] = "approval_resolved"
    tool_call_id: str
    tool_name: str
    approved: bool
    reason: str = ""
    arguments: dict[str, Any] = Field(default_factory=dict)
    arguments_edited: bool = False


class ToolCallRequested(_Event):
    """A call of a client tool is the caller's to run: the run waits for SubmitToolResults."""

    type: Literal["tool_call_requested"] = "tool_call_requested"
    call: PendingToolCall


class RunFinished(_Event):
    type: Literal["run_finished"] = "run_finished"
    outcome: RunOutcome


AgentEvent = Annotated[
    RunStarted
    | RunPending
    | TextDeltaEvent
    | ToolCallEvent
    | ToolResultEvent
    | ObjectPartialEvent
    | ObjectFinalEvent
    | UsageEvent
    | StepRetrying
    | StepFinished
    | ApprovalRequested
    | ApprovalResolved
    | ToolCallRequested
    | RunFinished,
    Field(discriminator="type"),
]


_EVENT = TypeAdapter(AgentEvent)


def once_key(event: AgentEvent) -> str:
    """A name for what `event` says, for events that say it once per run (a step finished,
    a tool call's result, an approval asked for or decided, a client tool call handed over),
    so a retried activity that publishes it again adds no duplicate; '' for the rest (a
    retried model call streams anew, after its step_retrying)."""
    if isinstance(event, StepFinished):
        return f"step_finished:{event.step}"
    if isinstance(event, ToolResultEvent):
        return f"tool_result:{event.step}:{event.result.tool_call_id}"
    if isinstance(event, ApprovalRequested):
        return f"approval_requested:{event.step}:{event.approval.tool_call_id}"
    if isinstance(event, ApprovalResolved):
        return f"approval_resolved:{event.step}:{event.tool_call_id}"
    if isinstance(event, ToolCallRequested):
        return f"tool_call_requested:{event.step}:{event.call.tool_call_id}"
    return ""


def encode_event(event: AgentEvent) -> bytes:
    return _EVENT.dump_json(event)


def decode_event(payload: bytes) -> AgentEvent:
    return _EVENT.validate_json(payload)
