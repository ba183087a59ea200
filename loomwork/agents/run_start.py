"""What the service and the run's first step share as an agent run starts: the key of its
event log, the agent with the call's overrides applied, its `run_started` event and the
names of the tools it is offered."""

from __future__ import annotations

from loomwork.agents.definitions import AgentDefinition
from loomwork.agents.events import RunStarted, encode_event, once_key
from loomwork.agents.memory_tool import UPDATE_WORKING_MEMORY
from loomwork.agents.run_models import AgentRunRequest
from loomwork.memory.models import RecallScope
from loomwork.streams.run_events import RunEventLog


def event_log_key(tenant: str, run_id: str) -> str:
    """Runs are named per tenant: the same client run id in two tenants never meets."""
    return f"{tenant}/{run_id}"


def effective_agent(agent: AgentDefinition, request: AgentRunRequest) -> AgentDefinition:
    """The agent as this run uses it: the call's overrides (memory, read-only, output schema,
    step limit) applied over the stored or coded definition."""
    update: dict[str, object] = {}
    if request.memory is not None:
        update["memory"] = request.memory
    if request.memory_read_only is not None:
        update["memory_read_only"] = request.memory_read_only
    if request.output_schema is not None:
        update["output_schema"] = request.output_schema
    if request.max_steps:
        update["max_steps"] = request.max_steps
    return agent.model_copy(update=update)


async def announce_run(
    events: RunEventLog,
    request: AgentRunRequest,
    agent: AgentDefinition,
    model: str,
    *,
    patience: float | None = 0.0,
    new_log: bool = False,
) -> tuple[int, RunStarted]:
    """Publish `run_started` as the run's first event; nothing when its log has events
    already (a repeated call, a retried start). `patience`: how long to wait out Redis (0,
    one try: the service answers its caller UNAVAILABLE; None: a step's patience);
    `new_log`: the run's id was made by the caller, so nobody else knows its log yet
    (`RunEventLog.publish`). Answers the event and its id (0: not published)."""
    started = RunStarted(
        run_path=request.run_path,
        agent_name=agent.name,
        thread_id=request.thread_id,
        resource_id=request.resource_id,
        model=model,
        max_steps=agent.max_steps,
        structured_output=agent.output_schema is not None,
        input_messages=request.identified_inputs(),
        trace_id=request.trace_id,
    )
    key = event_log_key(request.tenant, request.log_run_id)
    # A sub-agent run's start goes into its top-level run's log, once.
    first = 0 if request.parents else 1
    event_id = await events.publish(
        key,
        encode_event(started),
        only_as=first,
        once=once_key(started),
        patience=patience,
        new_log=new_log,
    )
    return event_id, started


def tool_names(agent: AgentDefinition, request: AgentRunRequest) -> list[str]:
    """The agent's tools, plus the working memory tool when the run keeps working memory:
    not read-only, and with a thread (or a resource, for resource-scoped memory) to keep it."""
    names = list(agent.tool_names)
    wm = agent.memory.working_memory
    has_home = bool(request.thread_id) or (
        wm is not None and wm.scope is RecallScope.RESOURCE and bool(request.resource_id)
    )
    keeps = wm is not None and not agent.memory_read_only and has_home
    if keeps and UPDATE_WORKING_MEMORY not in names:
        names.append(UPDATE_WORKING_MEMORY)
    return names
