"""The Pydantic AI peer of bench/peers.py: an agent with the `add` tool, made durable by its
Temporal integration as its docs recommend (the `TemporalDurability` capability, the
`PydanticAIPlugin` on client and worker, `AgentPlugin` on the worker), streaming its events
to a Workflow Stream topic that a client reads with `stream_agent_events`.

The model is the scripted one at OPENAI_BASE_URL, over chat completions (`openai-chat:`), as
Loomwork calls it. Needs the `bench` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.durable_exec.temporal import (
    AgentEventStream,
    AgentPlugin,
    PydanticAIPlugin,
    TemporalDurability,
)
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.plugin import SimplePlugin
from tool_calls_log import record_call

TOPIC = "agent-events"
INSTRUCTIONS = (
    "You are a concise, helpful assistant. Use the tools for arithmetic and counting "
    "instead of guessing."
)


class AddResult(BaseModel):
    sum: float


def add(numbers: list[float]) -> AddResult:
    """Add numbers.

    Args:
        numbers: The numbers to add
    """
    # Counted by bench/peers_recovery.py: the integration runs a tool as an activity.
    in_activity = activity.in_activity()
    record_call((activity.info().workflow_id or "") if in_activity else "not an activity")
    return AddResult(sum=sum(numbers))


durability: TemporalDurability[None] = TemporalDurability(event_stream_topic=TOPIC)
agent = Agent(
    "openai-chat:scripted",
    name="peer_pydantic_ai",
    instructions=INSTRUCTIONS,
    tools=[add],
    capabilities=[durability],
)


@workflow.defn(name="PeerPydanticAI")
class PeerPydanticAI:
    @workflow.init
    def __init__(self, prompt: str) -> None:
        self.events = AgentEventStream()

    @workflow.run
    async def run(self, prompt: str) -> str:
        async with self.events:
            result = await agent.run(prompt)
        return result.output


def client_plugins() -> list[SimplePlugin]:
    return [PydanticAIPlugin()]


def worker_plugins() -> list[SimplePlugin]:
    return [AgentPlugin(agent)]


def prepare_worker() -> None:
    """Before the worker polls: resolve the agent's model, importing its client (openai,
    aiohttp). Left to the worker's first model activity, that import once ran beside the
    sandbox's imports of a workflow task and left aiohttp half-imported in the process for
    good (`module aiohttp has no attribute client_exceptions`, every retry; RESULTS.md)."""
    from pydantic_ai.models import infer_model

    infer_model(agent.model if isinstance(agent.model, str) else "openai-chat:scripted")


WORKFLOWS: list[type] = [PeerPydanticAI]
ACTIVITIES: list[Callable[..., Any]] = []  # AgentPlugin registers the agent's


async def stream(
    client: Client, handle: WorkflowHandle[Any, Any], on_first_text: Callable[[], None]
) -> None:
    """Reads the run's event stream to its end, calling `on_first_text` at its first text."""
    from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta

    first = True
    async for event in durability.stream_agent_events(client, handle):
        is_text = (
            isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta)
        ) or (isinstance(event, PartStartEvent) and isinstance(event.part, TextPart))
        if first and is_text:
            first = False
            on_first_text()
    if first:
        raise RuntimeError("the run streamed no text")
