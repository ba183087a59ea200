"""WorkflowService's schedule RPCs (CreateSchedule, GetSchedule, ListSchedules,
PauseSchedule, TriggerSchedule, DeleteSchedule): a tenant's Temporal Schedules, each
starting a workflow run or an agent run."""

from __future__ import annotations

import grpc
from pydantic import ValidationError

from loomwork.agents.catalog import AgentCatalog
from loomwork.agents.store import AgentStore
from loomwork.errors import FieldViolation, InvalidArgument, NotFound, Violations
from loomwork.schedules import ScheduledWorkflowRun, check_schedule, check_schedule_id
from protos.loomwork.v1 import workflow_pb2
from server.runtime import Runtime
from server.schedules import ScheduleBook
from server.servicers.schedule_convert import (
    overlap_from_proto,
    schedule_from_proto,
    schedule_to_proto,
)
from server.servicers.tenancy import tenant

MAX_DATA_BYTES = 2 * 1024 * 1024
MAX_METADATA_BYTES = 16 * 1024
DEFAULT_PAGE_SIZE = 50


class ScheduleRpcs:
    """Mixed into WorkflowServicer: every call acts on the caller's tenant's schedules."""

    def __init__(self, runtime: Runtime) -> None:
        self.schedule_book = ScheduleBook(runtime.temporal, runtime.settings.task_queue)
        mcp = runtime.integrations.mcp if runtime.integrations is not None else None
        self.schedule_agents = AgentCatalog(
            runtime.agents, AgentStore(runtime.db), runtime.tools, mcp
        )
        self.schedule_runtime = runtime

    async def CreateSchedule(
        self, request: workflow_pb2.CreateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.CreateScheduleResponse:
        tenant_id = tenant()
        definition = schedule_from_proto(request.schedule)
        check_schedule(definition)
        version = ""
        action = definition.action
        if isinstance(action, ScheduledWorkflowRun):
            run = request.schedule.workflow_run
            violations = Violations()
            if run.input.ByteSize() > MAX_DATA_BYTES:
                violations.add("schedule.workflow_run.input", "must be at most 2 MiB serialized")
            if run.metadata.ByteSize() > MAX_METADATA_BYTES:
                violations.add(
                    "schedule.workflow_run.metadata", "must be at most 16 KiB serialized"
                )
            violations.raise_if_any()
            try:
                workflow = self.schedule_runtime.flows.latest(action.workflow_id)
            except NotFound:
                raise NotFound(f"workflow {action.workflow_id!r} is not registered") from None
            try:
                data = workflow.input_model.model_validate(action.input)
            except ValidationError as exc:
                raise InvalidArgument(
                    [
                        FieldViolation(
                            ".".join(
                                ["schedule.workflow_run.input", *(str(p) for p in err["loc"])]
                            ),
                            err["msg"],
                        )
                        for err in exc.errors()
                    ],
                    f"input does not match the input schema of {workflow.id!r}",
                ) from None
            action.input = data.model_dump(mode="json")
            version = workflow.version
        else:
            await self.schedule_agents.get(tenant_id, action.agent_name)
            if action.thread_id:
                await self.schedule_runtime.memory.get_thread(tenant_id, action.thread_id)
        view = await self.schedule_book.create(
            tenant_id, definition, paused=request.paused, workflow_version=version
        )
        return workflow_pb2.CreateScheduleResponse(schedule=schedule_to_proto(view))

    async def GetSchedule(
        self, request: workflow_pb2.GetScheduleRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.GetScheduleResponse:
        check_schedule_id(request.schedule_id, "schedule_id")
        view = await self.schedule_book.get(tenant(), request.schedule_id)
        return workflow_pb2.GetScheduleResponse(schedule=schedule_to_proto(view))

    async def ListSchedules(
        self, request: workflow_pb2.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.ListSchedulesResponse:
        views, token = await self.schedule_book.list(
            tenant(), request.page_size or DEFAULT_PAGE_SIZE, request.page_token
        )
        return workflow_pb2.ListSchedulesResponse(
            schedules=[schedule_to_proto(v) for v in views], next_page_token=token
        )

    async def PauseSchedule(
        self, request: workflow_pb2.PauseScheduleRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.PauseScheduleResponse:
        check_schedule_id(request.schedule_id, "schedule_id")
        view = await self.schedule_book.pause(
            tenant(), request.schedule_id, request.paused, request.note
        )
        return workflow_pb2.PauseScheduleResponse(schedule=schedule_to_proto(view))

    async def TriggerSchedule(
        self, request: workflow_pb2.TriggerScheduleRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.TriggerScheduleResponse:
        check_schedule_id(request.schedule_id, "schedule_id")
        overlap = overlap_from_proto(request.overlap_policy, None) or ""
        await self.schedule_book.trigger(tenant(), request.schedule_id, overlap)
        return workflow_pb2.TriggerScheduleResponse()

    async def DeleteSchedule(
        self, request: workflow_pb2.DeleteScheduleRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.DeleteScheduleResponse:
        check_schedule_id(request.schedule_id, "schedule_id")
        await self.schedule_book.delete(tenant(), request.schedule_id)
        return workflow_pb2.DeleteScheduleResponse()
