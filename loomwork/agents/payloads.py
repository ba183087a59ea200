"""The payloads an agent run's workflow passes to its activities and gets back."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from loomwork.agents.definitions import AgentDefinition
from loomwork.agents.events import AgentEvent, StepFinished, ToolResultEvent
from loomwork.agents.run_models import (
    AgentRunRequest,
    Blocked,
    ContextUsage,
    RunOutcome,
    Violation,
)
from loomwork.llm.chat import ChatMessage, ChatUsage
from loomwork.messages import ToolCallPart, ToolResultPart
from loomwork.tools.routes import ToolRoute


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
    # Results of the previous step that no activity published (the client tool results
    # that let the run move on, a step's only tool call, a call that failed for good): the
    # workflow leaves them to this activity to publish (before previous_step), so that
    # publishing does not hold up the step.
    tool_results: list[ToolResultEvent] = Field(default_factory=list)


class StepOutput(BaseModel):
    text: str = ""
    tool_calls: list[ToolCallPart] = Field(default_factory=list)
    approval_required: list[str] = Field(default_factory=list)  # tool call ids
    argument_errors: dict[str, str] = Field(default_factory=dict)
    finish_reason: str = ""
    usage: ChatUsage = Field(default_factory=ChatUsage)
    model: str = ""  # the model that answered
    # Structured output (the agent has an output schema and the step answered).
    object: dict[str, Any] | None = None
    object_violations: list[Violation] = Field(default_factory=list)
    # How each tool call runs, by tool call id (a call without one: a worker tool).
    tool_routes: dict[str, ToolRoute] = Field(default_factory=dict)
    # Calls that go back to the model as an error result instead of running, by tool call
    # id: the result's text (a client tool's arguments that break its declared schema).
    invalid_calls: dict[str, str] = Field(default_factory=dict)
    # A guardrail processor tripped in this step: the run ends blocked (nothing of the step
    # goes on: no tool call runs, its text is not part of the run's output).
    blocked: Blocked | None = None

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
    route: ToolRoute | None = None  # None: a worker tool with the defaults
    # False: the activity leaves its result to the workflow, which hands it to the next
    # activity to publish (the step's only call: its result goes out as the next model call
    # starts, and the call's activity saves a round trip to the event log).
    publish_result: bool = True


class FinishInput(BaseModel):
    request: AgentRunRequest
    outcome: RunOutcome
    # The last step ended with tool calls and no model step followed: its step_finished,
    # and the tool results no model step published (see StepInput.tool_results).
    last_step: StepFinished | None = None
    tool_results: list[ToolResultEvent] = Field(default_factory=list)
    read_only: bool = False


class PublishInput(BaseModel):
    request: AgentRunRequest
    event: AgentEvent


class HandoffInput(BaseModel):
    """A handoff call: the run's agent (`agent`) hands the run to the call's route's agent."""

    request: AgentRunRequest
    agent: AgentDefinition
    step: int
    call: ToolCallPart
    target: str


class HandoffOutcome(BaseModel):
    """The handoff call's result for the model and, unless the target could not be found,
    the agent (call overrides applied) and model the next steps run as."""

    result: ToolResultPart
    agent: AgentDefinition | None = None
    model: str = ""
