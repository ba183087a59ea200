"""What an agent run is: its request, its record and state while it runs, and its outcome."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from loomwork.llm.chat import ChatMessage, ChatUsage
from loomwork.memory.settings import MemorySettings
from loomwork.messages import NewMessage
from loomwork.tools.client_tools import ClientTool, ClientToolResult


def agent_run_workflow_id(agent: str, tenant_id: str, run_id: str) -> str:
    """The Temporal workflow id of an agent run."""
    return f"agent/{agent}/{tenant_id}/{run_id}"


class ReusedStep(BaseModel):
    """A step of the run a fork was made from, before the fork point: its messages are taken
    as recorded (no model call, no tool call); what it cost is the original run's."""

    step: int
    finish_reason: str
    messages: list[ChatMessage]  # the assistant message, then its tool results
    usage: ChatUsage = Field(default_factory=ChatUsage)  # the original's (not counted again)


class AgentFork(BaseModel):
    """A run forked from another (AgentService.ForkRun): it starts at `from_step` with the
    conversation the original's model saw there (or the caller's edit of it), on no thread."""

    forked_from: str  # the original run's id
    from_step: int  # the first step this run calls the model for
    conversation: list[ChatMessage]  # what the model sees at `from_step`
    reused: list[ReusedStep] = Field(default_factory=list)  # steps 1..from_step-1
    edited: bool = False  # the caller replaced the conversation after the system message


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
    # The model a first step that ran out of retries on the agent's model goes on with
    # (loomwork.agents.model_fallback); "" for the agent's own.
    fallback_model: str = ""
    # The starter published run_started already (the server does, as it accepts the run).
    announced: bool = False
    # The server began the first step as it started the run (loomwork.agents.speculation);
    # the step's events may have gone out as a draft, which an activity running the step
    # itself takes over.
    first_step_begun: bool = False
    # The task queue of the worker a server chose to begin the first step on (split
    # deployments, loomwork.agents.first_step_routing): the first activity goes there; ""
    # for the run's own task queue.
    first_step_queue: str = ""
    # That worker did not take the first activity in time, which went to the run's own queue
    # instead: the step may have streamed there before its worker was lost, so the activity
    # here marks it started over.
    first_step_rerouted: bool = False
    # Tools the caller declared for this run and runs itself (SubmitToolResults answers them).
    client_tools: list[ClientTool] = Field(default_factory=list)
    # The OpenTelemetry trace of the call that started the run ("" when not traced).
    trace_id: str = ""
    # A sub-agent run (an agent called as a tool): the runs above it, from the top-level run
    # down to the one that called it; empty for a run a caller started.
    parents: list[str] = Field(default_factory=list)
    # A fork of another run (ForkRun): the steps before its fork point are reused.
    fork: AgentFork | None = None

    @property
    def first_step(self) -> int:
        """The number of the run's first model step: 1, or a fork's fork point."""
        return self.fork.from_step if self.fork is not None else 1

    @property
    def log_run_id(self) -> str:
        """The run whose event log this run publishes to: the top-level run's."""
        return self.parents[0] if self.parents else self.run_id

    @property
    def run_path(self) -> str:
        """`<top-level run>/…/<this run>` for a sub-agent run, marking its events and waits in
        the top-level run's log; '' for the top-level run itself."""
        return "/".join([*self.parents, self.run_id]) if self.parents else ""

    def client_tool(self, name: str) -> ClientTool | None:
        return next((t for t in self.client_tools if t.name == name), None)

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


class PendingCall(BaseModel):
    """A tool call the run waits on, until `expire_time` if it has a timeout."""

    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    step: int
    request_time: datetime
    expire_time: datetime | None = None
    run_path: str = ""  # the sub-agent run that waits on it (AgentRunRequest.run_path)


class PendingApproval(PendingCall):
    """A call waiting for a person to approve or reject it; past `expire_time` (the approval
    timeout of its tool or agent, if declared) it is rejected."""


class PendingToolCall(PendingCall):
    """A call of a client tool, handed to the caller, waiting for its result; past
    `expire_time` (the tool's timeout, if declared) the model gets an error result."""


class WaitingOn(BaseModel):
    """What a waiting run waits on, without the calls' arguments: what its Temporal memo
    keeps for ListRuns."""

    approvals: list[PendingApproval] = Field(default_factory=list)
    tool_calls: list[PendingToolCall] = Field(default_factory=list)


class SubRunWaiting(BaseModel):
    """What a sub-agent run waits on (its own calls and its sub-runs'), as it tells the run
    that called it whenever that changes: the caller's state lists them, and it passes on
    the decisions and results it is given for them. `seq` orders the reports."""

    workflow_id: str
    seq: int
    waiting: WaitingOn = Field(default_factory=WaitingOn)


class Decision(BaseModel):
    """A person's decision on one pending tool call."""

    tool_call_id: str
    approve: bool
    reason: str = ""
    edited_arguments: dict[str, Any] | None = None


class ResumeInput(BaseModel):
    """The payload of the `resume_run` Update and of the `resume` signal."""

    decisions: list[Decision]


class ToolResultsInput(BaseModel):
    """The payload of the `submit_tool_results` Update: results of pending client tool calls."""

    results: list[ClientToolResult]


# "pending": accepted, no worker has taken it yet (the service says so; a workflow never does).
RunPhase = Literal["pending", "running", "waiting", "succeeded", "failed", "canceled", "blocked"]


class RunRecord(BaseModel):
    """What a run is about, the same while it runs and once it ended."""

    thread_id: str = ""
    resource_id: str = ""
    model: str = ""  # empty until the run resolved its agent
    input_messages: list[NewMessage] = Field(default_factory=list)  # with their ids
    metadata: dict[str, Any] = Field(default_factory=dict)
    create_time: datetime | None = None  # accepted
    start_time: datetime | None = None  # a worker started it
    trace_id: str = ""  # the trace of the call that started it ("" when not traced)
    forked_from: str = ""  # ForkRun: the run this one was forked from
    reused_steps: int = 0  # ForkRun: steps taken as recorded from `forked_from`

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
            trace_id=request.trace_id,
            forked_from=request.fork.forked_from if request.fork else "",
            reused_steps=len(request.fork.reused) if request.fork else 0,
        )


class RunState(RunRecord):
    """A run as its workflow sees it now (the `state` query, and ResumeRun's answer)."""

    status: RunPhase
    pending: list[PendingApproval] = Field(default_factory=list)
    pending_tool_calls: list[PendingToolCall] = Field(default_factory=list)
    steps: int = 0


# "blocked": a guardrail processor tripped (RunOutcome.blocked says which and why).
RunStatus = Literal["succeeded", "failed", "canceled", "blocked"]


FinishReason = Literal["stop", "max_steps", "error", "canceled", "content_filter"]


class Blocked(BaseModel):
    """A guardrail processor tripped: its name, why, and where (loomwork.guardrails)."""

    processor: str
    reason: str
    stage: Literal["input", "output"]
    step: int = 0


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
    blocked: Blocked | None = None  # status "blocked": the processor that tripped
