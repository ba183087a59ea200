"""Activities of an agent run: thin wrappers over loomwork.agents.steps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeats import heartbeating
from activities.retry_notice import announce_retry
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
from loomwork.retries import RetryNotice
from loomwork.tools.registry import ToolFailed

T = TypeVar("T")


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


async def model_call(
    work: Coroutine[Any, Any, T], retrying: Callable[[RetryNotice], Awaitable[object]]
) -> T:
    """A step with a model call (an agent's, an answer's): heartbeating, handed back when the
    worker shuts down; a failure that Temporal will retry is announced first with
    `retrying` (what failed, and how long until the next attempt)."""
    try:
        return await heartbeating(work, hand_back=True)
    except LoomworkError as error:
        failure = application_error(error)
        await announce_retry(failure, retrying)
        raise failure from error
    except Exception as error:
        await announce_retry(error, retrying)
        raise


class AgentActivities:
    def __init__(self, steps: AgentSteps) -> None:
        self.steps = steps

    @activity.defn(name="agent_start_and_step")
    async def start_and_step(self, request: AgentRunRequest) -> FirstStep:
        async def retrying(notice: RetryNotice) -> None:
            await self.steps.retrying(request, request.first_step, notice)

        work = self.steps.start_and_step(request, attempt=activity.info().attempt)
        return await model_call(work, retrying)

    @activity.defn(name="agent_model_step")
    async def model_step(self, step: StepInput) -> StepOutput:
        async def retrying(notice: RetryNotice) -> None:
            await self.steps.retrying(step.request, step, notice)

        work = self.steps.model_step(step, attempt=activity.info().attempt)
        return await model_call(work, retrying)

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
