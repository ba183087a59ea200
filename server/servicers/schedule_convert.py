"""Schedules between protobuf (WorkflowService's Schedule) and the domain's models."""

from __future__ import annotations

from loomwork.errors import InvalidArgument
from loomwork.schedules import (
    OverlapPolicy,
    ScheduledAgentRun,
    ScheduleDefinition,
    ScheduledWorkflowRun,
    ScheduleView,
)
from protos.loomwork.v1 import workflow_pb2
from server.servicers.well_known_convert import dict_to_struct, set_timestamp, struct_to_dict

_OVERLAP_TO_PROTO: dict[str, int] = {
    "SKIP": workflow_pb2.SCHEDULE_OVERLAP_POLICY_SKIP,
    "BUFFER_ONE": workflow_pb2.SCHEDULE_OVERLAP_POLICY_BUFFER_ONE,
    "BUFFER_ALL": workflow_pb2.SCHEDULE_OVERLAP_POLICY_BUFFER_ALL,
    "CANCEL_OTHER": workflow_pb2.SCHEDULE_OVERLAP_POLICY_CANCEL_OTHER,
    "TERMINATE_OTHER": workflow_pb2.SCHEDULE_OVERLAP_POLICY_TERMINATE_OTHER,
    "ALLOW_ALL": workflow_pb2.SCHEDULE_OVERLAP_POLICY_ALLOW_ALL,
}
_OVERLAP_FROM_PROTO: dict[int, OverlapPolicy] = {v: k for k, v in _OVERLAP_TO_PROTO.items()}  # type: ignore[misc]


def overlap_from_proto(value: int, default: OverlapPolicy | None) -> OverlapPolicy | None:
    """The overlap policy an enum value names; `default` for UNSPECIFIED."""
    return _OVERLAP_FROM_PROTO.get(value, default)


def schedule_from_proto(schedule: workflow_pb2.Schedule) -> ScheduleDefinition:
    """The definition a request asks for (output-only fields ignored); InvalidArgument when
    it has no action."""
    kind = schedule.WhichOneof("action")
    action: ScheduledWorkflowRun | ScheduledAgentRun
    if kind == "workflow_run":
        run = schedule.workflow_run
        action = ScheduledWorkflowRun(
            workflow_id=run.workflow_id,
            input=struct_to_dict(run.input),
            metadata=struct_to_dict(run.metadata),
        )
    elif kind == "agent_run":
        agent = schedule.agent_run
        action = ScheduledAgentRun(
            agent_name=agent.agent_name, prompt=agent.prompt, thread_id=agent.thread_id
        )
    else:
        raise InvalidArgument.field("schedule.workflow_run", "set workflow_run or agent_run")
    return ScheduleDefinition(
        id=schedule.id,
        description=schedule.description,
        cron=schedule.cron,
        interval=schedule.interval.ToTimedelta() if schedule.HasField("interval") else None,
        time_zone=schedule.time_zone,
        overlap=overlap_from_proto(schedule.overlap_policy, "SKIP") or "SKIP",
        catchup_window=schedule.catchup_window.ToTimedelta()
        if schedule.HasField("catchup_window")
        else None,
        action=action,
    )


def schedule_to_proto(view: ScheduleView) -> workflow_pb2.Schedule:
    definition = view.definition
    out = workflow_pb2.Schedule(
        id=definition.id,
        description=definition.description,
        cron=definition.cron,
        time_zone=definition.time_zone,
        overlap_policy=_OVERLAP_TO_PROTO[definition.overlap],  # type: ignore[arg-type]
        paused=view.paused,
        note=view.note,
        recent_run_ids=view.recent_run_ids,
        action_count=view.action_count,
        temporal_schedule_id=view.temporal_schedule_id,
    )
    if definition.interval is not None:
        out.interval.FromTimedelta(definition.interval)
    if definition.catchup_window is not None:
        out.catchup_window.FromTimedelta(definition.catchup_window)
    action = definition.action
    if isinstance(action, ScheduledWorkflowRun):
        out.workflow_run.workflow_id = action.workflow_id
        out.workflow_run.input.CopyFrom(dict_to_struct(action.input))
        if action.metadata:
            out.workflow_run.metadata.CopyFrom(dict_to_struct(action.metadata))
    else:
        out.agent_run.agent_name = action.agent_name
        out.agent_run.prompt = action.prompt
        out.agent_run.thread_id = action.thread_id
    for when in view.next_action_times:
        set_timestamp(out.next_action_times.add(), when)
    if view.create_time is not None:
        set_timestamp(out.create_time, view.create_time)
    return out
