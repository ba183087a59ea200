"""The events an agent run publishes to its event log, and how they are encoded."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from loomwork.agents.run_models import Blocked, PendingApproval, PendingToolCall, RunOutcome
from loomwork.llm.chat import ChatMessage, ChatUsage
from loomwork.messages import NewMessage, ToolCallPart, ToolResultPart
from loomwork.retries import ATTEMPT_LOST, ATTEMPT_LOST_MESSAGE, RetryNotice


def _now() -> datetime:
    return datetime.now(UTC)


class _Event(BaseModel):
    time: datetime = Field(default_factory=_now)
    step: int = 0
    # Published by a sub-agent run into its top-level run's log: the path of runs down to it
    # (AgentRunRequest.run_path); '' for the top-level run's own events.
    run_path: str = ""


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
    """The step's activity is tried again (`attempt`); what failed (`error_type`, `error`)
    and the wait before the attempt, as the failed attempt said them. Attempt 1 (a draft
    taken over) has neither; a retry whose failed attempt said nothing (ATTEMPT_LOST in
    loomwork.retries), no backoff."""

    type: Literal["step_retrying"] = "step_retrying"
    attempt: int
    error_type: str = ""
    error: str = ""
    backoff_seconds: float | None = None

    @classmethod
    def announced(cls, step: int, notice: RetryNotice) -> StepRetrying:
        """As the failed attempt says it."""
        return cls(
            step=step,
            attempt=notice.attempt,
            error_type=notice.error_type,
            error=notice.message,
            backoff_seconds=notice.backoff.total_seconds(),
        )

    @classmethod
    def lost(cls, step: int, attempt: int) -> StepRetrying:
        """As the next attempt says it, when the failed one could not."""
        return cls(step=step, attempt=attempt, error_type=ATTEMPT_LOST, error=ATTEMPT_LOST_MESSAGE)


class StepFinished(_Event):
    type: Literal["step_finished"] = "step_finished"
    finish_reason: str
    usage: ChatUsage
    model: str = ""  # the model that answered ("" in runs recorded before fallback models)
    # The step's messages: the assistant message, then its tool results (when it called tools).
    messages: list[ChatMessage] = Field(default_factory=list)
    # A fork's step before its fork point, taken as the original recorded it (no usage).
    reused: bool = False


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


class Handoff(_Event):
    """The model handed the run to another agent (its `transfer_to_<agent>` tool call): the
    next steps run as that agent, with its instructions, tools and model."""

    type: Literal["handoff"] = "handoff"
    from_agent: str
    to_agent: str
    tool_call_id: str
    model: str


class RunBlocked(_Event):
    """A guardrail processor tripped: the step stopped at once; the run ends blocked."""

    type: Literal["blocked"] = "blocked"
    blocked: Blocked


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
    | Handoff
    | RunBlocked
    | RunFinished,
    Field(discriminator="type"),
]


_EVENT = TypeAdapter(AgentEvent)


def once_key(event: AgentEvent) -> str:
    """A name for what `event` says, for events that say it once per run (a step finished or
    retried, a tool call's result, an approval asked for or decided, a client tool call
    handed over, a handoff; a sub-agent run's start and end), so a retried activity that
    publishes it again adds no duplicate; '' for the rest (a retried model call streams
    anew, after its step_retrying). A sub-agent run's names start with its path: they share
    one log."""
    key = _once_key(event)
    if event.run_path and isinstance(event, RunStarted | RunFinished):
        key = event.type
    return f"{event.run_path}|{key}" if event.run_path and key else key


def _once_key(event: AgentEvent) -> str:
    if isinstance(event, StepFinished):
        return f"step_finished:{event.step}"
    if isinstance(event, StepRetrying):  # said by the failed attempt, or else by the next
        return f"step_retrying:{event.step}:{event.attempt}"
    if isinstance(event, ToolResultEvent):
        return f"tool_result:{event.step}:{event.result.tool_call_id}"
    if isinstance(event, ApprovalRequested):
        return f"approval_requested:{event.step}:{event.approval.tool_call_id}"
    if isinstance(event, ApprovalResolved):
        return f"approval_resolved:{event.step}:{event.tool_call_id}"
    if isinstance(event, ToolCallRequested):
        return f"tool_call_requested:{event.step}:{event.call.tool_call_id}"
    if isinstance(event, Handoff):
        return f"handoff:{event.step}:{event.tool_call_id}"
    if isinstance(event, RunBlocked):
        return "blocked"
    return ""


def encode_event(event: AgentEvent) -> bytes:
    return _EVENT.dump_json(event)


def decode_event(payload: bytes) -> AgentEvent:
    return _EVENT.validate_json(payload)
