"""The payloads of an agent run (workflow and activities) and the events it publishes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from loomwork.agents.definitions import AgentDefinition
from loomwork.llm.chat import ChatMessage, ChatUsage
from loomwork.memory.models import NewMessage, ToolCallPart, ToolResultPart
from loomwork.memory.settings import MemorySettings


class AgentRunRequest(BaseModel):
    """Everything a run needs to start; the workflow's input."""

    tenant: str
    run_id: str
    agent_name: str
    input_messages: list[NewMessage]
    thread_id: str = ""
    resource_id: str = ""
    max_steps: int = 0  # 0: the agent's own
    memory: MemorySettings | None = None  # None: the agent's own (merged with a per-call override)
    memory_read_only: bool | None = None  # None: the agent's own
    output_schema: dict[str, Any] | None = None  # None: the agent's own
    metadata: dict[str, Any] = Field(default_factory=dict)  # the caller's, passed to tools
    create_time: datetime | None = None  # when the service accepted the call
    # The model as the service resolved it when accepting the call (named in the first
    # step's summary); the start activity resolves the agent, and so the model, itself.
    model: str = ""
    # The starter published run_started already (the server does, as it accepts the run).
    announced: bool = False
    # The server began the first step as it started the run (loomwork.agents.speculation);
    # the step's events may have gone out as a draft, which an activity running the step
    # itself takes over.
    first_step_begun: bool = False

    def identified_inputs(self) -> list[NewMessage]:
        """The input messages with the ids they are saved under (`<run>.in.<i>` unless the
        caller chose one): the same in run_started, in memory and in the run's record."""
        return [
            m if m.id else m.model_copy(update={"id": f"{self.run_id}.in.{i}"})
            for i, m in enumerate(self.input_messages)
        ]


class ContextUsage(BaseModel):
    """How the run's context was assembled from memory."""

    tokens_in_context: int = 0
    messages_recalled: int = 0
    messages_trimmed: int = 0
    tokens_trimmed: int = 0


class Violation(BaseModel):
    """One problem of a validated value: a JSON path and what is wrong there."""

    field: str
    description: str


class RunPlan(BaseModel):
    """What the start activity resolved: the agent as this run uses it (the definition it
    started with, per-call overrides applied), the model, the step limit, the conversation."""

    agent: AgentDefinition
    model: str
    max_steps: int
    conversation: list[ChatMessage]
    context: ContextUsage = Field(default_factory=ContextUsage)


class StepInput(BaseModel):
    request: AgentRunRequest
    agent: AgentDefinition
    plan_model: str
    step: int
    conversation: list[ChatMessage]
    # The previous step ended with tool calls: its step_finished event is published first.
    previous_step: StepFinished | None = None


class StepOutput(BaseModel):
    text: str = ""
    tool_calls: list[ToolCallPart] = Field(default_factory=list)
    approval_required: list[str] = Field(default_factory=list)  # tool call ids
    argument_errors: dict[str, str] = Field(default_factory=dict)
    finish_reason: str = ""
    usage: ChatUsage = Field(default_factory=ChatUsage)
    # Structured output (the agent has an output schema and the step answered).
    object: dict[str, Any] | None = None
    object_violations: list[Violation] = Field(default_factory=list)

    def message(self) -> ChatMessage:
        return ChatMessage.assistant(self.text, self.tool_calls)


class FirstStep(BaseModel):
    """The start activity's answer when it also ran the first model step."""

    plan: RunPlan
    output: StepOutput


class ToolInput(BaseModel):
    request: AgentRunRequest
    agent: AgentDefinition
    step: int
    call: ToolCallPart
    argument_error: str | None = None
    rejection: str | None = None  # a person rejected the call: it does not run


class PendingApproval(BaseModel):
    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    step: int
    request_time: datetime


class Decision(BaseModel):
    """A person's decision on one pending tool call."""

    tool_call_id: str
    approve: bool
    reason: str = ""
    edited_arguments: dict[str, Any] | None = None


