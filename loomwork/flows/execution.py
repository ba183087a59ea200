"""Running one step execution (what the step activity does) and publishing run events."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from loomwork.errors import LoomworkError
from loomwork.flows.nodes import Step, StepKind, ToolStep
from loomwork.flows.registry import WorkflowRegistry
from loomwork.flows.state import (
    DslRunInput,
    RunError,
    RunStarted,
    StepEvent,
    StepRun,
    WorkflowEvent,
    encode_event,
    event_log_key,
    is_terminal,
)
from loomwork.flows.step_context import StepContext, StepSuspended
from loomwork.streams.run_events import RunEventLog
from loomwork.tools import ToolContext, ToolRegistry
from loomwork.tools.tool_context import OAuthAccess

log = logging.getLogger(__name__)


class StepFailure(LoomworkError):
    """A step's data broke its own schema: retrying cannot help."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class StepCall(BaseModel):
    """One execution of a step: the activity's input."""

    tenant: str
    run_id: str
    workflow_id: str
    workflow_version: str
    node_ids: list[str]  # step ids from the top definition down through nested workflows
    path: str
    iteration: int = 0
    input: dict[str, Any]
    resume_data: dict[str, Any] | None = None
    # Run events the workflow hands over instead of publishing them itself (run_started, to
    # the first step): the first attempt publishes them before its own, which saves the
    # workflow a local activity, and with it a round trip, before the step.
    events: list[WorkflowEvent] = Field(default_factory=list)


class StepOutcome(BaseModel):
    status: Literal["succeeded", "suspended"]
    output: dict[str, Any] | None = None
    suspend_payload: dict[str, Any] | None = None
    attempt: int = 1


class PublishInput(BaseModel):
    """Events the workflow itself publishes (run started/finished, suspends, skips...)."""

    tenant: str
    run_id: str
    events: list[WorkflowEvent]


class WorkflowEvents:
    """Appends a run's events to its log; a run that already ended takes no more."""

    def __init__(self, events: RunEventLog) -> None:
        self.events = events

    async def publish(
        self, tenant: str, run_id: str, events: list[WorkflowEvent], *, first: bool = False
    ) -> int:
        """Append `events` in order; return the id of the last one appended (0 if none; for
        a terminal event the log already ended with, the id it was stored under). With
        `first`, they are the log's first events: each is published only as its position
        (a retry publishes the ones still missing, never twice)."""
        key = event_log_key(tenant, run_id)
        last = 0
        for n, event in enumerate(events, start=1):
            if event.time is None:
                event.time = datetime.now(UTC)
            last = await self.events.publish(
                key, encode_event(event), terminal=is_terminal(event), only_as=n if first else 0
            )
        return last

    async def announce(self, start: DslRunInput) -> DslRunInput:
        """Publish the run's run_started as its first event, as its starter accepts it
        (nothing when its log has events already, or has ended: a repeated start); the
        input to start it with, marked announced, so the workflow does not publish it
        again."""
        started = RunStarted(
            time=datetime.now(UTC),
            workflow_id=start.workflow_id,
            workflow_version=start.workflow_version,
            input=start.input,
        )
        key = event_log_key(start.tenant, start.run_id)
        await self.events.publish(key, encode_event(started), only_as=1)
        return start.model_copy(update={"announced": True})


