"""DslRun: the one generic workflow that interprets any registered workflow definition.

Each step (a Python step function or a tool) is one activity with the step's own retry
policy, heartbeating (a dead worker's attempt is retried after `STEP_HEARTBEAT_TIMEOUT`, not
the step's timeout), and the step's name as its summary in the Temporal UI; conditions, mappings and
sleeps run here, deterministically. Nested workflows are interpreted inline, under their
step's path; an agent step is a child AgentRun workflow.

The run's state lives in this workflow (query `state`). A suspended step waits for its
resume data, sent by the `resume_run` Update (validated against the step's resume
schema, answered synchronously: what WorkflowService.ResumeRun uses) or by the `resume`
signal with the same JSON payload:

    temporal workflow signal --workflow-id 'wf/<workflow>/<tenant>/<run>' --name resume \
        --input '{"step_id": "approve", "resume_data": {"approved": true}}'
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
)

from workflows.rejections import rejected
from workflows.retries import (
    BOOKKEEPING,
    OUTAGE_PATIENCE,
    STEP_HEARTBEAT_TIMEOUT,
    temporal_retry_policy,
)
from workflows.search_attributes import RUN, STATUS
from workflows.waits import MAX_LISTED_WAITS, WaitingMemo, wait_until

with workflow.unsafe.imports_passed_through():
    from loomwork.agents.run_models import AgentRunRequest, RunOutcome
    from loomwork.flows.execution import PublishInput, StepCall, StepOutcome
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
    from loomwork.flows.registry import default_registry
    from loomwork.flows.state import (
        DslRunInput,
        ResumeRequest,
        RunError,
        RunFailed,
        RunFinished,
        RunStarted,
        RunState,
        StepEvent,
        StepRun,
        WorkflowEvent,
    )
    from loomwork.messages import NewMessage, TextPart

RUN_STEP = "workflow_run_step"
PUBLISH = "workflow_publish"
_RUN_STARTED_BY_STEP = "run-started-published-by-first-step"


# A step whose data breaks its own schemas fails at once.
_NEVER_RETRIED = (
    "InvalidStepInput",
    "InvalidStepOutput",
    "InvalidSuspendPayload",
    "SuspendNotDeclared",
)


# What the memo of waits leaves out of a step execution (GetRun has it).
_STEP_DATA = ("input", "output", "error", "suspend_payload", "resume_data")


class _StepFailed(Exception):
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


@workflow.defn(name="DslRun")
class DslRunWorkflow:
    @workflow.init
    def __init__(self, start: DslRunInput) -> None:
        self._start = start
        # Fails the workflow task (retried, run kept) if the version is no longer deployed.
        self._definition = default_registry.get(start.workflow_id, start.workflow_version)
        self._state = RunState(
            tenant=start.tenant,
            # A schedule's runs all start with run id "": each is the last part of the id
            # Temporal gave its workflow (`wf/<workflow>/<tenant>/sch-<schedule>-<due time>`).
            run_id=start.run_id or workflow.info().workflow_id.rsplit("/", 1)[-1],
            workflow_id=start.workflow_id,
            workflow_version=start.workflow_version,
            input=start.input,
            metadata=start.metadata,
            forked_from=start.forked_from,
        )
        self._node_ids: dict[str, list[str]] = {}
        self._resumes: dict[str, dict[str, Any]] = {}
        self._resume_requests: set[str] = set()
        self._cancel_reason = ""
        self._published_status = ""
        # Events the next step activity publishes before its own (see StepCall.events).
        self._lead_events: list[WorkflowEvent] = []
        self._waiting_memo = WaitingMemo()

    # -- messages ------------------------------------------------------------------------

    @workflow.query(name="state")
    def state(self) -> RunState:
        return self._state

    @workflow.update(name="resume_run")
    async def resume_run(self, request: ResumeRequest) -> RunState:
        """Resume one suspended step; answers once the step runs again."""
        if request.request_id and request.request_id in self._resume_requests:
            return self._state
        target = self._accept_resume(request)
        await workflow.wait_condition(lambda: target.status != "suspended")
        return self._state

    @resume_run.validator
    def _validate_resume(self, request: ResumeRequest) -> None:
        if request.request_id and request.request_id in self._resume_requests:
            return
        problem = self._resume_problem(request)
        if problem is not None:
            raise problem

    @workflow.signal(name="resume")
    def resume(self, request: ResumeRequest) -> None:
        """The same resume as a plain signal; one that does not apply is logged and dropped."""
        if request.request_id and request.request_id in self._resume_requests:
            return
        problem = self._resume_problem(request)
        if problem is not None:
            workflow.logger.warning("resume signal dropped: %s", problem.message)
            return
        self._accept_resume(request)

    @workflow.signal(name="cancel_reason")
    def cancel_reason(self, reason: str) -> None:
        """Sent by CancelRun just before it cancels the run."""
        self._cancel_reason = reason

    def _resume_problem(self, request: ResumeRequest) -> ApplicationError | None:
        matches = self._state.suspended_matching(request.step_id)
        if not matches:
            return rejected(
                "FailedPrecondition",
                [("step_id", f"no step {request.step_id!r} is suspended")],
                f"no step {request.step_id!r} is suspended",
            )
        if len(matches) > 1:
            paths = ", ".join(m.path for m in matches)
            return rejected(
                "FailedPrecondition",
                [("step_id", f"{request.step_id!r} matches several suspended steps: {paths}")],
                f"{request.step_id!r} matches several suspended steps ({paths}); give the path",
            )
        target = matches[0]
        if target.path in self._resumes:
            return rejected(
                "FailedPrecondition",
                [("step_id", f"{target.path!r} is already being resumed")],
                f"{target.path!r} is already being resumed",
            )
        node = self._definition.find(self._node_ids[target.path])
        assert isinstance(node, Step) and node.resume_model is not None
        try:
            node.resume_model.model_validate(request.resume_data)
        except ValidationError as exc:
            violations = [
                (
                    ".".join(["resume_data", *(str(p) for p in err["loc"])]),
                    err["msg"],
                )
                for err in exc.errors()
            ]
            return rejected(
                "InvalidArgument",
                violations,
                f"resume data for {target.path!r} does not match {node.resume_model.__name__}",
            )
        return None

    def _accept_resume(self, request: ResumeRequest) -> StepRun:
        target = self._state.suspended_matching(request.step_id)[0]
        node = self._definition.find(self._node_ids[target.path])
        assert isinstance(node, Step) and node.resume_model is not None
        data = node.resume_model.model_validate(request.resume_data).model_dump(mode="json")
        self._resumes[target.path] = data
        if request.request_id:
            self._resume_requests.add(request.request_id)
        return target

    # -- the run -------------------------------------------------------------------------

    @workflow.run
    async def run(self, start: DslRunInput) -> RunState:
        state = self._state
        state.create_time = state.start_time = workflow.now()
        state.status = "running"
        if not start.run_id:  # started by a schedule: found by its run id from now on
            workflow.upsert_search_attributes([RUN.value_set(state.run_id)])
        self._set_status("running")
        run_started = RunStarted(
            workflow_id=start.workflow_id,
            workflow_version=start.workflow_version,
            input=start.input,
        )
        # A first step's activity publishes run_started before its own events: one local
        # activity less per run. Runs started before this change keep the local activity.
        first = self._definition.nodes[0] if self._definition.nodes else None
        if start.announced:
            pass  # its starter published run_started as it accepted the run
        elif isinstance(first, Step | ToolStep) and workflow.patched(_RUN_STARTED_BY_STEP):
            self._lead_events.append(run_started)  # nothing else runs before that step
        else:
            await self._publish(run_started)
        try:
            produced = await self._chain(self._definition.nodes, start.input, "", [], "")
            output = self._definition.output_model.model_validate(produced).model_dump(mode="json")
        except _StepFailed as failed:
            await self._finish_failed(failed.error)
            raise ApplicationError(
                failed.error.message, type=failed.error.type, non_retryable=True
            ) from None
        except ValidationError as exc:
            error = RunError(type="InvalidRunOutput", message=str(exc))
            await self._finish_failed(error)
            raise ApplicationError(error.message, type=error.type, non_retryable=True) from None
        except asyncio.CancelledError:
            now = workflow.now()
            for step_run in state.steps:
                if step_run.status in ("pending", "running", "suspended", "waiting"):
                    step_run.status = "canceled"
                    step_run.end_time = now
            state.status = "canceled"
            state.end_time = now
            state.error = RunError(type="CANCELED", message=self._cancel_reason or "canceled")
            self._set_status("canceled")
            self._show_waiting()
            state.terminal_event_id = await self._publish(
                RunFinished(status="canceled", error=state.error)
            )
            raise
        state.output = output
        state.status = "succeeded"
        state.end_time = workflow.now()
        self._set_status("succeeded")
        state.terminal_event_id = await self._publish(
            RunFinished(status="succeeded", output=output)
        )
        return state

    async def _finish_failed(self, error: RunError) -> None:
        self._state.status = "failed"
        self._state.error = error
        self._state.end_time = workflow.now()
        self._set_status("failed")
        self._state.terminal_event_id = await self._publish(RunFailed(error=error))

    async def _chain(
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
        self._node_ids[path] = node_ids
        if isinstance(node, Step | ToolStep):
            return await self._step(node, data, path, node_ids, suffix)
        step_run = self._record(node, path, suffix, data)
        try:
            output = await self._composite(node, step_run, data, prefix, ids, suffix)
        except _StepFailed as failed:
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
            await self._changed(StepEvent(type="step_waiting", step=step_run))
            if delay > timedelta(0):
                await workflow.sleep(delay)
            step_run.status = "running"
            await self._changed()
            return data
        if isinstance(node, NestedWorkflow):
            assert node.workflow is not None
            inner_input = node.workflow.input_model.model_validate(data).model_dump(mode="json")
            produced = await self._chain(
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
                self._node_ids[child_path] = [*ids, child.id]
                skipped_run = self._record(child, child_path, suffix, None)
                skipped_run.status = "skipped"
                skipped_run.end_time = workflow.now()
                events.append(StepEvent(type="step_skipped", step=skipped_run))
            if events:
                await self._publish(*events)
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
            raise _StepFailed(
                RunError(
                    type="LoopLimitReached",
                    message=f"{step_run.path} ran {node.max_iterations} times without ending",
                )
            )
        raise _StepFailed(RunError(type="UnknownStep", message=f"cannot run a {node.kind} step"))

    async def _step(
        self,
        node: Step | ToolStep,
        data: dict[str, Any],
        path: str,
        node_ids: list[str],
        suffix: str,
    ) -> dict[str, Any]:
        step_run = self._record(node, path, suffix, data)
        if path in self._start.reused:
            return await self._reuse(step_run, self._start.reused[path])
        resume_data: dict[str, Any] | None = None
        lead, self._lead_events = self._lead_events, []
        executions = 0
        while True:
            executions += 1
            try:
                outcome = await workflow.execute_activity(
                    RUN_STEP,
                    StepCall(
                        tenant=self._state.tenant,
                        run_id=self._state.run_id,
                        workflow_id=self._state.workflow_id,
                        workflow_version=self._state.workflow_version,
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
                await self._changed(StepEvent(type="step_failed", step=step_run))
                raise _StepFailed(error) from None
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
            await self._changed(StepEvent(type="step_suspended", step=step_run))
            if not await wait_until(
                lambda: path in self._resumes, step_run.expire_time, summary=f"{path} timeout"
            ):
                await self._suspend_timed_out(node, step_run)
            resume_data = self._resumes.pop(path)
            step_run.status = "running"
            step_run.resume_data = resume_data
            step_run.resume_time = workflow.now()
            await self._changed(StepEvent(type="step_resumed", step=step_run))

    async def _reuse(self, step_run: StepRun, output: Any) -> dict[str, Any]:
        """A fork's step before its fork point: the original run's recorded output, taken
        as it was (no activity runs; the step says which run it came from)."""
        lead, self._lead_events = self._lead_events, []
        if lead:
            await self._publish(*lead)
        step_run.status = "succeeded"
        step_run.output = output
        step_run.attempts = 0
        step_run.reused_from = self._start.forked_from
        step_run.end_time = workflow.now()
        await self._changed(StepEvent(type="step_succeeded", step=step_run))
        return output or {}

    async def _suspend_timed_out(self, node: Step | ToolStep, step_run: StepRun) -> None:
        """No resume data within the step's suspend timeout: it resumes with the step's
        `resume_on_timeout`, or fails without one."""
        if isinstance(node, Step) and node.resume_on_timeout is not None:
            self._resumes[step_run.path] = node.resume_on_timeout.model_dump(mode="json")
            return
        assert step_run.expire_time is not None and step_run.suspend_time is not None
        waited = step_run.expire_time - step_run.suspend_time
        error = RunError(
            type="SuspendTimedOut", message=f"{step_run.path}: no resume data within {waited}"
        )
        step_run.status = "failed"
        step_run.error = error
        step_run.end_time = workflow.now()
        await self._changed(StepEvent(type="step_failed", step=step_run))
        raise _StepFailed(error)

    async def _agent(
        self, node: AgentStep, step_run: StepRun, data: dict[str, Any]
    ) -> dict[str, Any]:
        request = AgentStepInput.model_validate(data)
        agent_run_id = f"{self._state.run_id}.{step_run.path}"
        try:
            outcome = await workflow.execute_child_workflow(
                "AgentRun",
                AgentRunRequest(
                    tenant=self._state.tenant,
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
            raise _StepFailed(_activity_error(exc)) from None
        if outcome.status != "succeeded":
            raise _StepFailed(
                RunError(
                    type="AgentRunFailed",
                    message=f"agent {node.agent_name} ended {outcome.status} "
                    f"({outcome.finish_reason})",
                )
            )
        return AgentStepOutput(
            text=outcome.text, run_id=agent_run_id, thread_id=outcome.thread_id
        ).model_dump(mode="json")

    # -- bookkeeping ---------------------------------------------------------------------

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
        self._state.steps.append(step_run)
        return step_run

    async def _changed(self, *events: WorkflowEvent) -> None:
        # The status first: an Update waiting on this change answers with a current run.
        self._set_status(self._state.derived_status())
        self._show_waiting()
        if events:
            await self._publish(*events)

    def _show_waiting(self) -> None:
        """Keep the memo ListRuns reads equal to the steps the run waits on (suspended or
        sleeping), without their data."""
        waits = [
            s.model_copy(update=dict.fromkeys(_STEP_DATA)).model_dump(mode="json")
            for s in self._state.steps
            if s.status in ("suspended", "waiting")
        ][:MAX_LISTED_WAITS]
        self._waiting_memo.show(waits or None)

    def _set_status(self, status: str) -> None:
        if self._state.status not in ("succeeded", "failed", "canceled"):
            self._state.status = status  # type: ignore[assignment]
        if status != self._published_status:
            self._published_status = status
            workflow.upsert_search_attributes([STATUS.value_set(status.upper())])

    async def _publish(self, *events: WorkflowEvent) -> int:
        """Publish events (a local activity); the last one's id, 0 when unknown."""
        last = await workflow.execute_local_activity(
            PUBLISH,
            PublishInput(tenant=self._state.tenant, run_id=self._state.run_id, events=list(events)),
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_close_timeout=OUTAGE_PATIENCE,
            retry_policy=BOOKKEEPING,
        )
        return last if isinstance(last, int) else 0  # runs recorded before it returned ids
