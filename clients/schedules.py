"""`client.schedules`: schedules of workflow and agent runs (WorkflowService's schedule RPCs,
on Temporal Schedules)."""

# `timeout=` on the async methods is the gRPC deadline of the call, as in grpc's own API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from clients.transport import Transport, to_struct
from protos.loomwork.v1 import workflow_pb2, workflow_pb2_grpc

__all__ = ["SchedulesClient"]

Overlap = workflow_pb2.ScheduleOverlapPolicy


class SchedulesClient:
    """Create, read, list, pause/unpause, trigger and delete the tenant's schedules."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = workflow_pb2_grpc.WorkflowServiceStub(transport.channel)

    async def create(
        self,
        schedule_id: str,
        *,
        workflow_id: str = "",
        data: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        agent_name: str = "",
        prompt: str = "",
        thread_id: str = "",
        cron: str = "",
        interval: timedelta | None = None,
        time_zone: str = "",
        overlap: Overlap = workflow_pb2.SCHEDULE_OVERLAP_POLICY_UNSPECIFIED,
        catchup_window: timedelta | None = None,
        description: str = "",
        paused: bool = False,
        timeout: float | None = None,
    ) -> workflow_pb2.Schedule:
        """A schedule on `cron` or `interval` that starts a run of `workflow_id` on `data`,
        or (with `agent_name`) an agent run with `prompt`."""
        schedule = workflow_pb2.Schedule(
            id=schedule_id,
            description=description,
            cron=cron,
            time_zone=time_zone,
            overlap_policy=overlap,
        )
        if interval is not None:
            schedule.interval.FromTimedelta(interval)
        if catchup_window is not None:
            schedule.catchup_window.FromTimedelta(catchup_window)
        if agent_name:
            schedule.agent_run.CopyFrom(
                workflow_pb2.ScheduledAgentRun(
                    agent_name=agent_name, prompt=prompt, thread_id=thread_id
                )
            )
        else:
            schedule.workflow_run.CopyFrom(
                workflow_pb2.ScheduledWorkflowRun(
                    workflow_id=workflow_id, input=to_struct(data), metadata=to_struct(metadata)
                )
            )
        response = await self._transport.call(
            self._stub.CreateSchedule,
            workflow_pb2.CreateScheduleRequest(schedule=schedule, paused=paused),
            workflow_pb2.CreateScheduleResponse,
            timeout,
        )
        return response.schedule

    async def get(self, schedule_id: str, *, timeout: float | None = None) -> workflow_pb2.Schedule:
        """The schedule with its next action times and its recent runs."""
        response = await self._transport.call(
            self._stub.GetSchedule,
            workflow_pb2.GetScheduleRequest(schedule_id=schedule_id),
            workflow_pb2.GetScheduleResponse,
            timeout,
        )
        return response.schedule

    async def list(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> workflow_pb2.ListSchedulesResponse:
        """One page of the tenant's schedules."""
        return await self._transport.call(
            self._stub.ListSchedules,
            workflow_pb2.ListSchedulesRequest(page_size=page_size, page_token=page_token),
            workflow_pb2.ListSchedulesResponse,
            timeout,
        )

    async def pause(
        self, schedule_id: str, *, note: str = "", timeout: float | None = None
    ) -> workflow_pb2.Schedule:
        return await self._pause(schedule_id, True, note, timeout)

    async def unpause(
        self, schedule_id: str, *, note: str = "", timeout: float | None = None
    ) -> workflow_pb2.Schedule:
        return await self._pause(schedule_id, False, note, timeout)

    async def _pause(
        self, schedule_id: str, paused: bool, note: str, timeout: float | None
    ) -> workflow_pb2.Schedule:
        response = await self._transport.call(
            self._stub.PauseSchedule,
            workflow_pb2.PauseScheduleRequest(schedule_id=schedule_id, paused=paused, note=note),
            workflow_pb2.PauseScheduleResponse,
            timeout,
        )
        return response.schedule

    async def trigger(
        self,
        schedule_id: str,
        *,
        overlap: Overlap = workflow_pb2.SCHEDULE_OVERLAP_POLICY_UNSPECIFIED,
        timeout: float | None = None,
    ) -> None:
        """Start one run now (whatever runs, unless `overlap` says otherwise)."""
        await self._transport.call(
            self._stub.TriggerSchedule,
            workflow_pb2.TriggerScheduleRequest(schedule_id=schedule_id, overlap_policy=overlap),
            workflow_pb2.TriggerScheduleResponse,
            timeout,
        )

    async def delete(self, schedule_id: str, *, timeout: float | None = None) -> None:
        await self._transport.call(
            self._stub.DeleteSchedule,
            workflow_pb2.DeleteScheduleRequest(schedule_id=schedule_id),
            workflow_pb2.DeleteScheduleResponse,
            timeout,
        )