class ResumeInput(BaseModel):
    """The payload of the `resume_run` Update and of the `resume` signal."""

    decisions: list[Decision]


# "pending": accepted, no worker has taken it yet (the service says so; a workflow never does).
RunPhase = Literal["pending", "running", "waiting", "succeeded", "failed", "canceled"]


class RunRecord(BaseModel):
    """What a run is about, the same while it runs and once it ended."""

    thread_id: str = ""
    resource_id: str = ""
    model: str = ""  # empty until the run resolved its agent
    input_messages: list[NewMessage] = Field(default_factory=list)  # with their ids
    metadata: dict[str, Any] = Field(default_factory=dict)
    create_time: datetime | None = None  # accepted
    start_time: datetime | None = None  # a worker started it

    @classmethod
    def accepted(
        cls,
        request: AgentRunRequest,
        *,
        create_time: datetime | None = None,
        start_time: datetime | None = None,
    ) -> RunRecord:
        """The record of a run as requested; `create_time` when the request has none."""
        return cls(
            thread_id=request.thread_id,
            resource_id=request.resource_id,
            input_messages=request.identified_inputs(),
            metadata=request.metadata,
            create_time=request.create_time or create_time,
            start_time=start_time,
        )


class RunState(RunRecord):
    """A run as its workflow sees it now (the `state` query, and ResumeRun's answer)."""

    status: RunPhase
    pending: list[PendingApproval] = Field(default_factory=list)
    steps: int = 0


RunStatus = Literal["succeeded", "failed", "canceled"]
FinishReason = Literal["stop", "max_steps", "error", "canceled"]


class RunOutcome(RunRecord):
    """How a run ended; the workflow's result."""

    run_id: str
    agent_name: str
    status: RunStatus
    finish_reason: FinishReason
    text: str = ""
    object: dict[str, Any] | None = None
    messages: list[ChatMessage] = Field(default_factory=list)
    usage: ChatUsage = Field(default_factory=ChatUsage)
    steps: int = 0
    context: ContextUsage = Field(default_factory=ContextUsage)
    terminal_event_id: int = 0  # id of its run_finished event
    error: str = ""
    error_type: str = ""
    violations: list[Violation] = Field(default_factory=list)
    error_details: dict[str, Any] = Field(default_factory=dict)
    end_time: datetime | None = None


class FinishInput(BaseModel):
    request: AgentRunRequest
    outcome: RunOutcome
    # The last step ended with tool calls and no model step followed: its step_finished.
    last_step: StepFinished | None = None
    read_only: bool = False


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
    | RunFinished,
    Field(discriminator="type"),
]
_EVENT = TypeAdapter(AgentEvent)


def once_key(event: AgentEvent) -> str:
    """A name for what `event` says, for events that say it once per run (a step finished,
    a tool call's result, an approval asked for or decided), so a retried activity that
    publishes it again adds no duplicate; '' for the rest (a retried model call streams anew,
    after its step_retrying)."""
    if isinstance(event, StepFinished):
        return f"step_finished:{event.step}"
    if isinstance(event, ToolResultEvent):
        return f"tool_result:{event.step}:{event.result.tool_call_id}"
    if isinstance(event, ApprovalRequested):
        return f"approval_requested:{event.step}:{event.approval.tool_call_id}"
    if isinstance(event, ApprovalResolved):
        return f"approval_resolved:{event.step}:{event.tool_call_id}"
    return ""


def encode_event(event: AgentEvent) -> bytes:
    return _EVENT.dump_json(event)


def decode_event(payload: bytes) -> AgentEvent:
    return _EVENT.validate_json(payload)


class PublishInput(BaseModel):
    request: AgentRunRequest
    event: AgentEvent


# Inputs that name events defined after them.
StepInput.model_rebuild()
FinishInput.model_rebuild()
