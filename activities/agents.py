"""Activities of an agent run: thin wrappers over loomwork.agents.steps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from loomwork.agents.payloads import (
    FinishInput,
    FirstStep,
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

T = TypeVar("T")


def _application_error(error: LoomworkError) -> ApplicationError:
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


async def _heartbeating(work: Coroutine[Any, Any, T], every: float = 1.0) -> T:
    """Run `work`, heartbeating meanwhile: Temporal delivers a cancel (CancelRun) through
    heartbeats, and cancelling `work` aborts the in-flight model HTTP call.

    The first heartbeat goes out shortly after the start (not before: the first model
    tokens should not wait on it), then one per `every` (the worker sends at most one a
    second to the server either way)."""
    task = asyncio.ensure_future(work)
    wait = min(every, 0.1)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=wait)
            if done:
                return task.result()
            activity.heartbeat()
            wait = every
    except asyncio.CancelledError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise


class AgentActivities:
    def __init__(self, steps: AgentSteps) -> None:
        self.steps = steps

    @activity.defn(name="agent_start_and_step")
    async def start_and_step(self, request: AgentRunRequest) -> FirstStep:
        try:
            return await _heartbeating(
                self.steps.start_and_step(request, attempt=activity.info().attempt)
            )
        except LoomworkError as error:
            raise _application_error(error) from error

    @activity.defn(name="agent_model_step")
    async def model_step(self, step: StepInput) -> StepOutput:
        try:
            return await _heartbeating(self.steps.model_step(step, attempt=activity.info().attempt))
        except LoomworkError as error:
            raise _application_error(error) from error

    @activity.defn(name="agent_tool_call")
    async def tool_call(self, call: ToolInput) -> ToolResultPart:
        try:
            return await _heartbeating(self.steps.tool_call(call, attempt=activity.info().attempt))
        except LoomworkError as error:
            raise _application_error(error) from error

    @activity.defn(name="agent_mcp_tool_call")
    async def mcp_tool_call(self, call: ToolInput) -> ToolResultPart:
        try:
            return await _heartbeating(
                self.steps.mcp_tool_call(call, attempt=activity.info().attempt)
            )
        except LoomworkError as error:
            raise _application_error(error) from error

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
