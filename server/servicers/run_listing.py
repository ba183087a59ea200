"""Runs as ListRuns shows them (AgentService and WorkflowService), from Temporal visibility:
one page of a visibility query, and each run's ids, status and times from its search
attributes, with what a waiting run waits on from its memo (`loomwork.waiting`)."""

from __future__ import annotations

import logging
from typing import Any

from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus
from temporalio.service import RPCError

from activities.run_lookup import visibility_literal
from loomwork.agents.run_models import WaitingOn
from loomwork.errors import Unavailable
from loomwork.flows.state import RunState, RunStatus, StepRun
from loomwork.paging import decode_bytes_token, encode_bytes_token
from protos.loomwork.v1 import agent_pb2, run_pb2, workflow_pb2
from server.servicers import agent_convert, workflow_convert
from server.servicers.client_tools_convert import pending_tool_call_to_proto
from server.servicers.well_known_convert import set_timestamp
from server.temporal import ABNORMAL_END
from workflows.search_attributes import (
    AGENT,
    RESOURCE,
    RUN,
    SCHEDULE,
    STATUS,
    THREAD,
    WORKFLOW,
)
from workflows.waits import WAITING_MEMO

log = logging.getLogger(__name__)

_OPEN = ("PENDING", "RUNNING", "WAITING", "SUSPENDED")


def status_clause(names: set[str]) -> str:
    """The visibility query's clause for runs in these statuses (LoomworkStatus values): an
    open status only while the workflow is running, and FAILED also for workflows that ended
    without saying so (terminated, timed out, failed), whatever their LoomworkStatus says."""

    def listed(values: list[str]) -> str:
        return ", ".join(visibility_literal(v) for v in sorted(values))

    open_names = [n for n in names if n in _OPEN]
    closed_names = [n for n in names if n not in _OPEN]
    clauses = []
    if open_names:
        clauses.append(
            f"(LoomworkStatus IN ({listed(open_names)}) AND ExecutionStatus = 'Running')"
        )
    if closed_names:
        clauses.append(f"LoomworkStatus IN ({listed(closed_names)})")
    if "FAILED" in names:
        clauses.append("ExecutionStatus IN ('Failed', 'Terminated', 'TimedOut')")
    return "(" + " OR ".join(clauses) + ")"


async def visibility_page(
    client: Client, query: str, page_size: int, page_token: str
) -> tuple[list[WorkflowExecution], str]:
    """One page of a visibility query, and the token of the next ("" after the last); a
    token is bound to its query."""
    token = decode_bytes_token(page_token, query) or None
    listing = client.list_workflows(query, page_size=page_size, next_page_token=token)
    try:
        await listing.fetch_next_page()
    except RPCError as error:
        raise Unavailable(f"Temporal visibility: {error.message}") from error
    following = listing.next_page_token
    return (
        list(listing.current_page or []),
        encode_bytes_token(following, query) if following else "",
    )


async def _waits(execution: WorkflowExecution, type_hint: Any) -> Any:
    """What the run waits on, from its memo; None if it has none or one this server cannot
    read (a newer version's, during a rolling upgrade: the run is listed without it)."""
    try:
        return await execution.memo_value(WAITING_MEMO, None, type_hint=type_hint)
    except Exception as error:  # a converter's error: any type
        log.warning("run %s: its memo of waits does not read (%s); left out", execution.id, error)
        return None


def _times(
    run: agent_pb2.AgentRun | workflow_pb2.WorkflowRun, execution: WorkflowExecution
) -> None:
    set_timestamp(run.create_time, execution.start_time)
    if execution.execution_time is not None:
        set_timestamp(run.start_time, execution.execution_time)
    if execution.close_time is not None:
        set_timestamp(run.end_time, execution.close_time)


async def listed_agent_run(execution: WorkflowExecution) -> agent_pb2.AgentRun:
    """An agent run as visibility knows it: ids, agent, thread, status, times and, while it
    waits, the calls it waits on (without their arguments)."""
    attributes = execution.typed_search_attributes
    status_name = attributes.get(STATUS) or "RUNNING"
    status = agent_convert.RUN_STATUS_FROM_NAME.get(status_name, run_pb2.RUN_STATUS_RUNNING)
    if execution.status in ABNORMAL_END:
        status = run_pb2.RUN_STATUS_FAILED
    elif execution.status == WorkflowExecutionStatus.CANCELED:
        status = run_pb2.RUN_STATUS_CANCELED
    run = agent_pb2.AgentRun(
        id=attributes.get(RUN) or execution.id.rsplit("/", 1)[-1],
        agent_name=attributes.get(AGENT) or "",
        thread_id=attributes.get(THREAD) or "",
        resource_id=attributes.get(RESOURCE) or "",
        status=status,
        temporal_workflow_id=execution.id,
        temporal_run_id=execution.run_id,
        schedule_id=attributes.get(SCHEDULE) or "",
    )
    _times(run, execution)
    if status == run_pb2.RUN_STATUS_WAITING:
        waiting: WaitingOn | None = await _waits(execution, WaitingOn)
        if waiting is not None:
            run.pending_approvals.extend(
                agent_convert.pending_to_proto(p) for p in waiting.approvals
            )
            run.pending_tool_calls.extend(pending_tool_call_to_proto(c) for c in waiting.tool_calls)
    return run


def _workflow_status(execution: WorkflowExecution) -> RunStatus:
    if execution.status == WorkflowExecutionStatus.COMPLETED:
        return "succeeded"
    if execution.status == WorkflowExecutionStatus.CANCELED:
        return "canceled"
    if execution.status in ABNORMAL_END:
        return "failed"
    name = (execution.typed_search_attributes.get(STATUS) or "RUNNING").lower()
    return name if name in workflow_convert.RUN_STATUS else "running"  # type: ignore[return-value]


async def listed_workflow_run(
    execution: WorkflowExecution, tenant: str
) -> workflow_pb2.WorkflowRun:
    """A workflow run as visibility knows it: ids, workflow, status, times, the caller's
    metadata and, while it is suspended or waiting, the step executions it waits on
    (without their data)."""
    attributes = execution.typed_search_attributes
    memo = dict(await execution.memo())
    memo.pop(WAITING_MEMO, None)
    status = _workflow_status(execution)
    state = RunState(
        tenant=tenant,
        # A schedule's run before its workflow has named it: the end of its workflow id.
        run_id=attributes.get(RUN) or execution.id.rsplit("/", 1)[-1],
        workflow_id=attributes.get(WORKFLOW) or "",
        workflow_version="",
        status=status,
        metadata=memo,
    )
    run = workflow_convert.run_to_proto(
        state,
        temporal_workflow_id=execution.id,
        temporal_run_id=execution.run_id,
        summary=True,
    )
    run.schedule_id = attributes.get(SCHEDULE) or ""
    _times(run, execution)
    if status in ("suspended", "waiting"):
        steps: list[StepRun] | None = await _waits(execution, list[StepRun])
        run.steps.extend(workflow_convert.step_run_to_proto(s) for s in steps or [])
    return run
