"""The steps of an agent run, as plain async functions over the domain.

Each is one Temporal activity (see activities/agents.py); the workflow only orders them.
Events go to the run's event log as they happen, so streams leave the worker live.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from loomwork.agents.definitions import AgentRegistry
from loomwork.agents.run import (
    AgentEvent,
    AgentRunRequest,
    RunFinished,
    RunOutcome,
    RunPlan,
    RunStarted,
    StepFinished,
    StepInput,
    StepOutput,
    StepRetrying,
    TextDeltaEvent,
    ToolCallEvent,
    ToolInput,
    ToolResultEvent,
    UsageEvent,
    encode_event,
)
from loomwork.agents.tools import ToolContext, ToolRegistry
from loomwork.errors import FailedPrecondition
from loomwork.llm.chat import ChatMessage, ChatModel, TextDelta, ToolCallDelta, ToolCallDone
from loomwork.memory.memory import Memory
from loomwork.memory.models import NewMessage, Role, ToolResultPart
from loomwork.streams.run_events import RunEventLog

log = logging.getLogger(__name__)


def event_log_key(tenant: str, run_id: str) -> str:
    """Runs are named per tenant: the same client run id in two tenants never meets."""
    return f"{tenant}/{run_id}"


class AgentSteps:
    def __init__(
        self,
        agents: AgentRegistry,
        tools: ToolRegistry,
        memory: Memory,
        events: RunEventLog,
        chat_model: Callable[[str], ChatModel],
        default_model: str,
    ) -> None:
        self.agents = agents
        self.tools = tools
        self.memory = memory
        self.events = events
        self.chat_model = chat_model
        self.default_model = default_model

    async def publish(self, request: AgentRunRequest, event: AgentEvent) -> None:
        terminal = isinstance(event, RunFinished)
        key = event_log_key(request.tenant, request.run_id)
        try:
            await self.events.append(key, encode_event(event), terminal=terminal)
        except FailedPrecondition:
            # A retried activity after the run already finished: nothing more to say.
            log.info("run %s already finished; dropping %s", request.run_id, event.type)

    async def start(self, request: AgentRunRequest) -> RunPlan:
        """Resolve the agent, save the input to the thread, load the conversation."""
        agent = self.agents.get(request.agent_name)
        model = agent.model or self.default_model
        max_steps = request.max_steps or agent.max_steps
        history: list[ChatMessage] = []
        if request.thread_id:
            stored = await self.memory.append_messages(
                request.tenant,
                request.thread_id,
                [
                    m.model_copy(update={"id": m.id or f"{request.run_id}.in.{i}"})
                    for i, m in enumerate(request.input_messages)
                ],
            )
            page = await self.memory.list_messages(
                request.tenant, request.thread_id, last_n=max(agent.last_messages, len(stored))
            )
            history = [ChatMessage(role=m.role, parts=m.parts) for m in page.messages]
        else:
            history = [ChatMessage(role=m.role, parts=m.parts) for m in request.input_messages]
        await self.publish(
            request,
            RunStarted(
                agent_name=agent.name,
                thread_id=request.thread_id,
                model=model,
                max_steps=max_steps,
            ),
        )
        conversation = [ChatMessage.system(agent.instructions), *history]
        return RunPlan(model=model, max_steps=max_steps, conversation=conversation)

    async def model_step(
        self, step: StepInput, attempt: int = 1, heartbeat: Callable[[], None] | None = None
    ) -> StepOutput:
        """One model call, streamed: text deltas are published as they arrive.

        `heartbeat` is called on every streamed event, so a cancelled run stops the model
        call promptly (Temporal delivers cancellation to activities through heartbeats)."""
        request = step.request
        agent = self.agents.get(request.agent_name)
        if attempt > 1:
            await self.publish(request, StepRetrying(step=step.step, attempt=attempt))

        async def on_event(event: TextDelta | ToolCallDelta | ToolCallDone) -> None:
            if heartbeat is not None:
                heartbeat()
            if isinstance(event, TextDelta):
                await self.publish(request, TextDeltaEvent(step=step.step, delta=event.delta))
            elif isinstance(event, ToolCallDone):
                await self.publish(request, ToolCallEvent(step=step.step, call=event.call))

        model = self.chat_model(step.plan_model)
        try:
            result = await model.stream(
                step.conversation, tools=self.tools.specs(agent.tool_names), on_event=on_event
            )
        finally:
            await model.aclose()
        await self.publish(request, UsageEvent(step=step.step, usage=result.usage))
        return StepOutput(
            text=result.text,
            tool_calls=result.tool_calls,
            argument_errors=result.argument_errors,
            approval_required=[
                c.tool_call_id
                for c in result.tool_calls
                if c.tool_name in agent.tool_names and self.tools.requires_approval(c.tool_name)
            ],
            finish_reason=result.finish_reason,
            usage=result.usage,
        )

    async def tool_call(self, call: ToolInput) -> ToolResultPart:
        """Run one tool call; every problem becomes an error result the model will read."""
        request = call.request
        agent = self.agents.get(request.agent_name)
        if call.rejection is not None:
            result = ToolResultPart(
                tool_call_id=call.call.tool_call_id,
                tool_name=call.call.tool_name,
                result=f"a person rejected this call: {call.rejection or 'no reason given'}",
                is_error=True,
            )
        elif call.argument_error:
            result = ToolResultPart(
                tool_call_id=call.call.tool_call_id,
                tool_name=call.call.tool_name,
                result=f"arguments are not a JSON object: {call.argument_error}",
                is_error=True,
            )
        else:
            context = ToolContext(
                tenant=request.tenant,
                run_id=request.run_id,
                tool_call_id=call.call.tool_call_id,
                thread_id=request.thread_id,
            )
            result = await self.tools.call(call.call, context, allowed=agent.tool_names)
        await self.publish(request, ToolResultEvent(step=call.step, result=result))
        return result

    async def step_finished(self, request: AgentRunRequest, step: int, output: StepOutput) -> None:
        await self.publish(
            request,
            StepFinished(step=step, finish_reason=output.finish_reason, usage=output.usage),
        )

    async def finish(self, request: AgentRunRequest, outcome: RunOutcome) -> RunOutcome:
        """Save what the run produced (idempotently, by message id) and publish the end."""
        if request.thread_id and outcome.messages:
            await self.memory.append_messages(
                request.tenant,
                request.thread_id,
                [
                    NewMessage(id=f"{request.run_id}.out.{i}", role=m.role, parts=m.parts)
                    for i, m in enumerate(outcome.messages)
                    if m.role in (Role.ASSISTANT, Role.TOOL) and m.parts
                ],
            )
        await self.publish(request, RunFinished(outcome=outcome))
        return outcome
