"""An agent run of the caller's tenant, by its run id: its workflow, the AgentRun it is now
(from a query, its start input, or its result), its terminal event once its workflow has
closed, and its Updates."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel
from temporalio.client import (
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from activities.run_lookup import RunLookup
from loomwork.agents.events import RunFinished, encode_event
from loomwork.agents.run_models import AgentRunRequest, RunOutcome, RunRecord, RunState
from loomwork.agents.run_start import event_log_key
from loomwork.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from protos.loomwork.v1 import agent_pb2
from server.runtime import Runtime
from server.servicers import agent_convert
from server.servicers.tenancy import tenant
from server.temporal import ABNORMAL_END, closure_error, not_taken, query_state, start_input
from workflows.agent_run import AgentRunWorkflow
from workflows.search_attributes import SCHEDULE

# How long an Update may take before the service checks that a worker has taken the run.
NOT_TAKEN_CHECK_AFTER = 1.0


async def describe_run(
    handle: WorkflowHandle[AgentRunWorkflow, RunOutcome], run_id: str
) -> WorkflowExecutionDescription:
    """The run's workflow as Temporal describes it; NOT_FOUND if Temporal has no such run."""
    try:
        return await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:  # recorded, not started (or expired)
            raise NotFound(f"run {run_id!r} not found") from error
        raise Unavailable(f"Temporal: {error.message}") from error


async def run_state(handle: WorkflowHandle[AgentRunWorkflow, RunOutcome], run_id: str) -> RunState:
    """The run's state, as its workflow answers the query."""
    return await query_state(handle, AgentRunWorkflow.state, run_id)


@dataclass(frozen=True)
class FoundRun:
    """A run of the caller's tenant, by its workflow."""

    run_id: str
    handle: WorkflowHandle[AgentRunWorkflow, RunOutcome]
    workflow_id: str
    agent_name: str


def not_started(run_id: str, nothing: str) -> FailedPrecondition:
    """The error of a call that needs a worker to have taken the run: `nothing` says why."""
    return FailedPrecondition(
        f"run {run_id!r} has not started yet (no worker has taken it): {nothing}"
    )


