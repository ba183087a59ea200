"""Starting a workflow (DSL) run on Temporal, the one way every entry point does it:
WorkflowService.StartRun and the webhook routes that start a workflow.

Here rather than in the server because activities start runs too, and they do not import
the server; the server imports this.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from loomwork.agents.directory import RunDirectory
from loomwork.flows.definition import Workflow
from loomwork.flows.execution import WorkflowEvents
from loomwork.flows.fork import Fork
from loomwork.flows.state import (
    DslRunInput,
    event_log_key,
    run_search_attributes,
    temporal_workflow_id,
)
from loomwork.streams.run_events import RunEventLog

# A failed StartWorkflowExecution with these may still have started the workflow.
START_OUTCOME_UNKNOWN = frozenset(
    {RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED, RPCStatusCode.UNKNOWN}
)
# Workflow type names (activities do not import workflows).
DSL_RUN = "DslRun"  # workflows.dsl_run.DslRunWorkflow
AGENT_RUN = "AgentRun"  # workflows.agent_run.AgentRunWorkflow


class WorkflowRunStarter:
    """Records, announces and starts DslRun executions: one run per run id (a repeat joins
    the run while it runs and starts nothing once it ended), searchable by tenant, workflow
    and run, with run_started published as the run is accepted."""

    def __init__(
        self, client: Client, events: RunEventLog, directory: RunDirectory, task_queue: str
    ) -> None:
        self.client = client
        self.events = WorkflowEvents(events)
        self.directory = directory
        self.task_queue = task_queue

    async def start(
        self,
        tenant: str,
        run_id: str,
        definition: Workflow,
        data: dict[str, Any],
        *,
        summary: str,
        metadata: dict[str, Any] | None = None,
        fork: Fork | None = None,
    ) -> WorkflowHandle[Any, Any] | None:
        """Start run `run_id` of `definition` on input `data` (validated already): the
        started (or joined) run's handle; None if a run of this id ran and ended before.
        Raises temporalio's RPCError when Temporal refused the start or could not be reached
        (after a refusal the run's log is removed again)."""
        start = DslRunInput(
            tenant=tenant,
            run_id=run_id,
            workflow_id=definition.id,
            workflow_version=definition.version,
            input=data,
            metadata=metadata or {},
            forked_from=fork.forked_from if fork else "",
            reused=fork.reused if fork else {},
        )
        workflow_id = temporal_workflow_id(definition.id, tenant, run_id)
        start, _ = await asyncio.gather(
            self.events.announce(start),
            self.directory.record(tenant, run_id, workflow_id),
        )
        try:
            return await self.client.start_workflow(
                DSL_RUN,
                start,
                id=workflow_id,
                task_queue=self.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(SearchAttributeKey.for_keyword(name), value)
                        for name, value in run_search_attributes(
                            start.tenant, start.workflow_id, start.run_id
                        ).items()
                    ]
                ),
                memo=start.metadata or None,
                static_summary=summary,
            )
        except WorkflowAlreadyStartedError:
            return None
        except RPCError as error:
            # Refused, so nothing started: leave no log behind (an active log has no TTL).
            # After a timeout the start may have happened, and its log must stay.
            if error.status not in START_OUTCOME_UNKNOWN:
                await self.events.events.discard(event_log_key(start.tenant, start.run_id))
            raise
