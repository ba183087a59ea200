"""WorkflowService: registered workflow definitions and their runs on Temporal."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from pydantic import ValidationError
from temporalio.api.enums.v1 import WorkflowExecutionStatus as RawStatus
from temporalio.client import (
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from activities.run_lookup import RunLookup, visibility_literal
from activities.workflow_runs import DSL_RUN, START_OUTCOME_UNKNOWN, WorkflowRunStarter
from loomwork.agents.directory import RunDirectory
from loomwork.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    Violations,
)
from loomwork.flows.definition import Workflow
from loomwork.flows.fork import Fork, reusable_outputs
from loomwork.flows.state import (
    TERMINAL_RUN,
    DslRunInput,
    ResumeRequest,
    RunError,
    RunFailed,
    RunPending,
    RunState,
    WorkflowEvent,
    decode_event,
    encode_event,
    event_log_key,
    temporal_workflow_id,
    terminal_event,
)
from loomwork.ids import CLIENT_ID_RULE, is_valid_client_id, new_id
from loomwork.paging import (
    decode_page_token,
    encode_page_token,
)
from loomwork.schedules import check_schedule_id
from protos.loomwork.v1 import workflow_pb2, workflow_pb2_grpc
from server.quotas import admit_run, refuse_run
from server.runtime import Runtime
from server.servicers import workflow_convert
from server.servicers.keep_alive_convert import keep_alive_to_proto
from server.servicers.relay import (
    ClosedRunEnd,
    KeepAlive,
    KeepAlives,
    PendingNotice,
    relay_run_events,
)
from server.servicers.run_listing import listed_workflow_run, status_clause, visibility_page
from server.servicers.tenancy import tenant
from server.servicers.well_known_convert import set_timestamp, struct_to_dict
from server.servicers.workflow_schedules import ScheduleRpcs
from server.temporal import ABNORMAL_END, closure_error, not_taken, query_state, start_input
from workflows.dsl_run import DslRunWorkflow
from workflows.search_attributes import SCHEDULE
from workflows.waits import WAITING_MEMO

log = logging.getLogger(__name__)

MAX_DATA_BYTES = 2 * 1024 * 1024
MAX_METADATA_BYTES = 16 * 1024
MAX_REASON = 1024
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

_TERMINAL_STATUS = {
    RawStatus.WORKFLOW_EXECUTION_STATUS_COMPLETED: "succeeded",
    RawStatus.WORKFLOW_EXECUTION_STATUS_FAILED: "failed",
    RawStatus.WORKFLOW_EXECUTION_STATUS_TERMINATED: "failed",
    RawStatus.WORKFLOW_EXECUTION_STATUS_TIMED_OUT: "failed",
    RawStatus.WORKFLOW_EXECUTION_STATUS_CANCELED: "canceled",
}


def _page_size(value: int) -> int:
    if value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgument.field("page_size", f"must be 0..{MAX_PAGE_SIZE}")
    return value or DEFAULT_PAGE_SIZE


def _start_violations(client_run_id: str, data: Struct) -> Violations:
    """What is wrong with a new run's id and input (StartRun, ForkRun)."""
    violations = Violations()
    if client_run_id and not is_valid_client_id(client_run_id):
        violations.add("client_run_id", CLIENT_ID_RULE)
    if data.ByteSize() > MAX_DATA_BYTES:
        violations.add("input", "must be at most 2 MiB serialized")
    return violations


def _valid_input(definition: Workflow, given: dict[str, Any]) -> dict[str, Any]:
    """`given` as the workflow's input model makes it, or INVALID_ARGUMENT naming the fields."""
    try:
        return definition.input_model.model_validate(given).model_dump(mode="json")
    except ValidationError as exc:
        raise InvalidArgument(
            _validation_violations("input", exc),
            f"input does not match the input schema of {definition.id!r}",
        ) from None


def _validation_violations(prefix: str, error: ValidationError) -> list[FieldViolation]:
    return [
        FieldViolation(".".join([prefix, *(str(p) for p in err["loc"])]), err["msg"])
        for err in error.errors()
    ]