class AgentRunHandles:
    """The caller's tenant's agent runs, found through `runs` (the run directory, then
    Temporal visibility)."""

    def __init__(self, runtime: Runtime, runs: RunLookup) -> None:
        self.runtime = runtime
        self.runs = runs

    async def find(
        self, run_id: str
    ) -> tuple[WorkflowHandle[AgentRunWorkflow, RunOutcome], str, str]:
        """The run's workflow handle, workflow id and agent name; NOT_FOUND if it has none."""
        if not run_id:
            raise InvalidArgument.field("run_id", "is required")
        workflow_id = await self.runs.workflow_id(tenant(), run_id)
        if workflow_id is None:
            raise NotFound(f"run {run_id!r} not found")
        handle = self.runtime.temporal.get_workflow_handle_for(AgentRunWorkflow.run, workflow_id)
        agent_name = workflow_id.split("/")[1]
        return handle, workflow_id, agent_name

    async def started(self, run_id: str, nothing: str) -> FoundRun:
        """The run, once a worker has taken it; FAILED_PRECONDITION saying `nothing` before."""
        handle, workflow_id, agent_name = await self.find(run_id)
        if not_taken(await describe_run(handle, run_id)):
            raise not_started(run_id, nothing)
        return FoundRun(run_id, handle, workflow_id, agent_name)

    async def current(self, run_id: str) -> agent_pb2.AgentRun:
        """The run as GetRun answers it."""
        handle, workflow_id, agent_name = await self.find(run_id)
        description = await describe_run(handle, run_id)
        schedule_id = description.typed_search_attributes.get(SCHEDULE) or ""
        if description.status == WorkflowExecutionStatus.RUNNING:
            if not_taken(description):
                state = await self.pending_state(handle, description)
            else:
                state = await run_state(handle, run_id)
            if state.status in ("pending", "running", "waiting"):
                run = agent_convert.state_to_proto(run_id, agent_name, state, workflow_id)
                run.schedule_id = schedule_id
                return await self.with_last_event(run)
        if description.status in ABNORMAL_END:
            outcome = await self.abnormal_outcome(handle, run_id, description)
        else:  # completed; or running, decided and only saving: the result is a moment away
            outcome = await handle.result()
        run = agent_convert.run_to_proto(outcome, workflow_id)
        run.schedule_id = schedule_id
        return await self.with_last_event(run, outcome.terminal_event_id)

    async def when_waiting(
        self, handle: WorkflowHandle[AgentRunWorkflow, RunOutcome], run_id: str
    ) -> agent_pb2.AgentRun | None:
        """The run once its state says WAITING (every approval of the step recorded), or None
        if it moved on meanwhile (decided at once: its result is what to answer)."""
        for _ in range(100):
            state = await run_state(handle, run_id)
            if state.status == "waiting":
                return await self.current(run_id)
            if state.status != "running":
                return None
            await asyncio.sleep(0.05)
        return None

    async def pending_state(
        self,
        handle: WorkflowHandle[AgentRunWorkflow, RunOutcome],
        description: WorkflowExecutionDescription,
    ) -> RunState:
        """A run no worker has taken yet, from its start input (nothing to query)."""
        request = await start_input(handle, self.runtime.temporal.data_converter, AgentRunRequest)
        if request is None:
            raise Unavailable(f"Temporal: workflow {handle.id!r} has no start input")
        record = RunRecord.accepted(request, create_time=description.start_time)
        return RunState(**dict(record), status="pending")

    async def abnormal_outcome(
        self,
        handle: WorkflowHandle[AgentRunWorkflow, RunOutcome],
        run_id: str,
        description: WorkflowExecutionDescription,
    ) -> RunOutcome:
        """A run whose workflow ended without its outcome (ABNORMAL_END): FAILED with the
        workflow's failure as its error, and what the workflow knew of it (its start input
        when no worker answers)."""
        try:
            state = await run_state(handle, run_id)
        except Unavailable:
            state = await self.pending_state(handle, description)
        error_type, message = await closure_error(handle)
        return RunOutcome.model_validate(
            {
                **{name: getattr(state, name) for name in RunRecord.model_fields},
                "run_id": run_id,
                "agent_name": handle.id.split("/")[1],
                "status": "failed",
                "finish_reason": "error",
                "steps": state.steps,
                "error": message,
                "error_type": error_type,
                "end_time": description.close_time,
            }
        )

    def closed_end(
        self, handle: WorkflowHandle[AgentRunWorkflow, RunOutcome], run_id: str
    ) -> Callable[[], Awaitable[bytes | None]]:
        """The run's terminal event once its workflow has closed (see ClosedRunEnd): FAILED
        with its failure if it ended from outside, else its outcome (its log lost it)."""

        async def terminal() -> bytes | None:
            description = await describe_run(handle, run_id)
            if description.status in (None, WorkflowExecutionStatus.RUNNING):
                return None
            if description.status in ABNORMAL_END:
                outcome = await self.abnormal_outcome(handle, run_id, description)
            else:
                outcome = await handle.result()
            return encode_event(RunFinished(outcome=outcome))

        return terminal

    async def update(
        self, run: FoundRun, name: str, payload: BaseModel, *, unless_not_taken: str = ""
    ) -> agent_pb2.AgentRun:
        """Send the run one of its Updates and answer with the run as the workflow returns
        it. A rejected Update (WorkflowUpdateFailedError) is mapped where every error is.
        `unless_not_taken`: FAILED_PRECONDITION saying so if no worker has taken the run
        (an Update would wait for one), checked once the Update is slow to answer."""
        update = asyncio.ensure_future(
            run.handle.execute_update(name, payload, result_type=RunState)
        )
        try:
            if unless_not_taken:
                # An Update waits for a worker to take the run: one that is slow to answer
                # is checked (a describe is a round trip; most Updates are answered sooner).
                done, _ = await asyncio.wait({update}, timeout=NOT_TAKEN_CHECK_AFTER)
                if not done and not_taken(await describe_run(run.handle, run.run_id)):
                    raise not_started(run.run_id, unless_not_taken)
            state = await update
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:  # the workflow has closed
                raise FailedPrecondition(f"run {run.run_id!r} has ended") from error
            raise Unavailable(f"Temporal: {error.message}") from error
        finally:
            update.cancel()
        proto = agent_convert.state_to_proto(run.run_id, run.agent_name, state, run.workflow_id)
        return await self.with_last_event(proto)

    async def with_last_event(
        self, run: agent_pb2.AgentRun, terminal_event_id: int = 0
    ) -> agent_pb2.AgentRun:
        """Fill `last_event_id` (kept by the result once the run's events have expired)."""
        last = await self.runtime.events.last_id(event_log_key(tenant(), run.id))
        run.last_event_id = max(last, terminal_event_id)
        return run
