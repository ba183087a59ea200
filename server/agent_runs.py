"""Starting an agent run on Temporal, the one way AgentService's Generate, Stream and
StreamObject do it: the run's thread resolved, one run per client run id, run_started
published as the run is accepted, and the first step begun while Temporal starts the run.

Here rather than in `activities/` (beside `WorkflowRunStarter`): it starts the AgentRun
workflow by its class, with the search attributes `workflows/` defines, and asks the
process's own worker (`Runtime`) whether the run comes to it; activities import neither
`workflows` nor `server`, and no activity starts agent runs.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from temporalio.client import WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from activities.workflow_runs import START_OUTCOME_UNKNOWN
from loomwork.agents.catalog import AgentCatalog
from loomwork.agents.definitions import AgentDefinition
from loomwork.agents.directory import RunDirectory
from loomwork.agents.events import RunFinished, RunStarted, encode_event
from loomwork.agents.first_step_routing import FirstStepNotice
from loomwork.agents.run_models import (
    AgentFork,
    AgentRunRequest,
    RunOutcome,
    RunRecord,
    agent_run_workflow_id,
)
from loomwork.agents.run_start import announce_run, effective_agent, event_log_key, tool_names
from loomwork.agents.sub_agents import function_names
from loomwork.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    Violations,
)
from loomwork.ids import new_id
from loomwork.memory.settings import MemorySettings, merge
from loomwork.messages import NewMessage, NewThread, Role
from loomwork.telemetry import current_trace_id, trace_carrier
from loomwork.tools.client_tools import ClientTool, check_names_free
from server.quotas import admit_run, refuse_run
from server.runtime import Runtime
from server.temporal import eagerly_started, newly_started, workflow_open
from workflows.agent_run import AgentRunWorkflow
from workflows.search_attributes import AGENT, RESOURCE, RUN, STATUS, TENANT, THREAD

# Scanned to find a resource's most recently updated thread (LATEST).
LATEST_SCAN = 1000
_INPUT_ROLES = {Role.USER, Role.ASSISTANT, Role.TOOL}

# How a run finds its thread (AgentService's ThreadResolution, without its prefix).
ThreadResolution = Literal[
    "UNSPECIFIED", "EXISTING", "CREATE_IF_MISSING", "NEW", "LATEST", "SESSION"
]


class AgentRunStart(BaseModel):
    """An agent run as a caller asks for it, each field checked on its own already (ids,
    sizes, shapes); what depends on the agent, the thread or an earlier run is the
    starter's to check."""

    agent_name: str
    messages: list[NewMessage]
    client_run_id: str = ""  # names one run: a repeat joins it
    thread_id: str = ""
    resource_id: str = ""
    session_key: str = ""
    thread_resolution: ThreadResolution = "UNSPECIFIED"
    max_steps: int = 0  # 0: the agent's own
    memory: MemorySettings | None = None  # a per-call override of the agent's
    memory_read_only: bool | None = None
    output_schema: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    client_tools: list[ClientTool] = Field(default_factory=list)  # each checked on its own
    fork: AgentFork | None = None  # ForkRun: a fork of another run (on no thread)


def session_thread_id(resource_id: str, session_key: str) -> str:
    """The one thread of a resource and session key: a stable id derived from both."""
    digest = hashlib.sha256(f"{resource_id}\x00{session_key}".encode()).hexdigest()[:32]
    return f"ses_{digest}"


@dataclass
class AcceptedRun:
    """A run `AgentRunStarter.accept` took: announced if `new`, not started on Temporal yet."""

    tenant_id: str
    request: AgentRunRequest
    workflow_id: str
    new: bool  # False: a repeat of a client run id, joining its run
    slot: bool  # a quota slot was taken for it (given back if Temporal refuses it)
    named: bool  # the caller named it (client_run_id)
    # The run_started this call published, with its id (a new run's), for the caller at once.
    started: tuple[int, RunStarted] | None = None


