"""How DslRun (workflows/dsl_run.py) interprets a workflow definition's nodes: a step or a
tool step is one activity (suspended until its resume data comes, or its suspend timeout
passes; a fork's steps before its fork point take the original's output), an agent step a
child AgentRun; maps, sleeps, nested workflows, branches, parallel, foreach and loop nodes
run here, deterministically, each recorded as a step of the run under its path."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Protocol

from pydantic import BaseModel
from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
)

from workflows.retries import STEP_HEARTBEAT_TIMEOUT, temporal_retry_policy
from workflows.waits import wait_until

with workflow.unsafe.imports_passed_through():
    from loomwork.agents.run_models import AgentRunRequest, RunOutcome
    from loomwork.flows.definition import Workflow
    from loomwork.flows.execution import StepCall, StepOutcome
    from loomwork.flows.nodes import (
        AgentStep,
        AgentStepInput,
        AgentStepOutput,
        Branch,
        Foreach,
        Loop,
        MapNode,
        NestedWorkflow,
        Node,
        Parallel,
        Sleep,
        SleepUntil,
        Step,
        ToolStep,
    )
    from loomwork.flows.state import (
        DslRunInput,
        RunError,
        RunState,
        StepEvent,
        StepRun,
        WorkflowEvent,
    )
    from loomwork.messages import NewMessage, TextPart

RUN_STEP = "workflow_run_step"


# A step whose data breaks its own schemas fails at once.
_NEVER_RETRIED = (
    "InvalidStepInput",
    "InvalidStepOutput",
    "InvalidSuspendPayload",
    "SuspendNotDeclared",
)


class StepFailed(Exception):
    """A step failed for good, or a node could not run: the run fails with `error`."""

    def __init__(self, error: RunError) -> None:
        super().__init__(error.message)
        self.error = error


def _activity_error(error: BaseException) -> RunError:
    cause: BaseException | None = error
    while isinstance(cause, ActivityError | ChildWorkflowError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, ApplicationError):
        return RunError(type=cause.type or "ApplicationError", message=cause.message)
    return RunError(type=type(cause).__name__, message=str(cause))


def _attempts(error: ActivityError) -> int:
    """The step activity reports its attempt number as the first detail of its failure."""
    cause = error.cause
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], int):
        return cause.details[0]
    return 1


class Changed(Protocol):
    """The run's status and memo follow its steps, then `events` are published."""

    async def __call__(self, *events: WorkflowEvent) -> None: ...


class Publish(Protocol):
    """Publish events (a local activity); the last one's id, 0 when unknown."""

    async def __call__(self, *events: WorkflowEvent) -> int: ...


