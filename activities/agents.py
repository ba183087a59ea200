"""Activities of an agent run: thin wrappers over loomwork.agents.steps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeats import heartbeating
from activities.retry_notice import announce_fallback, announce_retry, next_attempt
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
from loomwork.config import Settings
from loomwork.errors import LoomworkError, ResourceExhausted, Unavailable
from loomwork.llm.errors import ModelError
from loomwork.messages import ToolResultPart
from loomwork.retries import RetryNotice
from loomwork.tools.registry import ToolFailed

T = TypeVar("T")


def application_error(error: LoomworkError, *, last_attempt: bool = False) -> ApplicationError:
    """Domain errors as Temporal sees them: retryable unless they say otherwise, or unless
    this was the `last_attempt` the deployment allows a model call. A model error a step
    may fall back on carries the next model as its one detail (workflows/agent_run.py)."""
    if isinstance(error, ModelError):
        return ApplicationError(
            error.message,
            *([error.fallback_model] if error.fallback_model else []),
            type=type(error).__name__,
            non_retryable=not error.retryable or last_attempt,
            next_retry_delay=timedelta(seconds=error.retry_after) if error.retry_after else None,
        )
    retryable = isinstance(error, Unavailable | ResourceExhausted | ToolFailed)
    return ApplicationError(error.message, type=type(error).__name__, non_retryable=not retryable)


async def model_call(
    work: Coroutine[Any, Any, T],
    retrying: Callable[[RetryNotice], Awaitable[object]],
    attempts: int = 0,
    *,
    after_loss: bool = False,
) -> T:
    """A step with a model call (an agent's, an answer's): heartbeating, handed back when the
    worker shuts down; a failure that Temporal will retry is announced first with
    `retrying` (what failed, and how long until the next attempt). `attempts`: the most a
    model call is tried (LOOMWORK_MODEL_CALL_ATTEMPTS; 0: as the retry policy says).
    `after_loss`: the step may follow a lost worker (see `heartbeating`)."""
    try:
        return await heartbeating(work, hand_back=True, after_loss=after_loss)
    except LoomworkError as error:
        last = bool(attempts) and activity.info().attempt >= attempts
        failure = application_error(error, last_attempt=last)
        fallback = error.fallback_model if isinstance(error, ModelError) else ""
        if fallback and next_attempt(failure) is None:  # the step goes on with that model
            await announce_fallback(failure, fallback, retrying)
        else:
            await announce_retry(failure, retrying)
        raise failure from error
    except Exception as error:
        await announce_retry(error, retrying)
        raise


class AgentActivities:
    def __init__(self, steps: AgentSteps, settings: Settings | None = None) -> None:
        self.steps = steps
        self.settings = settings  # read as each call fails: LOOMWORK_MODEL_CALL_ATTEMPTS

    def _model_attempts(self) -> int:
        return self.settings.model_call_attempts if self.settings is not None else 0

    @activity.defn(name="agent_start_and_step")
    async def start_and_step(self, request: AgentRunRequest) -> FirstStep:
        async def retrying(notice: RetryNotice) -> None:
            await self.steps.retrying(request, request.first_step, notice)

        work = self.steps.start_and_step(request, attempt=activity.info().attempt)
        lost = request.first_step_rerouted  # its chosen worker may have died mid-step
        return await model_call(work, retrying, self._model_attempts(), after_loss=lost)

    @activity.defn(name="agent_model_step")
    async def model_step(self, step: StepInput) -> StepOutput:
        async def retrying(notice: RetryNotice) -> None:
            await self.steps.retrying(step.request, step, notice)

        work = self.steps.model_step(step, attempt=activity.info().attempt)
        return await model_call(work, retrying, self._model_attempts())

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