class AgentRunStarter:
    """Resolves the thread of, announces and starts AgentRun executions: one run per client
    run id (a repeat joins the run, running or finished), searchable by tenant, agent, run,
    thread and resource, with its first step begun here when the run comes to this process."""

    def __init__(self, runtime: Runtime, directory: RunDirectory, catalog: AgentCatalog) -> None:
        self.runtime = runtime
        self.directory = directory
        self.catalog = catalog

    async def start(
        self, tenant_id: str, start: AgentRunStart, *, require_output_schema: bool = False
    ) -> tuple[AgentRunRequest, WorkflowHandle[AgentRunWorkflow, RunOutcome]]:
        """Start (or join) the run: the workflow's input and the run's handle (its id is the
        run's workflow id). `require_output_schema`: the call streams an object, so the run
        needs an output schema (the call's or the agent's)."""
        accepted = await self.accept(tenant_id, start, require_output_schema=require_output_schema)
        return accepted.request, await self.launch(accepted)

    async def accept(
        self, tenant_id: str, start: AgentRunStart, *, require_output_schema: bool = False
    ) -> AcceptedRun:
        """The run checked, admitted, recorded and (a new one) announced: its log opens with
        run_started. Nothing is started on Temporal yet: `launch` does that."""
        existing = None
        if start.client_run_id:
            existing = await self.directory.workflow_id(tenant_id, start.client_run_id)
            if existing is not None and not await self._started(existing):
                if await self.directory.was_started(tenant_id, start.client_run_id):
                    raise AlreadyExists(
                        f"client_run_id {start.client_run_id!r} named a run that has ended"
                        " and is no longer kept by Temporal (its retention): give a new id"
                    )
                # Recorded, but its start failed: this call starts it, on a fresh log
                # (the refused start's ended with its run_failed).
                key = event_log_key(tenant_id, start.client_run_id)
                if await self.runtime.events.is_finished(key):
                    await self.runtime.events.discard(key)
                existing = None
        # A repeated client run id joins its run: no thread is resolved (or created) again.
        run_request, agent = await self._run_request(
            tenant_id,
            start,
            resolve=existing is None and start.fork is None,  # a fork runs on no thread
            require_output_schema=require_output_schema,
        )
        workflow_id = agent_run_workflow_id(run_request.agent_name, tenant_id, run_request.run_id)
        if existing is not None and existing != workflow_id:
            raise AlreadyExists(f"client_run_id {run_request.run_id!r} is a run of another agent")
        # A new run is admitted by the tenant's quotas first (a repeat joins its run).
        slot = existing is None and await admit_run(self.runtime, tenant_id, workflow_id)
        started = None
        if existing is None:
            # Announced as it is accepted: the caller sees run_started (with the run id) at
            # once, and the run's first activity goes straight to the model. A run id made
            # here names a log nobody else knows yet.
            agent = effective_agent(agent, run_request)
            model = agent.model or self.runtime.settings.chat_model
            started, _ = await asyncio.gather(
                announce_run(
                    self.runtime.events,
                    run_request,
                    agent,
                    model,
                    new_log=not start.client_run_id,
                ),
                self.directory.record(tenant_id, run_request.run_id, workflow_id),
            )
            run_request.announced = True
            run_request.model = model
        else:
            await self.directory.record(tenant_id, run_request.run_id, workflow_id)
        return AcceptedRun(
            tenant_id,
            run_request,
            workflow_id,
            new=existing is None,
            slot=slot,
            named=bool(start.client_run_id),
            started=started if started is not None and started[0] > 0 else None,
        )

    async def launch(self, accepted: AcceptedRun) -> WorkflowHandle[AgentRunWorkflow, RunOutcome]:
        """Start the accepted run on Temporal (a repeat of a client run id joins its run);
        refused, its log is discarded and its quota slot given back."""
        runtime = self.runtime
        tenant_id, run_request, workflow_id = (
            accepted.tenant_id,
            accepted.request,
            accepted.workflow_id,
        )
        pairs = [
            SearchAttributePair(TENANT, tenant_id),
            SearchAttributePair(AGENT, run_request.agent_name),
            SearchAttributePair(RUN, run_request.run_id),
            # Running from the start when this process's worker takes it (eager start):
            # the run's first task then goes straight to the model step.
            SearchAttributePair(STATUS, "RUNNING" if runtime.runs_worker else "PENDING"),
        ]
        if run_request.thread_id:
            pairs.append(SearchAttributePair(THREAD, run_request.thread_id))
        if run_request.resource_id:
            pairs.append(SearchAttributePair(RESOURCE, run_request.resource_id))
        # The first step begins now, and the run's first activity takes it over when it
        # starts in this process (it writes and streams a draft once the run exists, and
        # publishes the rest once adopted).
        key = event_log_key(tenant_id, run_request.run_id)
        steps = runtime.agent_steps
        speculating = (
            accepted.new
            and steps is not None
            and runtime.settings.speculative_first_step
            and steps.speculate(run_request)
        )
        run_request.first_step_begun = speculating
        # No worker here (a `loomwork server`): a worker chosen for it begins the step.
        chosen = await self._begin_elsewhere(accepted, key) if accepted.new else ""
        started: bool | None = None  # None: no new run; else whether it came here (eager)
        created = False  # whether this start created the run
        try:
            # A client run id names one run: a repeat joins it, running or finished.
            handle = await runtime.temporal.start_workflow(
                AgentRunWorkflow.run,
                run_request,
                id=workflow_id,
                task_queue=runtime.settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes(pairs),
                # The first workflow task goes straight to a worker of this process, if any.
                request_eager_start=True,
                static_summary=f"agent {run_request.agent_name}, run {run_request.run_id}",
            )
            started = eagerly_started(handle)
            created = newly_started(handle)
        except WorkflowAlreadyStartedError:
            handle = runtime.temporal.get_workflow_handle_for(AgentRunWorkflow.run, workflow_id)
        except RPCError as error:
            # Refused, so nothing started: leave no log behind (an active log has no TTL).
            # After a timeout the start may have happened, and its log must stay.
            refused = Unavailable(
                f"Temporal did not start run {run_request.run_id!r}: {error.message}; try"
                " again (a client_run_id makes the retry join the run if it did start)"
            )
            # Refused, so nothing started: the log ends with run_failed saying why (its
            # streams end there; the ended log expires). After a timeout the start may
            # have happened, and its log must stay open.
            if accepted.new and error.status not in START_OUTCOME_UNKNOWN:
                await refuse_run(runtime, tenant_id, workflow_id, accepted.slot)
                await self._end_refused(accepted, refused)
            raise refused from error
        finally:
            if speculating:
                if started:
                    runtime.speculation.confirm(key)
                else:  # not started, or its first task went to the task queue: not ours
                    runtime.speculation.abandon(key, refused=started is False)
            if chosen:  # confirmed: the step may write and draft; else it is cancelled
                notice = FirstStepNotice(op="confirm" if created else "abandon", key=key)
                await runtime.first_steps.tell(chosen, notice)
        if accepted.named:  # a repeat of the id, once Temporal dropped the run, is refused
            await self.directory.mark_started(tenant_id, run_request.run_id)
        return handle

    async def _begin_elsewhere(self, accepted: AcceptedRun, key: str) -> str:
        """With no worker in this process: tell a worker to begin the run's first step,
        and name its first-step queue in the run's input (loomwork.agents.first_step_routing);
        that queue, or "" when no worker is listed or heard."""
        runtime, request = self.runtime, accepted.request
        if runtime.agent_steps is not None or not runtime.settings.speculative_first_step:
            return ""
        queue = await runtime.first_steps.choose()
        if queue is None:
            return ""
        routed = request.model_copy(update={"first_step_queue": queue, "first_step_begun": True})
        if not await runtime.first_steps.tell(
            queue, FirstStepNotice(op="begin", key=key, request=routed, trace=trace_carrier())
        ):
            return ""
        request.first_step_queue, request.first_step_begun = queue, True
        return queue

    async def _end_refused(self, accepted: AcceptedRun, error: Unavailable) -> None:
        """End the log of a run Temporal refused to start with its run_failed."""
        request = accepted.request
        outcome = RunOutcome.model_validate(
            {
                **RunRecord.accepted(request).model_dump(),
                "model": request.model,
                "run_id": request.run_id,
                "agent_name": request.agent_name,
                "status": "failed",
                "finish_reason": "error",
                "error": error.message,
                "error_type": type(error).__name__,
                "end_time": datetime.now(UTC),
            }
        )
        key = event_log_key(accepted.tenant_id, request.run_id)
        await self.runtime.events.publish(
            key, encode_event(RunFinished(outcome=outcome)), terminal=True, patience=0
        )

    async def _started(self, workflow_id: str) -> bool:
        """Whether Temporal has the run (it may have been recorded, then failed to start)."""
        return await workflow_open(self.runtime.temporal, workflow_id) is not None

    async def _run_request(
        self,
        tenant_id: str,
        start: AgentRunStart,
        *,
        resolve: bool,
        require_output_schema: bool,
    ) -> tuple[AgentRunRequest, AgentDefinition]:
        """The workflow's input for this call, and the agent as stored or coded."""
        agent = await self.catalog.get(tenant_id, start.agent_name)
        if require_output_schema and start.output_schema is None and agent.output_schema is None:
            raise FailedPrecondition(
                f"agent {agent.name!r} has no output schema: give output_schema for this call"
            )
        for i, message in enumerate(start.messages):
            if message.role not in _INPUT_ROLES:
                raise InvalidArgument.field(
                    f"messages[{i}].role", "must be user, assistant or tool"
                )
        thread_id, resource_id = "", ""
        if resolve:
            thread_id, resource_id = await self._resolve_thread(tenant_id, start)
        run_request = AgentRunRequest(
            tenant=tenant_id,
            run_id=start.client_run_id or new_id("run"),
            agent_name=agent.name,
            input_messages=start.messages,
            thread_id=thread_id,
            resource_id=resource_id,
            max_steps=start.max_steps,
            memory=merge(agent.memory, start.memory) if start.memory is not None else None,
            memory_read_only=start.memory_read_only,
            output_schema=start.output_schema,
            metadata=start.metadata,
            create_time=datetime.now(UTC),
            client_tools=start.client_tools,
            trace_id=current_trace_id(),
            fork=start.fork,
        )
        # The model must tell a client tool from the agent's own tools by name (an MCP tool
        # named only by `mcp:<server>/*` gives way to a client tool of its name).
        effective = effective_agent(agent, run_request)
        own = tool_names(effective, run_request)
        check_names_free(start.client_tools, function_names(own, effective.handoffs))
        return run_request, agent

    async def _resolve_thread(self, tenant_id: str, start: AgentRunStart) -> tuple[str, str]:
        """The run's thread id and its resource id (both empty for a stateless run)."""
        memory = self.runtime.memory
        resolution = start.thread_resolution
        thread_id, resource_id = start.thread_id, start.resource_id
        if start.session_key and resolution != "SESSION":
            raise InvalidArgument.field("session_key", "is only used with SESSION")
        if resolution in ("NEW", "LATEST", "SESSION"):
            violations = Violations()
            if thread_id:
                violations.add("thread_id", f"must be empty with {resolution}")
            if resolution != "NEW" and not resource_id:
                violations.add("resource_id", f"is required with {resolution}")
            if resolution == "SESSION" and not start.session_key:
                violations.add("session_key", "is required with SESSION")
            violations.raise_if_any()
        if resolution == "LATEST":
            page = await memory.list_threads(
                tenant_id, resource_id=resource_id, page_size=LATEST_SCAN
            )
            if page.threads:
                latest = max(page.threads, key=lambda t: (t.update_time, t.create_time))
                return latest.id, latest.resource_id
            resolution = "NEW"
        if resolution == "SESSION":
            thread_id = session_thread_id(resource_id, start.session_key)
        elif resolution == "NEW" or (not thread_id and resource_id):
            created = await memory.create_thread(tenant_id, NewThread(resource_id=resource_id))
            return created.id, created.resource_id
        if not thread_id:
            if resolution in ("EXISTING", "CREATE_IF_MISSING"):
                raise InvalidArgument.field(
                    "thread_id", f"is required with THREAD_RESOLUTION_{resolution}"
                )
            return "", ""
        try:
            thread = await memory.get_thread(tenant_id, thread_id)
        except NotFound:
            if resolution == "EXISTING":
                raise
            try:
                thread = await memory.create_thread(
                    tenant_id, NewThread(id=thread_id, resource_id=resource_id)
                )
            except AlreadyExists:  # created by a concurrent call meanwhile
                thread = await memory.get_thread(tenant_id, thread_id)
        if resource_id and thread.resource_id and resource_id != thread.resource_id:
            raise InvalidArgument.field(
                "resource_id", f"thread {thread.id!r} belongs to resource {thread.resource_id!r}"
            )
        return thread.id, thread.resource_id
