"""AgentService: code-defined agents run as durable AgentRun workflows, streamed live."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from temporalio.client import (
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from loomwork.agents.directory import RunDirectory
from loomwork.agents.run import (
    AgentRunRequest,
    ResumeInput,
    RunOutcome,
    RunState,
    decode_event,
)
from loomwork.agents.steps import event_log_key
from loomwork.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    Violations,
)
from loomwork.ids import CLIENT_ID_RULE, is_valid_client_id, new_id
from loomwork.memory.models import NewMessage, NewThread, Role, TextPart
from loomwork.memory.settings import merge
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc
from server import agent_convert, convert
from server.interceptors import tenant
from server.runtime import Runtime
from server.servicers.unimplemented import abort_unimplemented
from workflows.agent_run import AgentRunWorkflow

TENANT = SearchAttributeKey.for_keyword("LoomworkTenant")
AGENT = SearchAttributeKey.for_keyword("LoomworkAgent")
THREAD = SearchAttributeKey.for_keyword("LoomworkThread")
RESOURCE = SearchAttributeKey.for_keyword("LoomworkResource")
_DEFAULT_RESOLUTIONS = (
    agent_pb2.THREAD_RESOLUTION_UNSPECIFIED,
    agent_pb2.THREAD_RESOLUTION_CREATE_IF_MISSING,
    agent_pb2.THREAD_RESOLUTION_EXISTING,
    agent_pb2.THREAD_RESOLUTION_NEW,
)
_INPUT_ROLES = {Role.USER, Role.ASSISTANT, Role.TOOL}


async def _describe(
    handle: WorkflowHandle[AgentRunWorkflow, RunOutcome], run_id: str
) -> WorkflowExecutionDescription:
    try:
        return await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:  # recorded, not started (or expired)
            raise NotFound(f"run {run_id!r} not found") from error
        raise Unavailable(f"Temporal: {error.message}") from error


def workflow_id_for(agent: str, tenant_id: str, run_id: str) -> str:
    return f"agent/{agent}/{tenant_id}/{run_id}"


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.directory = RunDirectory(runtime.redis)

    # -- definitions

    async def ListAgents(
        self, request: agent_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListAgentsResponse:
        if request.source == agent_pb2.AGENT_SOURCE_API:
            return agent_pb2.ListAgentsResponse()
        return agent_pb2.ListAgentsResponse(
            agents=[agent_convert.agent_to_proto(a) for a in self.runtime.agents.all()]
        )

    async def GetAgent(
        self, request: agent_pb2.GetAgentRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.GetAgentResponse:
        if not request.agent_name:
            raise InvalidArgument.field("agent_name", "is required")
        agent = self.runtime.agents.get(request.agent_name)
        return agent_pb2.GetAgentResponse(agent=agent_convert.agent_to_proto(agent))

    async def ListTools(
        self, request: agent_pb2.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListToolsResponse:
        return agent_pb2.ListToolsResponse(
            tools=[agent_convert.tool_to_proto(t) for t in self.runtime.tools.all()]
        )

    # -- runs

    async def _start(
        self, request: agent_pb2.GenerateRequest | agent_pb2.StreamRequest
    ) -> tuple[AgentRunRequest, WorkflowHandle[AgentRunWorkflow, RunOutcome], str]:
        tenant_id = tenant()
        existing = None
        if request.client_run_id:
            existing = await self.directory.workflow_id(tenant_id, request.client_run_id)
        # A repeated client run id joins its run: no thread is resolved (or created) again.
        run_request = await self._run_request(tenant_id, request, resolve=existing is None)
        workflow_id = workflow_id_for(run_request.agent_name, tenant_id, run_request.run_id)
        if existing is not None and existing != workflow_id:
            raise AlreadyExists(f"client_run_id {run_request.run_id!r} is a run of another agent")
        pairs = [
            SearchAttributePair(TENANT, tenant_id),
            SearchAttributePair(AGENT, run_request.agent_name),
        ]
        if run_request.thread_id:
            pairs.append(SearchAttributePair(THREAD, run_request.thread_id))
        if run_request.resource_id:
            pairs.append(SearchAttributePair(RESOURCE, run_request.resource_id))
        await self.directory.record(tenant_id, run_request.run_id, workflow_id)
        try:
            # A client run id names one run: a repeat joins it, running or finished.
            handle = await self.runtime.temporal.start_workflow(
                AgentRunWorkflow.run,
                run_request,
                id=workflow_id,
                task_queue=self.runtime.settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes(pairs),
                static_summary=f"agent {run_request.agent_name}, run {run_request.run_id}",
            )
        except WorkflowAlreadyStartedError:
            handle = self.runtime.temporal.get_workflow_handle_for(
                AgentRunWorkflow.run, workflow_id
            )
        return run_request, handle, workflow_id

    async def _run_request(
        self,
        tenant_id: str,
        request: agent_pb2.GenerateRequest | agent_pb2.StreamRequest,
        *,
        resolve: bool = True,
    ) -> AgentRunRequest:
        violations = Violations()
        if not request.agent_name:
            violations.add("agent_name", "is required")
        if bool(request.messages) == bool(request.prompt):
            violations.add("prompt", "give exactly one of messages and prompt")
        if request.client_run_id and not is_valid_client_id(request.client_run_id):
            violations.add("client_run_id", f"must be {CLIENT_ID_RULE}")
        if not 0 <= request.max_steps <= 100:
            violations.add("max_steps", "must be between 0 and 100")
        if request.thread_id and not is_valid_client_id(request.thread_id):
            violations.add("thread_id", f"must be {CLIENT_ID_RULE}")
        violations.raise_if_any()
        if request.thread_resolution not in _DEFAULT_RESOLUTIONS:
            raise InvalidArgument.field(
                "thread_resolution", "LATEST and SESSION are not supported yet (issue #4)"
            )
        if request.HasField("output_schema"):
            raise InvalidArgument.field(
                "output_schema", "structured output is not supported yet (issue #4)"
            )
        override = None
        if request.HasField("memory"):
            override = agent_convert.memory_override_from_proto(request.memory)
        agent = self.runtime.agents.get(request.agent_name)
        if request.prompt:
            messages = [NewMessage(role=Role.USER, parts=[TextPart(text=request.prompt)])]
        else:
            messages = convert.new_messages_from_proto(request.messages)
            for i, message in enumerate(messages):
                if message.role not in _INPUT_ROLES:
                    raise InvalidArgument.field(
                        f"messages[{i}].role", "must be user, assistant or tool"
                    )
        thread_id, resource_id = "", ""
        if resolve:
            thread_id, resource_id = await self._resolve_thread(tenant_id, request)
        return AgentRunRequest(
            tenant=tenant_id,
            run_id=request.client_run_id or new_id("run"),
            agent_name=agent.name,
            input_messages=messages,
            thread_id=thread_id,
            resource_id=resource_id,
            max_steps=request.max_steps,
            memory=merge(agent.memory, override) if override is not None else None,
        )

    async def _resolve_thread(
        self, tenant_id: str, request: agent_pb2.GenerateRequest | agent_pb2.StreamRequest
    ) -> tuple[str, str]:
        """The run's thread id and its resource id (both empty for a stateless run)."""
        memory = self.runtime.memory
        resolution = request.thread_resolution
        if resolution == agent_pb2.THREAD_RESOLUTION_NEW or (
            not request.thread_id and request.resource_id
        ):
            if request.thread_id:
                raise InvalidArgument.field("thread_id", "must be empty with NEW")
            created = await memory.create_thread(
                tenant_id, NewThread(resource_id=request.resource_id)
            )
            return created.id, created.resource_id
        if not request.thread_id:
            if resolution == agent_pb2.THREAD_RESOLUTION_EXISTING:
                raise InvalidArgument.field("thread_id", "is required with EXISTING")
            return "", ""
        try:
            thread = await memory.get_thread(tenant_id, request.thread_id)
        except NotFound:
            if resolution == agent_pb2.THREAD_RESOLUTION_EXISTING:
                raise
            thread = await memory.create_thread(
                tenant_id, NewThread(id=request.thread_id, resource_id=request.resource_id)
            )
        if request.resource_id and thread.resource_id and request.resource_id != thread.resource_id:
            raise InvalidArgument.field(
                "resource_id", f"thread {thread.id!r} belongs to resource {thread.resource_id!r}"
            )
        return thread.id, thread.resource_id

    async def Generate(
        self, request: agent_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.GenerateResponse:
        _, handle, workflow_id = await self._start(request)
        outcome = await handle.result()
        return agent_pb2.GenerateResponse(run=agent_convert.run_to_proto(outcome, workflow_id))

    async def _events(
        self, tenant_id: str, run_id: str, after_event_id: int, workflow_id: str
    ) -> AsyncIterator[agent_pb2.AgentRunEvent]:
        key = event_log_key(tenant_id, run_id)
        # No idle limit: a run may wait hours for an approval; the caller's deadline governs.
        async for event in self.runtime.events.follow(key, after_event_id):
            yield agent_convert.event_to_proto(
                run_id, event.event_id, decode_event(event.payload), workflow_id
            )

    async def Stream(
        self, request: agent_pb2.StreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.StreamResponse]:
        run_request, _, workflow_id = await self._start(request)
        async for event in self._events(run_request.tenant, run_request.run_id, 0, workflow_id):
            yield agent_pb2.StreamResponse(event=event)

    async def WatchRun(
        self, request: agent_pb2.AgentServiceWatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.AgentServiceWatchRunResponse]:
        if not request.run_id:
            raise InvalidArgument.field("run_id", "is required")
        if request.after_event_id < 0:
            raise InvalidArgument.field("after_event_id", "must be 0 or more")
        tenant_id = tenant()
        workflow_id = await self.directory.workflow_id(tenant_id, request.run_id)
        if workflow_id is None:
            raise NotFound(f"run {request.run_id!r} not found")
        async for event in self._events(
            tenant_id, request.run_id, request.after_event_id, workflow_id
        ):
            yield agent_pb2.AgentServiceWatchRunResponse(event=event)

    # -- later slices of issue #4

    async def CreateAgent(self, request, context):
        await abort_unimplemented(context, "AgentService.CreateAgent", issue=4)

    async def UpdateAgent(self, request, context):
        await abort_unimplemented(context, "AgentService.UpdateAgent", issue=4)

    async def DeleteAgent(self, request, context):
        await abort_unimplemented(context, "AgentService.DeleteAgent", issue=4)

    async def StreamObject(self, request, context):
        await abort_unimplemented(context, "AgentService.StreamObject", issue=4)

    async def _handle(
        self, run_id: str
    ) -> tuple[WorkflowHandle[AgentRunWorkflow, RunOutcome], str, str]:
        if not run_id:
            raise InvalidArgument.field("run_id", "is required")
        workflow_id = await self.directory.workflow_id(tenant(), run_id)
        if workflow_id is None:
            raise NotFound(f"run {run_id!r} not found")
        handle = self.runtime.temporal.get_workflow_handle_for(AgentRunWorkflow.run, workflow_id)
        agent_name = workflow_id.split("/")[1]
        return handle, workflow_id, agent_name

    async def _current(self, run_id: str) -> agent_pb2.AgentRun:
        handle, workflow_id, agent_name = await self._handle(run_id)
        description = await _describe(handle, run_id)
        if description.status == WorkflowExecutionStatus.RUNNING:
            state = await handle.query(AgentRunWorkflow.state)
            if state.status in ("running", "waiting"):
                return agent_convert.state_to_proto(run_id, agent_name, state, workflow_id)
            # Decided, only saving its messages: the result is a moment away.
            return agent_convert.run_to_proto(await handle.result(), workflow_id)
        if description.status == WorkflowExecutionStatus.COMPLETED:
            return agent_convert.run_to_proto(await handle.result(), workflow_id)
        status = description.status.name if description.status else "UNKNOWN"
        raise FailedPrecondition(f"run {run_id!r} ended abnormally ({status}); see the Temporal UI")

    async def GetRun(
        self, request: agent_pb2.AgentServiceGetRunRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AgentServiceGetRunResponse:
        return agent_pb2.AgentServiceGetRunResponse(run=await self._current(request.run_id))

    async def CancelRun(
        self, request: agent_pb2.AgentServiceCancelRunRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AgentServiceCancelRunResponse:
        handle, _, _ = await self._handle(request.run_id)
        description = await _describe(handle, request.run_id)
        if description.status != WorkflowExecutionStatus.RUNNING:
            raise FailedPrecondition(f"run {request.run_id!r} has already ended")
        await handle.cancel()
        return agent_pb2.AgentServiceCancelRunResponse(run=await self._current(request.run_id))

    async def ResumeRun(
        self, request: agent_pb2.AgentServiceResumeRunRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AgentServiceResumeRunResponse:
        decisions = agent_convert.decisions_from_proto(request.decisions)
        if not decisions:
            raise InvalidArgument.field("decisions", "give at least one decision")
        handle, workflow_id, agent_name = await self._handle(request.run_id)
        state = await handle.query(AgentRunWorkflow.state)
        pending = {p.tool_call_id: p for p in state.pending}
        for i, decision in enumerate(decisions):
            if decision.edited_arguments is not None and decision.tool_call_id in pending:
                self.runtime.tools.check_arguments(
                    pending[decision.tool_call_id].tool_name,
                    decision.edited_arguments,
                    f"decisions[{i}].approve.edited_arguments",
                )
        try:
            state = await handle.execute_update(
                "resume_run", ResumeInput(decisions=decisions), result_type=RunState
            )
        except WorkflowUpdateFailedError as error:
            cause = error.cause
            if isinstance(cause, ApplicationError) and cause.type == "InvalidArgument":
                field, description = cause.details
                raise InvalidArgument.field(str(field), str(description)) from error
            message = getattr(cause, "message", None) or str(cause or error)
            raise FailedPrecondition(message) from error
        return agent_pb2.AgentServiceResumeRunResponse(
            run=agent_convert.state_to_proto(request.run_id, agent_name, state, workflow_id)
        )

    async def ListRuns(self, request, context):
        await abort_unimplemented(context, "AgentService.ListRuns", issue=4)