class DslInterpreter:
    """The nodes of one run, interpreted over its `state` (each node's StepRun), with the
    resume data its suspended steps are given (`resumes`, by path) and the events its next
    step activity publishes before its own (`lead_events`, see StepCall.events)."""

    def __init__(
        self,
        start: DslRunInput,
        definition: Workflow,
        state: RunState,
        changed: Changed,
        publish: Publish,
    ) -> None:
        self.start = start
        self.definition = definition
        self.state = state
        self.changed = changed
        self.publish = publish
        self.node_ids: dict[str, list[str]] = {}  # each step's node ids, by its path
        self.resumes: dict[str, dict[str, Any]] = {}
        self.lead_events: list[WorkflowEvent] = []

    async def chain(
        self, nodes: list[Node], data: dict[str, Any], prefix: str, ids: list[str], suffix: str
    ) -> dict[str, Any]:
        for node in nodes:
            data = await self._node(node, data, prefix, ids, suffix)
        return data

    async def _node(
        self, node: Node, data: dict[str, Any], prefix: str, ids: list[str], suffix: str
    ) -> dict[str, Any]:
        path = f"{prefix}{node.id}{suffix}"
        node_ids = [*ids, node.id]
        self.node_ids[path] = node_ids
        if isinstance(node, Step | ToolStep):
            return await self._step(node, data, path, node_ids, suffix)
        step_run = self._record(node, path, suffix, data)
        try:
            output = await self._composite(node, step_run, data, prefix, ids, suffix)
        except StepFailed as failed:
            step_run.status = "failed"
            step_run.error = failed.error
            step_run.end_time = workflow.now()
            raise
        step_run.status = "succeeded"
        step_run.output = output
        step_run.end_time = workflow.now()
        return output

    async def _composite(
        self,
        node: Node,
        step_run: StepRun,
        data: dict[str, Any],
        prefix: str,
        ids: list[str],
        suffix: str,
    ) -> dict[str, Any]:
        if isinstance(node, MapNode):
            assert node.fn and node.input_model and node.output_model
            mapped = node.fn(node.input_model.model_validate(data))
            return node.output_model.model_validate(
                mapped.model_dump(mode="json") if isinstance(mapped, BaseModel) else mapped
            ).model_dump(mode="json")
        if isinstance(node, Sleep | SleepUntil):
            if isinstance(node, Sleep):
                delay = node.duration
            else:
                assert node.fn and node.input_model
                delay = max(
                    node.fn(node.input_model.model_validate(data)) - workflow.now(), timedelta(0)
                )
            step_run.status = "waiting"
            step_run.wake_time = workflow.now() + delay
            await self.changed(StepEvent(type="step_waiting", step=step_run))
            if delay > timedelta(0):
                await workflow.sleep(delay)
            step_run.status = "running"
            await self.changed()
            return data
        if isinstance(node, NestedWorkflow):
            assert node.workflow is not None
            inner_input = node.workflow.input_model.model_validate(data).model_dump(mode="json")
            produced = await self.chain(
                node.workflow.nodes, inner_input, f"{step_run.path}/", [*ids, node.id], ""
            )
            return node.workflow.output_model.model_validate(produced).model_dump(mode="json")
        if isinstance(node, AgentStep):
            return await self._agent(node, step_run, data)
        if isinstance(node, Branch):
            assert node.input_model is not None
            model = node.input_model.model_validate(data)
            taken: Node | None = next((child for cond, child in node.branches if cond(model)), None)
            taken = taken or node.default
            skipped = [child for child in node.children() if child is not taken]
            events: list[WorkflowEvent] = []
            for child in skipped:
                child_path = f"{prefix}{child.id}{suffix}"
                self.node_ids[child_path] = [*ids, child.id]
                skipped_run = self._record(child, child_path, suffix, None)
                skipped_run.status = "skipped"
                skipped_run.end_time = workflow.now()
                events.append(StepEvent(type="step_skipped", step=skipped_run))
            if events:
                await self.publish(*events)
            if taken is None:  # no condition held and no default: the data passes through
                return data
            return await self._node(taken, data, prefix, ids, suffix)
        if isinstance(node, Parallel):
            outputs = await asyncio.gather(
                *(self._node(child, data, prefix, ids, suffix) for child in node.nodes)
            )
            return {child.id: out for child, out in zip(node.nodes, outputs, strict=True)}
        if isinstance(node, Foreach):
            assert node.body is not None
            items = data.get(node.over) or []
            limit = asyncio.Semaphore(node.concurrency)
            body = node.body

            async def one(i: int, item: dict[str, Any]) -> dict[str, Any]:
                async with limit:
                    return await self._node(body, item, prefix, ids, f"{suffix}[{i}]")

            results = await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
            return {"results": list(results)}
        if isinstance(node, Loop):
            assert node.body is not None and node.condition is not None
            body_model = node.body.output_model
            assert body_model is not None
            current = data
            for i in range(node.max_iterations):
                current = await self._node(node.body, current, prefix, ids, f"{suffix}[{i}]")
                holds = bool(node.condition(body_model.model_validate(current)))
                if holds == node.until:
                    return current
            raise StepFailed(
                RunError(
                    type="LoopLimitReached",
                    message=f"{step_run.path} ran {node.max_iterations} times without ending",
                )
            )
        raise StepFailed(RunError(type="UnknownStep", message=f"cannot run a {node.kind} step"))

    async def _step(
        self,
        node: Step | ToolStep,
        data: dict[str, Any],
        path: str,
        node_ids: list[str],
        suffix: str,
    ) -> dict[str, Any]:
        step_run = self._record(node, path, suffix, data)
        if path in self.start.reused:
            return await self._reuse(step_run, self.start.reused[path])
        resume_data: dict[str, Any] | None = None
        lead, self.lead_events = self.lead_events, []
        executions = 0
        while True:
            executions += 1
            try:
                outcome = await workflow.execute_activity(
                    RUN_STEP,
                    StepCall(
                        tenant=self.state.tenant,
                        run_id=self.state.run_id,
                        workflow_id=self.state.workflow_id,
                        workflow_version=self.state.workflow_version,
                        node_ids=node_ids,
                        path=path,
                        iteration=step_run.iteration,
                        input=data,
                        resume_data=resume_data,
                        events=lead if executions == 1 else [],
                    ),
                    result_type=StepOutcome,
                    activity_id=path if executions == 1 else f"{path}#{executions}",
                    summary=node.id + (f": {node.description}" if node.description else ""),
                    start_to_close_timeout=node.retry.timeout,
                    heartbeat_timeout=STEP_HEARTBEAT_TIMEOUT,
                    retry_policy=temporal_retry_policy(node.retry, never_retried=_NEVER_RETRIED),
                )
            except ActivityError as exc:
                if isinstance(exc.cause, CancelledError):  # CancelRun reached the step
                    raise asyncio.CancelledError() from exc
                error = _activity_error(exc)
                step_run.status = "failed"
                step_run.error = error
                step_run.attempts = max(step_run.attempts, _attempts(exc))
                step_run.end_time = workflow.now()
                await self.changed(StepEvent(type="step_failed", step=step_run))
                raise StepFailed(error) from None
            step_run.attempts = max(step_run.attempts, outcome.attempt)
            if outcome.status == "succeeded":
                step_run.status = "succeeded"
                step_run.output = outcome.output
                step_run.end_time = workflow.now()
                return outcome.output or {}
            step_run.status = "suspended"
            step_run.suspend_payload = outcome.suspend_payload
            step_run.suspend_time = workflow.now()
            timeout = node.suspend_timeout if isinstance(node, Step) else None
            step_run.expire_time = workflow.now() + timeout if timeout is not None else None
            await self.changed(StepEvent(type="step_suspended", step=step_run))
            if not await wait_until(
                lambda: path in self.resumes, step_run.expire_time, summary=f"{path} timeout"
            ):
                await self._suspend_timed_out(node, step_run)
            resume_data = self.resumes.pop(path)
            step_run.status = "running"
            step_run.resume_data = resume_data
            step_run.resume_time = workflow.now()
            await self.changed(StepEvent(type="step_resumed", step=step_run))

    async def _reuse(self, step_run: StepRun, output: Any) -> dict[str, Any]:
        """A fork's step before its fork point: the original run's recorded output, taken
        as it was (no activity runs; the step says which run it came from)."""
        lead, self.lead_events = self.lead_events, []
        if lead:
            await self.publish(*lead)
        step_run.status = "succeeded"
        step_run.output = output
        step_run.attempts = 0
        step_run.reused_from = self.start.forked_from
        step_run.end_time = workflow.now()
        await self.changed(StepEvent(type="step_succeeded", step=step_run))
        return output or {}

    async def _suspend_timed_out(self, node: Step | ToolStep, step_run: StepRun) -> None:
        """No resume data within the step's suspend timeout: it resumes with the step's
        `resume_on_timeout`, or fails without one."""
        if isinstance(node, Step) and node.resume_on_timeout is not None:
            self.resumes[step_run.path] = node.resume_on_timeout.model_dump(mode="json")
            return
        assert step_run.expire_time is not None and step_run.suspend_time is not None
        waited = step_run.expire_time - step_run.suspend_time
        error = RunError(
            type="SuspendTimedOut", message=f"{step_run.path}: no resume data within {waited}"
        )
        step_run.status = "failed"
        step_run.error = error
        step_run.end_time = workflow.now()
        await self.changed(StepEvent(type="step_failed", step=step_run))
        raise StepFailed(error)

    async def _agent(
        self, node: AgentStep, step_run: StepRun, data: dict[str, Any]
    ) -> dict[str, Any]:
        request = AgentStepInput.model_validate(data)
        agent_run_id = f"{self.state.run_id}.{step_run.path}"
        try:
            outcome = await workflow.execute_child_workflow(
                "AgentRun",
                AgentRunRequest(
                    tenant=self.state.tenant,
                    run_id=agent_run_id,
                    agent_name=node.agent_name,
                    input_messages=[NewMessage(role="user", parts=[TextPart(text=request.prompt)])],
                    thread_id=request.thread_id,
                    resource_id=request.resource_id,
                    max_steps=node.max_steps,
                ),
                id=f"{workflow.info().workflow_id}/{step_run.path}",
                result_type=RunOutcome,
                static_summary=f"agent {node.agent_name} for step {step_run.path}",
            )
        except ChildWorkflowError as exc:
            raise StepFailed(_activity_error(exc)) from None
        if outcome.status != "succeeded":
            raise StepFailed(
                RunError(
                    type="AgentRunFailed",
                    message=f"agent {node.agent_name} ended {outcome.status} "
                    f"({outcome.finish_reason})",
                )
            )
        return AgentStepOutput(
            text=outcome.text, run_id=agent_run_id, thread_id=outcome.thread_id
        ).model_dump(mode="json")

    def _record(self, node: Node, path: str, suffix: str, data: dict[str, Any] | None) -> StepRun:
        iteration = int(suffix.rsplit("[", 1)[1].rstrip("]")) if suffix else 0
        step_run = StepRun(
            step_id=node.id,
            path=path,
            iteration=iteration,
            kind=node.kind,
            status="running",
            input=data,
            attempts=1 if isinstance(node, Step | ToolStep) else 0,
            start_time=workflow.now(),
        )
        self.state.steps.append(step_run)
        return step_run
