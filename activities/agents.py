"""Activities of an agent run: thin wrappers over loomwork.agents.steps."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeats import heartbeating
from loomwork.agents.payloads import (
    FinishInput,
    FirstStep,
    HandoffInput,
    HandoffOutcome,
    PublishInput,
    StepInput,
    StepOutput,
    ToolInput,
)
from loomwork.agents.run_models import AgentRunRequest, RunOutcome
from loomwork.agents.steps import AgentSteps
from loomwork.errors import LoomworkError, ResourceExhausted, Unavailable
from loomwork.llm.errors import ModelError
from loomwork.messages import ToolResultPart
from loomwork.tools.registry import ToolFailed


def application_error(error: LoomworkError) -> ApplicationError:
    """Domain errors as Temporal sees them: retryable unless they say otherwise."""
    if isinstance(error, ModelError):
        return ApplicationError(
            error.message,
            type=type(error).__name__,
            non_retryable=not error.retryable,
            next_retry_delay=timedelta(seconds=error.retry_after) if error.retry_after else None,
        )
    retryable = isinstance(error, Unavailable | ResourceExhausted | ToolFailed)
    return ApplicationError(error.message, type=type(error).__name__, non_retryable=not retryable)


class AgentActivities:
    def __init__(self, steps: AgentSteps) -> None:
        self.steps = steps

    @activity.defn(name="agent_start_and_step")
    async def start_and_step(self, request: AgentRunRequest) -> FirstStep:
        try:
            return await heartbeating(
                self.steps.start_and_step(request, attempt=activity.info().attempt),
                hand_back=True,
            )
        except LoomworkError as error:
            raise application_error(error) from error

    @activity.defn(name="agent_model_step")
    async def model_step(self, step: StepInput) -> StepOutput:
        try:
            return await heartbeating(
                self.steps.model_step(step, attempt=activity.info().attempt), hand_back=True
            )
        except LoomworkError as error:
            raise application_error(error) from error

    @activity.defn(name="agent_tool_call")
    async def tool_call(self, call: ToolInput) -> ToolResultPart:
        try:
            return await heartbeating(self.steps.tool_call(call, attempt=activity.info().attempt))
        except LoomworkError as error:
            raise application_error(error) from error

    @activity.defn(name="agent_mcp_tool_call")
    async def mcp_tool_call(self, call: ToolInput) -> ToolResultPart:
        try:
            return await heartbeating(
                self.steps.mcp_tool_call(call, attempt=activity.info().attempt)
            )
        except LoomworkError as error:
            raise application_error(error) from error

    @activity.defn(name="agent_handoff")
    async def handoff(self, handoff: HandoffInput) -> HandoffOutcome:
        try:
            return await self.steps.handoff(handoff)
        except LoomworkError as error:
            raise application_error(error) from error

    @activity.defn(name="agent_publish")
    async def publish(self, publish: PublishInput) -> None:
        await self.steps.publish(publish.request, publish.event)

    @activity.defn(name="agent_finish")
    async def finish(self, finish: FinishInput) -> RunOutcome:
        return await self.steps.finish(
            finish.request,
            finish.outcome,
            last_step=finish.last_step,
            tool_results=finish.tool_results,
            read_only=finish.read_only,
        )
