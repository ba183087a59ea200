"""DslRun: the one generic workflow that interprets any registered workflow definition.

Each step (a Python step function or a tool) is one activity with the step's own retry
policy, heartbeating (a dead worker's attempt is retried after `STEP_HEARTBEAT_TIMEOUT`, not
the step's timeout), and the step's name as its summary in the Temporal UI; conditions, mappings and
sleeps run here, deterministically. Nested workflows are interpreted inline, under their
step's path; an agent step is a child AgentRun workflow (workflows/dsl_interpreter.py
interprets the nodes).

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

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.dsl_interpreter import DslInterpreter, StepFailed
from workflows.rejections import rejected
from workflows.retries import BOOKKEEPING, OUTAGE_PATIENCE
from workflows.search_attributes import RUN, STATUS
from workflows.waits import MAX_LISTED_WAITS, WaitingMemo

with workflow.unsafe.imports_passed_through():
    from loomwork.flows.execution import PublishInput
    from loomwork.flows.nodes import Step, ToolStep
    from loomwork.flows.registry import default_registry
    from loomwork.flows.state import (
        DslRunInput,
        ResumeRequest,
        RunError,
        RunFailed,
        RunFinished,
        RunStarted,
        RunState,
        StepRun,
        WorkflowEvent,
    )

PUBLISH = "workflow_publish"
_RUN_STARTED_BY_STEP = "run-started-published-by-first-step"


# What the memo of waits leaves out of a step execution (GetRun has it).
_STEP_DATA = ("input", "output", "error", "suspend_payload", "resume_data")


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
        self._resume_requests: set[str] = set()
        self._cancel_reason = ""
        self._published_status = ""
        self._waiting_memo = WaitingMemo()
        # The definition's nodes, as this run interprets them (workflows/dsl_interpreter.py).
        self._nodes = DslInterpreter(
            start, self._definition, self._state, self._changed, self._publish
        )

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
        if target.path in self._nodes.resumes:
            return rejected(
                "FailedPrecondition",
                [("step_id", f"{target.path!r} is already being resumed")],
                f"{target.path!r} is already being resumed",
            )
        node = self._definition.find(self._nodes.node_ids[target.path])
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
        node = self._definition.find(self._nodes.node_ids[target.path])
        assert isinstance(node, Step) and node.resume_model is not None
        data = node.resume_model.model_validate(request.resume_data).model_dump(mode="json")
        self._nodes.resumes[target.path] = data
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
            self._nodes.lead_events.append(run_started)  # nothing else runs before that step
        else:
            await self._publish(run_started)
        try:
            produced = await self._nodes.chain(self._definition.nodes, start.input, "", [], "")
            output = self._definition.output_model.model_validate(produced).model_dump(mode="json")
        except StepFailed as failed:
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

    # -- bookkeeping ---------------------------------------------------------------------

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
