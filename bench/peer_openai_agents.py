"""The OpenAI Agents SDK peer of bench/peers.py: an agent with the `add` tool, made durable by
Temporal's integration (`temporalio.openai_agents`, the `OpenAIAgentsPlugin` on client and
worker) as its docs recommend: the model call an activity, the tool an activity
(`activity_as_tool`), streaming through `Runner.run_streamed` with the model activity
publishing to a Workflow Stream topic that a client subscribes to.

The model is the scripted one at OPENAI_BASE_URL over chat completions (the SDK's default is
the Responses API, which the scripted model does not serve). Needs the `bench` extra.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.workflow_streams import WorkflowStream, WorkflowStreamClient
from temporalio.plugin import SimplePlugin
from tool_calls_log import record_call

with workflow.unsafe.imports_passed_through():
    from agents import Agent, Runner
    from agents.models.openai_provider import OpenAIProvider
    from temporalio.openai_agents import ModelActivityParameters, OpenAIAgentsPlugin
    from temporalio.openai_agents import workflow as agents_workflow

TOPIC = "agent-events"
INSTRUCTIONS = (
    "You are a concise, helpful assistant. Use the tools for arithmetic and counting "
    "instead of guessing."
)


@activity.defn
async def add(numbers: list[float]) -> dict[str, float]:
    """Add numbers.

    Args:
        numbers: The numbers to add
    """
    record_call(activity.info().workflow_id or "")  # counted by bench/peers_recovery.py
    return {"sum": sum(numbers)}


@workflow.defn(name="PeerOpenAIAgents")
class PeerOpenAIAgents:
    @workflow.init
    def __init__(self, prompt: str) -> None:
        self.stream = WorkflowStream()

    @workflow.run
    async def run(self, prompt: str) -> str:
        agent: Agent[None] = Agent(
            name="peer_openai_agents",
            instructions=INSTRUCTIONS,
            model="scripted",
            tools=[
                agents_workflow.activity_as_tool(add, start_to_close_timeout=timedelta(seconds=30))
            ],
        )
        result = Runner.run_streamed(agent, prompt)
        async for _ in result.stream_events():
            pass
        return str(result.final_output)


def _plugin() -> OpenAIAgentsPlugin:
    return OpenAIAgentsPlugin(
        model_params=ModelActivityParameters(
            # Temporal's streaming sample (temporalio/samples-python,
            # openai_agents/streaming/run_worker.py); the integration's docs: a heartbeat
            # timeout below start_to_close when streaming (its default is none).
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=10),
            streaming_topic=TOPIC,
        ),
        model_provider=OpenAIProvider(
            base_url=os.environ.get("OPENAI_BASE_URL"), api_key="x", use_responses=False
        ),
    )


def client_plugins() -> list[SimplePlugin]:
    return [_plugin()]


def worker_plugins() -> list[SimplePlugin]:
    return []  # the client's plugins carry over to workers built on that client


WORKFLOWS: list[type] = [PeerOpenAIAgents]
ACTIVITIES: list[Callable[..., Any]] = [add]


async def stream(
    client: Client, handle: WorkflowHandle[Any, Any], on_first_text: Callable[[], None]
) -> None:
    """Reads the run's stream topic to its end, calling `on_first_text` at its first text."""
    first = True
    subscription = WorkflowStreamClient(handle, client=client).subscribe([TOPIC])
    async for item in subscription:
        data = item.data
        kind = data.get("type") if isinstance(data, dict) else getattr(data, "type", None)
        if first and kind == "response.output_text.delta":
            first = False
            on_first_text()
    if first:
        raise RuntimeError("the run streamed no text")
