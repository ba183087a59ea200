"""A tenant's schedules as Temporal Schedules: each one kept under `loomwork/<tenant>/<id>`,
searchable by tenant and id, with its definition in its memo; each action starts a DslRun
or an AgentRun whose run id the workflow takes from the id Temporal gives it."""

from __future__ import annotations

import logging
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from activities.run_lookup import visibility_literal
from activities.workflow_runs import AGENT_RUN, DSL_RUN
from loomwork.agents.run_models import AgentRunRequest, agent_run_workflow_id
from loomwork.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from loomwork.flows.state import DslRunInput, temporal_workflow_id
from loomwork.messages import NewMessage, Role, TextPart
from loomwork.paging import decode_bytes_token, encode_bytes_token
from loomwork.schedules import (
    ScheduledAgentRun,
    ScheduleDefinition,
    ScheduleView,
    scheduled_run_prefix,
    temporal_schedule_id,
)
from workflows.search_attributes import AGENT, SCHEDULE, STATUS, TENANT, THREAD, WORKFLOW

log = logging.getLogger(__name__)

DEFINITION_MEMO = "loomwork.schedule"
_OVERLAP = {
    "SKIP": ScheduleOverlapPolicy.SKIP,
    "BUFFER_ONE": ScheduleOverlapPolicy.BUFFER_ONE,
    "BUFFER_ALL": ScheduleOverlapPolicy.BUFFER_ALL,
    "CANCEL_OTHER": ScheduleOverlapPolicy.CANCEL_OTHER,
    "TERMINATE_OTHER": ScheduleOverlapPolicy.TERMINATE_OTHER,
    "ALLOW_ALL": ScheduleOverlapPolicy.ALLOW_ALL,
}


def _unavailable(error: RPCError) -> Unavailable:
    return Unavailable(f"Temporal: {error.message}")