class WorkflowServicer(ScheduleRpcs, workflow_pb2_grpc.WorkflowServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        ScheduleRpcs.__init__(self, runtime)
        self.runtime = runtime
        self.registry = runtime.flows
        self.directory = RunDirectory(runtime.redis, prefix="loomwork:workflow-run")
        self.runs = RunLookup(self.directory, runtime.temporal, DSL_RUN)
        self.starter = WorkflowRunStarter(
            runtime.temporal, runtime.events, self.directory, runtime.settings.task_queue
        )

    # -- definitions ---------------------------------------------------------------------

    async def ListWorkflows(
        self, request: workflow_pb2.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.ListWorkflowsResponse:
        size = _page_size(request.page_size)
        start = decode_page_token(request.page_token, "workflows") or 0
        workflows = self.registry.newest()
        page = workflows[start : start + size]
        more = start + size < len(workflows)
        return workflow_pb2.ListWorkflowsResponse(
            workflows=[workflow_convert.workflow_to_proto(w.describe()) for w in page],
            next_page_token=encode_page_token(start + size, "workflows") if more else "",
        )

    async def GetWorkflow(
        self, request: workflow_pb2.GetWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.GetWorkflowResponse:
        workflow = self._definition(request.workflow_id)
        return workflow_pb2.GetWorkflowResponse(
            workflow=workflow_convert.workflow_to_proto(workflow.describe())
        )

    def _definition(self, workflow_id: str) -> Workflow:
        if not workflow_id:
            raise InvalidArgument.field("workflow_id", "is required")
        try:
            return self.registry.latest(workflow_id)
        except NotFound:
            raise NotFound(f"workflow {workflow_id!r} is not registered") from None

    # -- runs ----------------------------------------------------------------------------

    async def StartRun(
        self,
        request: workflow_pb2.WorkflowServiceStartRunRequest,
        context: grpc.aio.ServicerContext,
    ) -> workflow_pb2.WorkflowServiceStartRunResponse:
        tenant_id = tenant()
        violations = _start_violations(request.client_run_id, request.input)
        if request.metadata.ByteSize() > MAX_METADATA_BYTES:
            violations.add("metadata", "must be at most 16 KiB serialized")
        if WAITING_MEMO in request.metadata.fields:  # kept beside it in the run's memo
            violations.add(f"metadata.{WAITING_MEMO}", "is a key Loomwork keeps for itself")
        if not request.workflow_id:
            violations.add("workflow_id", "is required")
        violations.raise_if_any()
        definition = self._definition(request.workflow_id)
        data = _valid_input(definition, struct_to_dict(request.input))
        return workflow_pb2.WorkflowServiceStartRunResponse(
            run=await self._start(
                tenant_id, definition, data, struct_to_dict(request.metadata), request.client_run_id
            )
        )

    async def ForkRun(
        self,
        request: workflow_pb2.WorkflowServiceForkRunRequest,
        context: grpc.aio.ServicerContext,
    ) -> workflow_pb2.WorkflowServiceForkRunResponse:
        tenant_id = tenant()
        _start_violations(request.client_run_id, request.input).raise_if_any()
        original = await self._state(
            self._handle(await self._require(tenant_id, request.run_id)), request.run_id
        )
        reused = reusable_outputs(original, request.from_step_id)
        definition = self._definition(original.workflow_id)
        given = struct_to_dict(request.input) if request.HasField("input") else original.input
        run = await self._start(
            tenant_id,
            definition,
            _valid_input(definition, given),
            original.metadata,
            request.client_run_id,
            fork=Fork(forked_from=original.run_id, reused=reused),
        )
        return workflow_pb2.WorkflowServiceForkRunResponse(run=run)

    async def _start(
        self,
        tenant_id: str,
        definition: Workflow,
        data: dict[str, Any],
        metadata: dict[str, Any],
        client_run_id: str,
        *,
        fork: Fork | None = None,
    ) -> workflow_pb2.WorkflowRun:
        """Start a run of `definition` on valid input `data` (StartRun, ForkRun), or find
        the run `client_run_id` names."""
        run_id = client_run_id or new_id("wfr")
        if client_run_id:
            existing = await self.runs.workflow_id(tenant_id, run_id)
            if existing is not None:
                if existing.split("/")[1] != definition.id:
                    raise AlreadyExists(
                        f"run {run_id!r} already exists for workflow {existing.split('/')[1]!r}"
                    )
                with contextlib.suppress(NotFound):
                    return await self._run(tenant_id, run_id, existing)
                if await self.directory.was_started(tenant_id, run_id):
                    raise AlreadyExists(
                        f"client_run_id {run_id!r} named a run that has ended and is no longer"
                        " kept by Temporal (its retention): give a new id"
                    )
                # Recorded but never started (the first call's start failed): start it now.
        workflow_id = temporal_workflow_id(definition.id, tenant_id, run_id)
        slot = await admit_run(self.runtime, tenant_id, workflow_id)  # the tenant's quotas
        try:
            # Announced as it is accepted: a watcher sees run_started at once, and is told
            # if no worker takes the run (run_pending follows it).
            handle = await self.starter.start(
                tenant_id,
                run_id,
                definition,
                data,
                metadata=metadata,
                fork=fork,
                summary=f"workflow {definition.id} v{definition.version}, run {run_id}",
            )
        except RPCError as error:
            if error.status not in START_OUTCOME_UNKNOWN:
                await refuse_run(self.runtime, tenant_id, workflow_id, slot)
            raise Unavailable(f"Temporal: {error.message}") from error
        self.runs.remember(tenant_id, run_id, workflow_id)
        if client_run_id:  # a repeat of the id, once Temporal dropped the run, is refused
            await self.directory.mark_started(tenant_id, run_id)
        if handle is None:  # it ran before: as it stands
            return await self._run(tenant_id, run_id, workflow_id)
        state = RunState(
            tenant=tenant_id,
            run_id=run_id,
            workflow_id=definition.id,
            workflow_version=definition.version,
            input=data,
            metadata=metadata,
            forked_from=fork.forked_from if fork else "",
        )
        return workflow_convert.run_to_proto(
            state, temporal_workflow_id=workflow_id, temporal_run_id=handle.result_run_id or ""
        )

    async def GetRun(
        self,
        request: workflow_pb2.WorkflowServiceGetRunRequest,
        context: grpc.aio.ServicerContext,
    ) -> workflow_pb2.WorkflowServiceGetRunResponse:
        tenant_id = tenant()
        workflow_id = await self._require(tenant_id, request.run_id)
        return workflow_pb2.WorkflowServiceGetRunResponse(
            run=await self._run(tenant_id, request.run_id, workflow_id)
        )

    async def ListRuns(
        self,
        request: workflow_pb2.WorkflowServiceListRunsRequest,
        context: grpc.aio.ServicerContext,
    ) -> workflow_pb2.WorkflowServiceListRunsResponse:
        tenant_id = tenant()
        size = _page_size(request.page_size)
        clauses = ["WorkflowType = 'DslRun'", f"LoomworkTenant = {visibility_literal(tenant_id)}"]
        if request.workflow_id:
            self._definition(request.workflow_id)
            clauses.append(f"LoomworkWorkflow = {visibility_literal(request.workflow_id)}")
        statuses = []
        for i, wanted in enumerate(request.statuses):
            status_name = workflow_convert.RUN_STATUS_NAMES.get(wanted)
            if status_name is None:
                raise InvalidArgument.field(f"statuses[{i}]", "is not a run status")
            statuses.append(status_name.upper())
        if statuses:
            clauses.append(status_clause(set(statuses)))
        if request.schedule_id:
            check_schedule_id(request.schedule_id, "schedule_id")
            clauses.append(f"LoomworkSchedule = {visibility_literal(request.schedule_id)}")
        executions, token = await visibility_page(
            self.runtime.temporal, " AND ".join(clauses), size, request.page_token
        )  # visibility lists newest first
        return workflow_pb2.WorkflowServiceListRunsResponse(
            runs=[await listed_workflow_run(e, tenant_id) for e in executions],
            next_page_token=token,
        )

    async def ResumeRun(
        self,
        request: workflow_pb2.WorkflowServiceResumeRunRequest,
        context: grpc.aio.ServicerContext,
    ) -> workflow_pb2.WorkflowServiceResumeRunResponse:
        tenant_id = tenant()
        violations = Violations()
        if not request.run_id:
            violations.add("run_id", "is required")
        if not request.step_id:
            violations.add("step_id", "is required")
        if request.resume_data.ByteSize() > MAX_DATA_BYTES:
            violations.add("resume_data", "must be at most 2 MiB serialized")
        if request.request_id and not is_valid_client_id(request.request_id):
            violations.add("request_id", CLIENT_ID_RULE)
        violations.raise_if_any()
        workflow_id = await self._require(tenant_id, request.run_id)
        handle = self._handle(workflow_id)
        if not request.request_id:
            await self._require_open(handle, request.run_id, "resume")
        try:
            # The request id is also the Update's id: Temporal answers a repeat with the
            # first outcome, even once the resume has let the run end.
            state = await handle.execute_update(
                "resume_run",
                ResumeRequest(
                    step_id=request.step_id,
                    resume_data=struct_to_dict(request.resume_data),
                    request_id=request.request_id,
                ),
                id=request.request_id or None,
                result_type=RunState,
            )
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise FailedPrecondition(f"run {request.run_id!r} has ended") from error
            raise Unavailable(f"Temporal: {error.message}") from error
        return workflow_pb2.WorkflowServiceResumeRunResponse(
            run=await self._to_proto(state, handle)
        )

    async def CancelRun(
        self,
        request: workflow_pb2.WorkflowServiceCancelRunRequest,
        context: grpc.aio.ServicerContext,
    ) -> workflow_pb2.WorkflowServiceCancelRunResponse:
        tenant_id = tenant()
        if len(request.reason) > MAX_REASON:
            raise InvalidArgument.field("reason", f"must be at most {MAX_REASON} characters")
        workflow_id = await self._require(tenant_id, request.run_id)
        handle = self._handle(workflow_id)
        state = await self._state(handle, request.run_id)
        if state.status in ("succeeded", "failed"):
            raise FailedPrecondition(f"run {request.run_id!r} already {state.status}")
        if state.status != "canceled":
            try:
                await handle.signal(DslRunWorkflow.cancel_reason, request.reason or "canceled")
                await handle.cancel()
            except RPCError as error:
                if error.status != RPCStatusCode.NOT_FOUND:
                    raise Unavailable(f"Temporal: {error.message}") from error
        return workflow_pb2.WorkflowServiceCancelRunResponse(
            run=await self._run(tenant_id, request.run_id, workflow_id)
        )

    async def WatchRun(
        self,
        request: workflow_pb2.WorkflowServiceWatchRunRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[workflow_pb2.WorkflowServiceWatchRunResponse]:
        tenant_id = tenant()
        if request.after_event_id < 0:
            raise InvalidArgument.field("after_event_id", "must be 0 or more")
        run_id = request.run_id
        handle = self._handle(await self._require(tenant_id, run_id))

        async def expired_end() -> tuple[int, WorkflowEvent] | None:
            # Nothing in Redis: not started yet, or finished long enough ago that its events
            # expired; then only the terminal event, rebuilt with its original id.
            state = await self._state(handle, run_id)
            if state.status in TERMINAL_RUN and state.terminal_event_id:
                return state.terminal_event_id, terminal_event(state)
            return None

        async def closed_end() -> bytes | None:
            # The workflow closed and its log has no terminal event: terminated, timed out or
            # failed from outside (its failure is the run's error), or its log lost that event.
            description = await self._describe(handle, run_id)
            if description.status in (None, WorkflowExecutionStatus.RUNNING):
                return None
            if description.status in ABNORMAL_END:
                error = await _closure(handle)
                return encode_event(RunFailed(time=description.close_time, error=error))
            state = await self._state(handle, run_id)
            return encode_event(terminal_event(state)) if state.status in TERMINAL_RUN else None

        async for item in relay_run_events(
            self.runtime.events,
            event_log_key(tenant_id, run_id),
            run_id,
            request.after_event_id,
            decode_event,
            expired_end=expired_end,
            # Any watcher is told, once per run, if no worker has taken the run.
            pending=PendingNotice(
                handle, self.runtime.settings.pending_notice_seconds, _pending_event
            ),
            closed=ClosedRunEnd(closed_end, at_start=True),
            keep_alive=KeepAlives(self.runtime.settings.stream_keepalive_seconds),
        ):
            if isinstance(item, KeepAlive):
                alive = workflow_pb2.WorkflowRunEvent(
                    event_id=item.last_event_id, run_id=run_id, keep_alive=keep_alive_to_proto(item)
                )
                set_timestamp(alive.time, item.time)
                yield workflow_pb2.WorkflowServiceWatchRunResponse(event=alive)
                continue
            event_id, event = item
            yield workflow_pb2.WorkflowServiceWatchRunResponse(
                event=workflow_convert.event_to_proto(run_id, event_id, event)
            )

    # -- helpers -------------------------------------------------------------------------

    def _handle(self, workflow_id: str) -> WorkflowHandle[DslRunWorkflow, RunState]:
        return self.runtime.temporal.get_workflow_handle_for(DslRunWorkflow.run, workflow_id)

    async def _require(self, tenant_id: str, run_id: str) -> str:
        if not run_id:
            raise InvalidArgument.field("run_id", "is required")
        workflow_id = await self.runs.workflow_id(tenant_id, run_id)
        if workflow_id is None:
            raise NotFound(f"run {run_id!r} not found")
        return workflow_id

    async def _state(
        self, handle: WorkflowHandle[DslRunWorkflow, RunState], run_id: str
    ) -> RunState:
        return await query_state(handle, DslRunWorkflow.state, run_id)

    async def _describe(
        self, handle: WorkflowHandle[DslRunWorkflow, RunState], run_id: str
    ) -> WorkflowExecutionDescription:
        try:
            return await handle.describe()
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise NotFound(f"run {run_id!r} not found") from error
            raise Unavailable(f"Temporal: {error.message}") from error

    async def _require_open(
        self, handle: WorkflowHandle[DslRunWorkflow, RunState], run_id: str, action: str
    ) -> None:
        description = await self._describe(handle, run_id)
        if description.status != WorkflowExecutionStatus.RUNNING:
            status = description.status.name.lower() if description.status else "ended"
            raise FailedPrecondition(f"cannot {action} run {run_id!r}: it is {status}")

    async def _run(self, tenant_id: str, run_id: str, workflow_id: str) -> workflow_pb2.WorkflowRun:
        handle = self._handle(workflow_id)
        description = await self._describe(handle, run_id)
        ended_outside = description.status in ABNORMAL_END
        if not_taken(description):
            state = await self._start_state(handle, tenant_id, run_id, description)
        else:
            try:
                state = await self._state(handle, run_id)
            except Unavailable:
                if not ended_outside:
                    raise
                state = await self._start_state(handle, tenant_id, run_id, description)
            _merge_pending_attempts(state, description.raw_description.pending_activities)
        if ended_outside and state.status not in TERMINAL_RUN:
            _ended_outside(state, await _closure(handle), description.close_time)
        run = await self._to_proto(state, handle, run_id=description.run_id)
        run.schedule_id = description.typed_search_attributes.get(SCHEDULE) or ""
        return run

    async def _start_state(
        self,
        handle: WorkflowHandle[DslRunWorkflow, RunState],
        tenant_id: str,
        run_id: str,
        description: WorkflowExecutionDescription,
    ) -> RunState:
        """A run as it was started (no worker has taken it, or none answers for it)."""
        start = await start_input(handle, self.runtime.temporal.data_converter, DslRunInput)
        return RunState(
            tenant=tenant_id,
            run_id=run_id,
            workflow_id=start.workflow_id if start else handle.id.split("/")[1],
            workflow_version=start.workflow_version if start else "",
            input=start.input if start else {},
            metadata=start.metadata if start else {},
            create_time=description.start_time,
            forked_from=start.forked_from if start else "",
        )

    async def _to_proto(
        self,
        state: RunState,
        handle: WorkflowHandle[DslRunWorkflow, RunState],
        *,
        run_id: str = "",
    ) -> workflow_pb2.WorkflowRun:
        last = await self.runtime.events.last_id(event_log_key(state.tenant, state.run_id))
        last = max(last, state.terminal_event_id)  # its events may have expired
        return workflow_convert.run_to_proto(
            state,
            temporal_workflow_id=handle.id,
            temporal_run_id=run_id or handle.run_id or "",
            last_event_id=last,
        )


async def _closure(handle: WorkflowHandle[DslRunWorkflow, RunState]) -> RunError:
    error_type, message = await closure_error(handle)
    return RunError(type=error_type, message=message)


def _ended_outside(state: RunState, error: RunError, end_time: datetime | None) -> None:
    """A run whose workflow ended from outside (terminated, timed out, failed outside its
    steps): FAILED with that error; its unfinished steps were stopped."""
    state.status = "failed"
    state.error = error
    state.end_time = end_time
    for step in state.steps:
        if step.status in ("pending", "running", "suspended", "waiting"):
            step.status = "canceled"
            step.end_time = end_time


def _merge_pending_attempts(state: RunState, pending: Any) -> None:
    """Fill attempts, the last error and the next attempt time of steps between retries."""
    for activity in pending:
        path = activity.activity_id.split("#", 1)[0]
        step = state.step(path)
        if step is None or step.status != "running":
            continue
        step.attempts = max(step.attempts, activity.attempt)
        if activity.HasField("last_failure") and activity.last_failure.message:
            failure = activity.last_failure
            cause = failure.application_failure_info.type or "ActivityError"
            step.error = RunError(type=cause, message=failure.message, retryable=True)
        if activity.HasField("next_attempt_schedule_time"):
            step.next_attempt_time = activity.next_attempt_schedule_time.ToDatetime(UTC)


def _pending_event(task_queue: str, waited_seconds: float) -> bytes:
    return encode_event(
        RunPending(time=datetime.now(UTC), task_queue=task_queue, waited_seconds=waited_seconds)
    )
