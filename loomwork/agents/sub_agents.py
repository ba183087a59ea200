"""Agents working together: an agent that calls another as a tool (`agent:<name>` in its
tool names: each call a sub-agent run, which the workflow starts as a child of the calling
run) and an agent that hands its run over to another (`handoffs`: the model calls
`transfer_to_<name>` and the run's next steps run as that agent).

How the model sees both, what a sub-agent run is asked and what it answers, the handoff
step, and the check that refuses agents that would call themselves as tools.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from loomwork.agents.definitions import AgentDefinition
from loomwork.agents.events import AgentEvent, Handoff, ToolResultEvent
from loomwork.agents.payloads import HandoffInput, HandoffOutcome, RunPlan, StepOutput
from loomwork.agents.run_models import AgentRunRequest, RunOutcome
from loomwork.ids import new_id
from loomwork.llm.chat import ChatMessage, ToolSpec
from loomwork.messages import NewMessage, Role, TextPart, ToolCallPart, ToolResultPart
from loomwork.tools.mcp_names import MAX_FUNCTION_NAME
from loomwork.tools.mcp_names import function_names as tool_function_names
from loomwork.tools.registry import error_result
from loomwork.tools.routes import ToolRoute

log = logging.getLogger(__name__)

AGENT_TOOL_PREFIX = "agent:"
HANDOFF_PREFIX = "transfer_to_"
# How deep sub-agent runs nest by default (LOOMWORK_MAX_AGENT_DEPTH): a run a caller started
# is at depth 0, the runs it calls at 1, and so on.
DEFAULT_MAX_DEPTH = 3
PROMPT = "prompt"
PROMPT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        PROMPT: {
            "type": "string",
            "description": "What to ask the agent: the task, and everything it needs to know.",
        }
    },
    "required": [PROMPT],
    "additionalProperties": False,
}

# An agent by name (None: the tenant has no such agent).
AgentLookup = Callable[[str], Awaitable[AgentDefinition | None]]
Publish = Callable[[AgentRunRequest, AgentEvent], Awaitable[int]]


def is_agent_tool(name: str) -> bool:
    """Whether an agent's tool name names another agent (`agent:<name>`)."""
    return name.startswith(AGENT_TOOL_PREFIX)


def called_agent(name: str) -> str:
    """The agent an `agent:<name>` tool name calls."""
    return name.removeprefix(AGENT_TOOL_PREFIX)


def handoff_function(agent_name: str) -> str:
    """The function name of the tool that hands a run to `agent_name`."""
    return f"{HANDOFF_PREFIX}{agent_name}"[:MAX_FUNCTION_NAME]


def named_functions(tool_names: list[str], handoffs: list[str]) -> list[tuple[str, str]]:
    """(the function name the model sees, the field naming it) for an agent's tool names and
    handoffs, as far as known without the MCP servers' lists: an agent called as a tool by
    its own name, a handoff as `transfer_to_<name>`."""
    named: list[tuple[str, str]] = []
    for i, name in enumerate(tool_names):
        field = f"tool_names[{i}]"
        if is_agent_tool(name):
            named.append((called_agent(name), field))
        else:
            named += [(function, field) for function in tool_function_names([name])]
    named += [(handoff_function(name), f"handoffs[{i}]") for i, name in enumerate(handoffs)]
    return named


def function_names(tool_names: list[str], handoffs: list[str]) -> list[str]:
    """The function names the model sees for these tool names and handoffs (see
    `named_functions`)."""
    return [function for function, _ in named_functions(tool_names, handoffs)]


def agent_tool_spec(agent: AgentDefinition) -> ToolSpec:
    """An agent as a tool the model calls with a prompt; the agent's answer is its result."""
    description = agent.description or f"Ask the agent {agent.name}."
    return ToolSpec(
        name=agent.name,
        description=f"{description} (Runs the agent {agent.name} on your prompt; its final "
        "answer is the result.)",
        parameters=PROMPT_SCHEMA,
    )