class ScheduleBook:
    """Create, read, list, pause, trigger and delete one tenant's schedules."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue

    def _action(
        self, tenant: str, definition: ScheduleDefinition, workflow_version: str
    ) -> ScheduleActionStartWorkflow:
        action = definition.action
        prefix = scheduled_run_prefix(definition.id)
        pairs = [
            SearchAttributePair(TENANT, tenant),
            SearchAttributePair(STATUS, "PENDING"),
            SearchAttributePair(SCHEDULE, definition.id),
        ]
        if isinstance(action, ScheduledAgentRun):
            pairs.append(SearchAttributePair(AGENT, action.agent_name))
            if action.thread_id:
                pairs.append(SearchAttributePair(THREAD, action.thread_id))
            # run_id "": the workflow takes it from its id (`…/sch-<id>-<due time>`).
            request = AgentRunRequest(
                tenant=tenant,
                run_id="",
                agent_name=action.agent_name,
                input_messages=[NewMessage(role=Role.USER, parts=[TextPart(text=action.prompt)])],
                thread_id=action.thread_id,
            )
            return ScheduleActionStartWorkflow(
                AGENT_RUN,
                request,
                id=agent_run_workflow_id(action.agent_name, tenant, prefix),
                task_queue=self.task_queue,
                typed_search_attributes=TypedSearchAttributes(pairs),
                static_summary=f"agent {action.agent_name}, schedule {definition.id}",
            )
        pairs.append(SearchAttributePair(WORKFLOW, action.workflow_id))
        start = DslRunInput(
            tenant=tenant,
            run_id="",
            workflow_id=action.workflow_id,
            workflow_version=workflow_version,
            input=action.input,
            metadata=action.metadata,
        )
        return ScheduleActionStartWorkflow(
            DSL_RUN,
            start,
            id=temporal_workflow_id(action.workflow_id, tenant, prefix),
            task_queue=self.task_queue,
            typed_search_attributes=TypedSearchAttributes(pairs),
            memo=action.metadata or None,
            static_summary=f"workflow {action.workflow_id} v{workflow_version}, "
            f"schedule {definition.id}",
        )

    async def create(
        self,
        tenant: str,
        definition: ScheduleDefinition,
        *,
        paused: bool = False,
        workflow_version: str = "",
    ) -> ScheduleView:
        """Create it (checked already; a workflow run's input validated against
        `workflow_version`'s schema). AlreadyExists if the tenant has one of this id; a cron
        expression or time zone Temporal refuses is InvalidArgument naming the field."""
        spec = ScheduleSpec(
            cron_expressions=[definition.cron] if definition.cron else [],
            intervals=[ScheduleIntervalSpec(every=definition.interval)]
            if definition.interval
            else [],
            time_zone_name=definition.time_zone or None,
        )
        schedule = Schedule(
            action=self._action(tenant, definition, workflow_version),
            spec=spec,
            policy=SchedulePolicy(
                overlap=_OVERLAP[definition.overlap], catchup_window=definition.catchup_window
            ),
            state=ScheduleState(paused=paused, note="created paused" if paused else None),
        )
        schedule_id = temporal_schedule_id(tenant, definition.id)
        try:
            await self.client.create_schedule(
                schedule_id,
                schedule,
                memo={DEFINITION_MEMO: definition.model_dump(mode="json")},
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(TENANT, tenant),
                        SearchAttributePair(SCHEDULE, definition.id),
                    ]
                ),
            )
        except ScheduleAlreadyRunningError:
            raise AlreadyExists(f"schedule {definition.id!r} already exists") from None
        except RPCError as error:
            if error.status == RPCStatusCode.INVALID_ARGUMENT:
                raise _spec_refused(error.message, definition) from error
            raise _unavailable(error) from error
        return await self.get(tenant, definition.id)

    def _handle(self, tenant: str, schedule_id: str) -> ScheduleHandle:
        return self.client.get_schedule_handle(temporal_schedule_id(tenant, schedule_id))

    async def get(self, tenant: str, schedule_id: str) -> ScheduleView:
        """The schedule with its state, next times and recent runs; NotFound if the tenant
        has none of this id."""
        handle = self._handle(tenant, schedule_id)
        try:
            description = await handle.describe()
        except RPCError as error:
            raise _not_found(error, schedule_id) from error
        definition = await _definition(description.memo_value(DEFINITION_MEMO, None))
        if definition is None:
            raise NotFound(f"schedule {schedule_id!r} not found")
        info = description.info
        recent = [
            a.action.workflow_id.rsplit("/", 1)[-1]
            for a in reversed(info.recent_actions)
            if isinstance(a.action, ScheduleActionExecutionStartWorkflow)
        ]
        state = description.schedule.state
        return ScheduleView(
            definition=definition,
            paused=state.paused,
            note=state.note or "",
            next_action_times=list(info.next_action_times)[:5],
            recent_run_ids=recent,
            action_count=info.num_actions,
            create_time=info.created_at,
            temporal_schedule_id=handle.id,
        )

    async def list(
        self, tenant: str, page_size: int, page_token: str
    ) -> tuple[list[ScheduleView], str]:
        """One page of the tenant's schedules, and the next page's token ("" after the last)."""
        query = f"{TENANT.name} = {visibility_literal(tenant)}"
        token = decode_bytes_token(page_token, query) or None
        try:
            listing = await self.client.list_schedules(
                query, page_size=page_size, next_page_token=token
            )
            await listing.fetch_next_page()
        except RPCError as error:
            raise _unavailable(error) from error
        views = []
        for entry in listing.current_page or []:
            definition = await _definition(entry.memo_value(DEFINITION_MEMO, None))
            if definition is None:
                continue
            view = ScheduleView(definition=definition, temporal_schedule_id=entry.id)
            if entry.schedule is not None:
                view.paused = entry.schedule.state.paused
                view.note = entry.schedule.state.note or ""
            if entry.info is not None:
                view.next_action_times = list(entry.info.next_action_times)[:5]
            views.append(view)
        following = listing.next_page_token
        return views, encode_bytes_token(following, query) if following else ""

    async def pause(self, tenant: str, schedule_id: str, paused: bool, note: str) -> ScheduleView:
        handle = self._handle(tenant, schedule_id)
        try:
            if paused:
                await handle.pause(note=note or "paused")
            else:
                await handle.unpause(note=note or "unpaused")
        except RPCError as error:
            raise _not_found(error, schedule_id) from error
        return await self.get(tenant, schedule_id)

    async def trigger(self, tenant: str, schedule_id: str, overlap: str) -> None:
        handle = self._handle(tenant, schedule_id)
        try:
            await handle.trigger(overlap=_OVERLAP[overlap or "ALLOW_ALL"])
        except RPCError as error:
            raise _not_found(error, schedule_id) from error

    async def delete(self, tenant: str, schedule_id: str) -> None:
        handle = self._handle(tenant, schedule_id)
        try:
            await handle.delete()
        except RPCError as error:
            raise _not_found(error, schedule_id) from error


async def _definition(memo: Any) -> ScheduleDefinition | None:
    """The definition kept in a schedule's memo; None for a schedule not made by Loomwork
    (or by a version whose definition this one cannot read)."""
    try:
        return ScheduleDefinition.model_validate(await memo)
    except Exception as error:  # a converter's or pydantic's error
        log.warning("a schedule's definition does not read (%s); left out", error)
        return None


def _not_found(error: RPCError, schedule_id: str) -> NotFound | Unavailable:
    if error.status == RPCStatusCode.NOT_FOUND:
        return NotFound(f"schedule {schedule_id!r} not found")
    return _unavailable(error)


def _spec_refused(message: str, definition: ScheduleDefinition) -> InvalidArgument:
    """Temporal's refusal of a schedule's spec, on the field it is about: the time zone when
    it says so, else the cron expression or the interval (whichever the schedule has)."""
    lowered = message.lower()
    if "time zone" in lowered or "timezone" in lowered:
        field = "schedule.time_zone"
    elif definition.cron:
        field = "schedule.cron"
    else:
        field = "schedule.interval"
    return InvalidArgument.field(field, message)
