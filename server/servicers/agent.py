"""AgentService: agents (defined in code or stored per tenant) run as durable AgentRun
workflows, streamed live; runs are listed through Temporal visibility."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from activities.run_lookup import RunLookup, visibility_literal
from activities.workflow_runs import AGENT_RUN
from loomwork.agents.definitions import AGENT_NAME
from loomwork.agents.directory import RunDirectory
from loomwork.agents.events import (
    AgentEvent,
    ApprovalRequested,
    RunFinished,
    RunPending,
    ToolCallRequested,
    decode_event,
    encode_event,
)
from loomwork.agents.fork import fork_of
from loomwork.agents.run_models import (
    AgentRunRequest,
    ResumeInput,
    RunOutcome,
    ToolResultsInput,
)
from loomwork.agents.run_start import event_log_key
from loomwork.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    Violations,
)
from loomwork.ids import CLIENT_ID_RULE, is_valid_client_id
from loomwork.schedules import SCHEDULE_ID_PATTERN, SCHEDULE_ID_RULE
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc
from server.agent_fork import recorded_run
from server.agent_runs import AgentRunStart, AgentRunStarter
from server.runtime import Runtime
from server.servicers import agent_convert, client_tools_convert, message_convert
from server.servicers.agent_definitions import AgentDefinitionRpcs
from server.servicers.agent_run_handles import (
    AgentRunHandles,
    FoundRun,
    describe_run,
    run_state,
)
from server.servicers.keep_alive_convert import keep_alive_to_proto
from server.servicers.launches import Launches
from server.servicers.relay import (
    ClosedRunEnd,
    KeepAlive,
    KeepAlives,
    PendingNotice,
    relay_run_events,
)
from server.servicers.run_listing import listed_agent_run, status_clause, visibility_page
from server.servicers.tenancy import tenant
from server.servicers.well_known_convert import set_timestamp
from workflows.agent_run import AgentRunWorkflow

log = logging.getLogger(__name__)


def _pending_event(task_queue: str, waited_seconds: float) -> bytes:
    return encode_event(RunPending(task_queue=task_queue, waited_seconds=waited_seconds))


class AgentServicer(AgentDefinitionRpcs, agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        AgentDefinitionRpcs.__init__(self, runtime)  # self.runtime, self.catalog
        self.directory = RunDirectory(runtime.redis)
        self.runs = RunLookup(self.directory, runtime.temporal, AGENT_RUN)
        self.handles = AgentRunHandles(runtime, self.runs)
        self.starter = AgentRunStarter(runtime, self.directory, self.catalog)
        self.launches = Launches()

    async def _start(
        self, request: agent_convert.RunRequest, *, require_output_schema: bool = False
    ) -> tuple[AgentRunRequest, WorkflowHandle[AgentRunWorkflow, RunOutcome]]:
        """Start (or join) the run this call asks for: the workflow's input and its handle."""
        tenant_id = tenant()
        run_request, handle = await self.starter.start(
            tenant_id,
            agent_convert.run_start_from_proto(request),
            require_output_schema=require_output_schema,
        )
        self.runs.remember(tenant_id, run_request.run_id, handle.id)
        return run_request, handle

    async def Generate(
        self, request: agent_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.GenerateResponse:
        run_request, handle = await self._start(request)
        workflow_id = handle.id
        async for item in relay_run_events(
            self.runtime.events,
            event_log_key(run_request.tenant, run_request.run_id),
            run_request.run_id,
            0,
            decode_event,
            closed=ClosedRunEnd(self.handles.closed_end(handle, run_request.run_id)),
        ):
            if isinstance(item, KeepAlive):  # none asked for: a unary call has no use for one
                continue
            event_id, published = item
            if isinstance(published, RunFinished) and not published.run_path:
                # The outcome as the workflow returns it, without waiting for it to close.
                outcome = published.outcome
                outcome.terminal_event_id = event_id
                run = agent_convert.run_to_proto(outcome, workflow_id)
                run.last_event_id = event_id
                return agent_pb2.GenerateResponse(run=run)
            if isinstance(published, ApprovalRequested | ToolCallRequested):
                # Stopped for a person or for the caller: answer with the run and what it
                # waits on (its pending approvals and client tool calls).
                waiting = await self.handles.when_waiting(handle, run_request.run_id)
                if waiting is not None:
                    return agent_pb2.GenerateResponse(run=waiting)
                break
        try:
            outcome = await handle.result()
        except WorkflowFailureError:  # ended from outside meanwhile
            return agent_pb2.GenerateResponse(run=await self.handles.current(run_request.run_id))
        run = agent_convert.run_to_proto(outcome, workflow_id)
        return agent_pb2.GenerateResponse(
            run=await self.handles.with_last_event(run, outcome.terminal_event_id)
        )

    async def _events(
        self,
        tenant_id: str,
        run_id: str,
        after_event_id: int,
        workflow_id: str,
        *,
        announced: bool = False,
        first: tuple[int, AgentEvent] | None = None,
    ) -> AsyncIterator[agent_pb2.AgentRunEvent]:
        """The run's events after `after_event_id`, to its end; `announced`: this call has
        just published the run's first event (its log is there), and tells its caller, once,
        if no worker takes the run (all down, or busy): else the stream would stay silent
        after run_started. `first`: that event with its id, sent as it is, not read back."""
        handle = self.runtime.temporal.get_workflow_handle_for(AgentRunWorkflow.run, workflow_id)
        if first is not None:
            after_event_id = first[0]
            yield agent_convert.event_to_proto(run_id, *first, workflow_id)

        async def expired_end() -> tuple[int, AgentEvent] | None:
            # Nothing in Redis: not started yet, or ended long enough ago that its events
            # expired; then only its terminal event, rebuilt from the result with its id.
            description = await describe_run(handle, run_id)
            if description.parent_id:  # a sub-agent run: it publishes to its top-level run
                top = (description.root_id or description.parent_id).split("/")[-1]
                raise FailedPrecondition(
                    f"run {run_id!r} is a sub-agent run: watch run {top!r}, whose stream has"
                    " its events (marked with their run_path)"
                )
            if description.status != WorkflowExecutionStatus.COMPLETED:
                return None
            outcome = await handle.result()
            return outcome.terminal_event_id, RunFinished(outcome=outcome)

        pending = None
        if announced:
            pending = PendingNotice(
                handle, self.runtime.settings.pending_notice_seconds, _pending_event
            )
        async for item in relay_run_events(
            self.runtime.events,
            event_log_key(tenant_id, run_id),
            run_id,
            after_event_id,
            decode_event,
            expired_end=None if announced else expired_end,
            pending=pending,
            closed=ClosedRunEnd(self.handles.closed_end(handle, run_id), at_start=not announced),
            keep_alive=KeepAlives(self.runtime.settings.stream_keepalive_seconds),
        ):
            if isinstance(item, KeepAlive):
                alive = agent_pb2.AgentRunEvent(
                    event_id=item.last_event_id, run_id=run_id, keep_alive=keep_alive_to_proto(item)
                )
                set_timestamp(alive.time, item.time)
                yield alive
                continue
            event_id, event = item
            yield agent_convert.event_to_proto(run_id, event_id, event, workflow_id)

    async def _started_events(
        self, request: agent_convert.RunRequest, *, require_output_schema: bool = False
    ) -> AsyncIterator[agent_pb2.AgentRunEvent]:
        """The events of the run this call starts (or joins). A new run streams from its
        run_started on while Temporal starts it in the background (so the first event does
        not wait for the start); a start Temporal refuses ends it with run_failed."""
        tenant_id = tenant()
        with self.launches.accepting():
            accepted = await self.starter.accept(
                tenant_id,
                agent_convert.run_start_from_proto(request),
                require_output_schema=require_output_schema,
            )
        run_id, workflow_id = accepted.request.run_id, accepted.workflow_id
        self.runs.remember(tenant_id, run_id, workflow_id)
        events = self._events(
            tenant_id, run_id, 0, workflow_id, announced=accepted.new, first=accepted.started
        )
        if not accepted.new:  # a repeat of a client run id: its run, once it is found
            await self.starter.launch(accepted)
            async for event in events:
                yield event
            return
        # A start Temporal refuses ends the run's log with run_failed, and so this stream.
        # A run named by its caller starts at once: a repeat of its id, accepted meanwhile,
        # finds it started (else it would start the run a second time).
        self.launches.start(
            self.starter.launch(accepted), f"start of run {run_id}", defer=not accepted.named
        )
        async for event in events:
            yield event

    async def Stream(
        self, request: agent_pb2.StreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.StreamResponse]:
        async for event in self._started_events(request):
            yield agent_pb2.StreamResponse(event=event)

    async def StreamObject(
        self, request: agent_pb2.StreamObjectRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.StreamObjectResponse]:
        async for event in self._started_events(request, require_output_schema=True):
            if not event.HasField("text_delta"):
                yield agent_pb2.StreamObjectResponse(event=event)

    async def WatchRun(
        self, request: agent_pb2.AgentServiceWatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.AgentServiceWatchRunResponse]:
        if not request.run_id:
            raise InvalidArgument.field("run_id", "is required")
        if request.after_event_id < 0:
            raise InvalidArgument.field("after_event_id", "must be 0 or more")
        tenant_id = tenant()
        workflow_id = await self.runs.workflow_id(tenant_id, request.run_id)
        if workflow_id is None:
            raise NotFound(f"run {request.run_id!r} not found")
        async for event in self._events(
            tenant_id, request.run_id, request.after_event_id, workflow_id
        ):
            yield agent_pb2.AgentServiceWatchRunResponse(event=event)

    async def GetRun(
        self, request: agent_pb2.AgentServiceGetRunRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AgentServiceGetRunResponse:
        return agent_pb2.AgentServiceGetRunResponse(run=await self.handles.current(request.run_id))

    async def CancelRun(
        self, request: agent_pb2.AgentServiceCancelRunRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AgentServiceCancelRunResponse:
        handle, _, _ = await self.handles.find(request.run_id)
        description = await describe_run(handle, request.run_id)
        if description.status != WorkflowExecutionStatus.RUNNING:
            raise FailedPrecondition(f"run {request.run_id!r} has already ended")
        try:
            if request.reason:  # recorded before the cancellation, which ends the run with it
                await handle.signal(AgentRunWorkflow.cancel_reason, request.reason)
            await handle.cancel()
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:  # it closed meanwhile
                raise FailedPrecondition(f"run {request.run_id!r} has already ended") from error
            raise Unavailable(f"Temporal: {error.message}") from error
        # A first step this process began and no activity took over yet stops now, with its
        # model call (else it would run until its time to live).
        self.runtime.speculation.abandon(event_log_key(tenant(), request.run_id))
        return agent_pb2.AgentServiceCancelRunResponse(
            run=await self.handles.current(request.run_id)
        )

    async def ResumeRun(
        self, request: agent_pb2.AgentServiceResumeRunRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AgentServiceResumeRunResponse:
        decisions = agent_convert.decisions_from_proto(request.decisions)
        if not decisions:
            raise InvalidArgument.field("decisions", "give at least one decision")
        run = await self.handles.started(request.run_id, "nothing waits for approval")
        state = await run_state(run.handle, request.run_id)
        pending = {p.tool_call_id: p for p in state.pending}
        for i, decision in enumerate(decisions):
            if decision.edited_arguments is not None and decision.tool_call_id in pending:
                self.runtime.tools.check_arguments(
                    pending[decision.tool_call_id].tool_name,
                    decision.edited_arguments,
                    f"decisions[{i}].approve.edited_arguments",
                )
        updated = await self.handles.update(run, "resume_run", ResumeInput(decisions=decisions))
        return agent_pb2.AgentServiceResumeRunResponse(run=updated)

    async def SubmitToolResults(
        self, request: agent_pb2.SubmitToolResultsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.SubmitToolResultsResponse:
        results = client_tools_convert.tool_results_from_proto(request.results)
        handle, workflow_id, agent_name = await self.handles.find(request.run_id)
        run = FoundRun(request.run_id, handle, workflow_id, agent_name)
        updated = await self.handles.update(
            run,
            "submit_tool_results",
            ToolResultsInput(results=results),
            unless_not_taken="no tool call waits for a result",
        )
        return agent_pb2.SubmitToolResultsResponse(run=updated)

    async def ForkRun(
        self, request: agent_pb2.AgentServiceForkRunRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AgentServiceForkRunResponse:
        if request.client_run_id and not is_valid_client_id(request.client_run_id):
            raise InvalidArgument.field("client_run_id", f"must be {CLIENT_ID_RULE}")
        edited = message_convert.new_messages_from_proto(request.edited_messages, "edited_messages")
        handle, _, _ = await self.handles.find(request.run_id)
        recorded = await recorded_run(handle, self.runtime.temporal.data_converter, request.run_id)
        original = recorded.request
        fork = fork_of(
            request.run_id,
            original.agent_name,
            recorded.steps,
            request.from_step,
            edited,
            inherited=original.fork.reused if original.fork else (),
            inherited_from=original.fork.forked_from if original.fork else "",
        )
        run_request, handle = await self.starter.start(
            tenant(),
            AgentRunStart(
                agent_name=original.agent_name,
                messages=original.input_messages,
                client_run_id=request.client_run_id,
                max_steps=original.max_steps,
                output_schema=original.output_schema,
                metadata=original.metadata,
                client_tools=original.client_tools,
                fork=fork,
            ),
        )
        self.runs.remember(run_request.tenant, run_request.run_id, handle.id)
        return agent_pb2.AgentServiceForkRunResponse(
            run=await self.handles.current(run_request.run_id)
        )

    async def ListRuns(
        self, request: agent_pb2.AgentServiceListRunsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AgentServiceListRunsResponse:
        violations = Violations()
        if not 0 <= request.page_size <= 1000:
            violations.add("page_size", "must be between 0 and 1000")
        if request.agent_name and not AGENT_NAME.match(request.agent_name):
            violations.add("agent_name", "is not an agent name")
        if request.thread_id and not is_valid_client_id(request.thread_id):
            violations.add("thread_id", f"must be {CLIENT_ID_RULE}")
        if len(request.resource_id) > agent_convert.MAX_RESOURCE_ID:
            violations.add(
                "resource_id", f"must be at most {agent_convert.MAX_RESOURCE_ID} characters"
            )
        for i, status in enumerate(request.statuses):
            if status not in agent_convert.RUN_STATUS_NAMES:
                violations.add(f"statuses[{i}]", "is not a run status")
        if request.schedule_id and not SCHEDULE_ID_PATTERN.match(request.schedule_id):
            violations.add("schedule_id", f"must be {SCHEDULE_ID_RULE}")
        violations.raise_if_any()
        clauses = [
            "WorkflowType = 'AgentRun'",
            f"LoomworkTenant = {visibility_literal(tenant())}",
        ]
        for attribute, value in (
            ("LoomworkAgent", request.agent_name),
            ("LoomworkThread", request.thread_id),
            ("LoomworkResource", request.resource_id),
            ("LoomworkSchedule", request.schedule_id),
        ):
            if value:
                clauses.append(f"{attribute} = {visibility_literal(value)}")
        if request.statuses:
            clauses.append(
                status_clause({agent_convert.RUN_STATUS_NAMES[s] for s in request.statuses})
            )
        executions, token = await visibility_page(
            self.runtime.temporal,
            " AND ".join(clauses),
            request.page_size or 50,
            request.page_token,
        )
        return agent_pb2.AgentServiceListRunsResponse(
            runs=[await listed_agent_run(execution) for execution in executions],
            next_page_token=token,
        )