def handoff_spec(agent: AgentDefinition) -> ToolSpec:
    """The tool that hands the run over to `agent`."""
    about = f": {agent.description}" if agent.description else "."
    return ToolSpec(
        name=handoff_function(agent.name),
        description=f"Hand the conversation over to the agent {agent.name}{about} It answers "
        "from then on, with its own instructions and tools.",
    )


async def offered_agents(
    agent: AgentDefinition, tool_names: list[str], lookup: AgentLookup
) -> tuple[list[ToolSpec], dict[str, ToolRoute]]:
    """What the model is told of the agents the run's agent calls as tools and may hand off
    to, and how their calls run, by function name. An agent that no longer exists (deleted
    since) is left out, with a warning."""
    called = [called_agent(n) for n in tool_names if is_agent_tool(n)]
    found = await asyncio.gather(*(lookup(name) for name in [*called, *agent.handoffs]))
    specs: list[ToolSpec] = []
    routes: dict[str, ToolRoute] = {}
    for i, (name, definition) in enumerate(zip([*called, *agent.handoffs], found, strict=True)):
        if definition is None:
            log.warning("agent %s: no agent %r any more; left out of its tools", agent.name, name)
            continue
        if i < len(called):
            spec = agent_tool_spec(definition)
            route = ToolRoute(kind="agent", agent=name, timeout=None, summary=f"agent {name}")
        else:
            spec = handoff_spec(definition)
            route = ToolRoute(
                kind="handoff", agent=name, timeout=None, summary=f"handoff to {name}"
            )
        specs.append(spec)
        routes[spec.name] = route
    return specs, routes


def refused_calls(request: AgentRunRequest, output: StepOutput, max_depth: int) -> dict[str, str]:
    """Calls of agents that do not run, by tool call id: the error result the model reads
    instead (arguments without a prompt; a run already `max_depth` sub-runs deep)."""
    refused: dict[str, str] = {}
    for call in output.tool_calls:
        route = output.tool_routes.get(call.tool_call_id)
        if route is None or route.kind != "agent":
            continue
        prompt = call.arguments.get(PROMPT)
        if len(request.parents) >= max_depth:
            refused[call.tool_call_id] = (
                f"the agent {route.agent} was not called: agents called as tools nest at most "
                f"{max_depth} deep (LOOMWORK_MAX_AGENT_DEPTH), and this run is that deep"
            )
        elif not isinstance(prompt, str) or not prompt.strip():
            refused[call.tool_call_id] = f"{call.tool_name} needs a `prompt` (a text)"
    return refused


def sub_run_request(
    request: AgentRunRequest,
    call: ToolCallPart,
    agent_name: str,
    run_id: str,
    *,
    first_step_begun: bool = False,
) -> AgentRunRequest:
    """The run of `agent_name` that a call of it as a tool starts: the call's prompt as its
    one input message, no memory (a sub-agent run is stateless), the caller's metadata,
    client tools (answered through the top-level run) and trace, one level deeper."""
    prompt = str(call.arguments.get(PROMPT, ""))
    return AgentRunRequest(
        tenant=request.tenant,
        run_id=run_id,
        agent_name=agent_name,
        input_messages=[NewMessage(role=Role.USER, parts=[TextPart(text=prompt)])],
        metadata=request.metadata,
        client_tools=request.client_tools,
        parents=[*request.parents, request.run_id],
        first_step_begun=first_step_begun,
        trace_id=request.trace_id,  # one trace: the call that started the top-level run
    )


def begin_sub_runs(
    request: AgentRunRequest, output: StepOutput, begin: Callable[[AgentRunRequest], bool]
) -> None:
    """Begin the first step of each sub-run the step's calls will start, as the service
    does for a run it starts (loomwork.agents.speculation): the sub-run's first activity
    adopts it, and the model answers while the workflow starts the child. A call whose
    sub-run was begun names its run id in its route."""
    for call in output.tool_calls:
        route = output.tool_routes.get(call.tool_call_id)
        if route is None or route.kind != "agent" or call.tool_call_id in output.invalid_calls:
            continue
        run_id = new_id("run")
        sub_run = sub_run_request(request, call, route.agent, run_id, first_step_begun=True)
        if begin(sub_run):
            output.tool_routes[call.tool_call_id] = route.model_copy(update={"run_id": run_id})