class StepRunner:
    """Looks the step up in the registry and runs it with validated data."""

    def __init__(
        self,
        registry: WorkflowRegistry,
        events: WorkflowEvents,
        tools: ToolRegistry | None = None,
        services: Mapping[str, Any] | None = None,
        oauth: OAuthAccess | None = None,
    ) -> None:
        self.registry = registry
        self.events = events
        self.tools = tools
        self.services = services or {}
        self.oauth = oauth  # the tenant's OAuth connections, for tools (ctx.oauth)

    async def run(self, call: StepCall, *, attempt: int) -> StepOutcome:
        if call.events:  # the run's first events: any attempt publishes them if still missing
            await self._publish(call, *call.events, first=True)
        node = self.registry.get(call.workflow_id, call.workflow_version).find(call.node_ids)
        if not isinstance(node, Step | ToolStep):
            raise StepFailure("NotAStep", f"{call.path} is a {node.kind}, not a step")
        started = _step_run(call, node.kind, attempt, "running")
        if attempt == 1 and call.resume_data is None:
            await self._publish(call, StepEvent(type="step_started", step=started))
        try:
            if isinstance(node, Step):
                outcome = await self._run_step(node, call, attempt)
            else:
                outcome = await self._run_tool(node, call)
        except StepFailure:
            raise
        except Exception as exc:
            retry = node.retry
            will_retry = (retry.max_attempts == 0 or attempt < retry.max_attempts) and (
                type(exc).__name__ not in retry.non_retryable_error_types
            )
            if will_retry:
                retrying = _step_run(call, node.kind, attempt, "running")
                retrying.error = RunError(type=type(exc).__name__, message=str(exc), retryable=True)
                await self._publish(call, StepEvent(type="step_retrying", step=retrying))
            raise
        if outcome.status == "succeeded":
            done = _step_run(call, node.kind, attempt, "succeeded")
            done.output = outcome.output
            await self._publish(call, StepEvent(type="step_succeeded", step=done))
        return outcome

    async def _run_step(self, node: Step, call: StepCall, attempt: int) -> StepOutcome:
        assert node.fn and node.input_model and node.output_model
        data = _validate(node.input_model, call.input, "InvalidStepInput", f"{call.path} input")
        resume = None
        if call.resume_data is not None and node.resume_model is not None:
            resume = _validate(node.resume_model, call.resume_data, "InvalidResumeData", "resume")
        ctx = StepContext(
            tenant=call.tenant,
            run_id=call.run_id,
            workflow_id=call.workflow_id,
            step_id=node.id,
            path=call.path,
            attempt=attempt,
            resume_data=resume,
            services=self.services,
        )
        try:
            result = await node.fn(data, ctx)
        except StepSuspended as suspended:
            if node.suspend_model is None:
                raise StepFailure(
                    "SuspendNotDeclared", f"step {node.id!r} suspended without a suspend schema"
                ) from None
            payload = _validate(
                node.suspend_model,
                suspended.payload.model_dump(mode="json"),
                "InvalidSuspendPayload",
                f"{call.path} suspend payload",
            )
            return StepOutcome(
                status="suspended", suspend_payload=payload.model_dump(mode="json"), attempt=attempt
            )
        output = _validate(
            node.output_model,
            result.model_dump(mode="json") if isinstance(result, BaseModel) else result,
            "InvalidStepOutput",
            f"{call.path} output",
        )
        return StepOutcome(
            status="succeeded", output=output.model_dump(mode="json"), attempt=attempt
        )

    async def _run_tool(self, node: ToolStep, call: StepCall) -> StepOutcome:
        if self.tools is None:
            raise StepFailure("ToolsUnavailable", "this worker runs no tools")
        tool = self.tools.get(node.tool_name)
        args = _validate(tool.args, call.input, "InvalidStepInput", f"{call.path} input")
        result = await tool.run(
            args,
            ToolContext(
                tenant=call.tenant,
                run_id=f"wf/{call.run_id}",
                tool_call_id=call.path,
                oauth_connections=self.oauth,
            ),
        )
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        return StepOutcome(status="succeeded", output={"result": result})

    async def _publish(self, call: StepCall, *events: WorkflowEvent, first: bool = False) -> None:
        try:
            await self.events.publish(call.tenant, call.run_id, list(events), first=first)
        except Exception:  # the step's work matters more than its progress report
            kinds = ", ".join(event.type for event in events)
            log.warning("could not publish %s for %s", kinds, call.path, exc_info=True)


def _validate(model: type[BaseModel], data: Any, error_type: str, what: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise StepFailure(
            error_type, f"{what} does not match {model.__name__}: {problems}"
        ) from None


def _step_run(call: StepCall, kind: StepKind, attempt: int, status: Any) -> StepRun:
    return StepRun(
        step_id=call.node_ids[-1],
        path=call.path,
        iteration=call.iteration,
        kind=kind,
        status=status,
        input=call.input,
        attempts=attempt,
        start_time=datetime.now(UTC),
    )