def sub_run_result(call: ToolCallPart, agent_name: str, outcome: RunOutcome) -> ToolResultPart:
    """What the calling model reads of a sub-agent run: its final text (or object), or an
    error result saying how it ended."""
    if outcome.status != "succeeded":
        why = outcome.error or outcome.status
        return error_result(
            call, f"the agent {agent_name} did not answer ({outcome.status}): {why}"
        )
    answer: Any = outcome.object if outcome.object is not None else outcome.text
    return ToolResultPart(tool_call_id=call.tool_call_id, tool_name=call.tool_name, result=answer)


async def hand_off(
    handoff: HandoffInput, resolve: AgentLookup, publish: Publish, default_model: str
) -> HandoffOutcome:
    """The handoff call's step: its result (published, then the `handoff` event) and the
    agent the run's next steps run as; an agent that no longer exists keeps the run where
    it is (an error result)."""
    request, call = handoff.request, handoff.call
    target = await resolve(handoff.target)
    if target is None:
        result = error_result(
            call, f"no agent {handoff.target!r} to hand over to: {handoff.agent.name} goes on"
        )
        await publish(request, ToolResultEvent(step=handoff.step, result=result))
        return HandoffOutcome(result=result)
    model = target.model or default_model
    result = ToolResultPart(
        tool_call_id=call.tool_call_id, tool_name=call.tool_name, result={"agent": target.name}
    )
    await publish(request, ToolResultEvent(step=handoff.step, result=result))
    await publish(
        request,
        Handoff(
            step=handoff.step,
            from_agent=handoff.agent.name,
            to_agent=target.name,
            tool_call_id=call.tool_call_id,
            model=model,
        ),
    )
    return HandoffOutcome(result=result, agent=target, model=model)


def handed_over(
    plan: RunPlan, conversation: list[ChatMessage], handoff: HandoffOutcome
) -> tuple[RunPlan, list[ChatMessage]]:
    """The run once handed over: the new agent's instructions as the system message, its
    tools and model for the next steps; the conversation and the step limit stay the run's."""
    agent = handoff.agent or plan.agent
    system = ChatMessage.system(agent.instructions)
    rest = (
        conversation[1:] if conversation and conversation[0].role is Role.SYSTEM else conversation
    )
    return plan.model_copy(update={"agent": agent, "model": handoff.model}), [system, *rest]


@dataclass(frozen=True)
class Cycle:
    """Agents that would call themselves as tools: the field of the first step on the way
    (`tool_names[i]` or `handoffs[i]`) and the agents along it, first and last the same."""

    field: str
    path: list[str]


def _edges(agent: AgentDefinition) -> list[tuple[str, bool, str]]:
    """(agent, whether it is called as a tool, field) for each agent this one leads to."""
    called = [
        (called_agent(name), True, f"tool_names[{i}]")
        for i, name in enumerate(agent.tool_names)
        if is_agent_tool(name)
    ]
    return called + [(name, False, f"handoffs[{i}]") for i, name in enumerate(agent.handoffs)]


async def find_cycle(agent: AgentDefinition, lookup: AgentLookup) -> Cycle | None:
    """A way from `agent` back to itself through the agents it calls as tools and hands off
    to that calls at least one agent as a tool (a run would nest sub-runs without end);
    None if there is none. Handoffs alone may go round: a run's step limit bounds them."""
    known: dict[str, AgentDefinition | None] = {agent.name: agent}
    queue = deque((to, call, field, [agent.name, to]) for to, call, field in _edges(agent))
    seen: set[tuple[str, bool]] = set()
    while queue:
        name, calls, field, path = queue.popleft()
        if name == agent.name:
            if calls:
                return Cycle(field, path)
            continue
        if (name, calls) in seen:
            continue
        seen.add((name, calls))
        if name not in known:
            known[name] = await lookup(name)
        found = known[name]
        if found is not None:
            queue += [(to, calls or call, field, [*path, to]) for to, call, _ in _edges(found)]
    return None
