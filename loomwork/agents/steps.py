"""The steps of an agent run, as plain async functions over the domain.

Each is one Temporal activity (see activities/agents.py); the workflow only orders them.
Events go to the run's event log as they happen, so streams leave the worker live.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from loomwork.agents.definitions import AgentDefinition, AgentRegistry
from loomwork.agents.memory_tool import UPDATE_WORKING_MEMORY
from loomwork.agents.run import (
    AgentEvent,
    AgentRunRequest,
    ContextUsage,
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
from loomwork.memory.context import assemble_context
from loomwork.memory.memory import Memory
from loomwork.memory.models import (
    NewMessage,
    RecallHit,
    RecallQuery,
    RecallScope,
    Role,
    ToolResultPart,
)
from loomwork.memory.recall import MessageRecall
from loomwork.memory.settings import MemorySettings
from loomwork.memory.tokens import count_context_tokens
from loomwork.memory.working import WorkingMemoryStore
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
        recall: MessageRecall,
        working_memory: WorkingMemoryStore,
        events: RunEventLog,
        chat_model: Callable[[str], ChatModel],
        default_model: str,
    ) -> None:
        self.agents = agents
        self.tools = tools
        self.memory = memory
        self.recall = recall
        self.working_memory = working_memory
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
        """Resolve the agent, save the input to the thread, assemble the context from memory:
        working memory, recalled messages and recent ones, trimmed to the token limit."""
        agent = self.agents.get(request.agent_name)
        model = agent.model or self.default_model
        max_steps = request.max_steps or agent.max_steps
        await self.publish(
            request,
            RunStarted(
                agent_name=agent.name,
                thread_id=request.thread_id,
                model=model,
                max_steps=max_steps,
            ),
        )
        if not request.thread_id:  # stateless: no memory read or written
            conversation = [
                ChatMessage.system(agent.instructions),
                *(ChatMessage(role=m.role, parts=m.parts) for m in request.input_messages),
            ]
            usage = ContextUsage(tokens_in_context=count_context_tokens(conversation))
            return RunPlan(
                model=model, max_steps=max_steps, conversation=conversation, context=usage
            )

        settings = request.memory or agent.memory
        stored = await self.memory.append_messages(
            request.tenant,
            request.thread_id,
            [
                m.model_copy(update={"id": m.id or f"{request.run_id}.in.{i}"})
                for i, m in enumerate(request.input_messages)
            ],
        )
        page = await self.memory.list_messages(
            request.tenant, request.thread_id, last_n=max(settings.last_messages, len(stored))
        )
        recalled: list[RecallHit] = []
        query = "\n".join(m.text for m in stored if m.role is Role.USER).strip()
        if settings.semantic_recall is not None and query:
            recall = settings.semantic_recall
            by_resource = recall.scope is RecallScope.RESOURCE and bool(request.resource_id)
            recalled = await self.recall.search(
                request.tenant,
                RecallQuery(
                    query=query,
                    scope=RecallScope.RESOURCE if by_resource else RecallScope.THREAD,
                    thread_id=request.thread_id,
                    resource_id=request.resource_id,
                    top_k=recall.top_k,
                    message_range=recall.message_range,
                    min_score=recall.min_score,
                ),
            )
        # Indexed after the search, so the input does not recall itself.
        await self.recall.index_messages(request.tenant, [m.id for m in stored])
        system, working = agent.instructions, None
        if settings.working_memory is not None:
            system, working = await self._working_memory(request, agent.instructions, settings)
        context = assemble_context(
            system=system,
            working_memory=working,
            recalled=recalled,
            recent=page.messages,
            token_limit=settings.context_token_limit,
        )
        conversation = [ChatMessage(role=m.role, parts=m.parts) for m in context.messages]
        usage = ContextUsage(
            tokens_in_context=context.tokens_in_context,
            messages_recalled=context.messages_recalled,
            messages_trimmed=context.messages_trimmed,
            tokens_trimmed=context.tokens_trimmed,
        )
        return RunPlan(model=model, max_steps=max_steps, conversation=conversation, context=usage)

    async def _working_memory(
        self, request: AgentRunRequest, instructions: str, settings: MemorySettings
    ) -> tuple[str, str]:
        wm = settings.working_memory
        assert wm is not None
        by_resource = wm.scope is RecallScope.RESOURCE and bool(request.resource_id)
        current = await self.working_memory.get(
            request.tenant,
            RecallScope.RESOURCE if by_resource else RecallScope.THREAD,
            thread_id=request.thread_id,
            resource_id=request.resource_id,
        )
        if wm.template is not None:
            text = current.markdown or wm.template
            how = "Keep it current with the update_working_memory tool (send `markdown`)."
        else:
            text = json.dumps(current.data or {}, ensure_ascii=False)
            how = (
                "Keep it current with the update_working_memory tool (send `data` matching "
                f"this JSON schema: {json.dumps(wm.json_schema)})."
            )
        return f"{instructions}\n\n{how}", text

    def tool_names(self, agent: AgentDefinition, request: AgentRunRequest) -> list[str]:
        """The agent's tools, plus the working memory tool when the run keeps working memory."""
        names = list(agent.tool_names)
        memory = request.memory or agent.memory
        if memory.working_memory is not None and UPDATE_WORKING_MEMORY not in names:
            names.append(UPDATE_WORKING_MEMORY)
        return names

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
                step.conversation,
                tools=self.tools.specs(self.tool_names(agent, request)),
                on_event=on_event,
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
                if c.tool_name in self.tool_names(agent, request)
                and self.tools.requires_approval(c.tool_name)
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
            wm = (request.memory or agent.memory).working_memory
            context = ToolContext(
                tenant=request.tenant,
                run_id=request.run_id,
                tool_call_id=call.call.tool_call_id,
                thread_id=request.thread_id,
                resource_id=request.resource_id,
                memory_scope=wm.scope.value if wm is not None else "thread",
            )
            result = await self.tools.call(
                call.call, context, allowed=self.tool_names(agent, request)
            )
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
            saved = await self.memory.append_messages(
                request.tenant,
                request.thread_id,
                [
                    NewMessage(id=f"{request.run_id}.out.{i}", role=m.role, parts=m.parts)
                    for i, m in enumerate(outcome.messages)
                    if m.role in (Role.ASSISTANT, Role.TOOL) and m.parts
                ],
            )
            await self.recall.index_messages(request.tenant, [m.id for m in saved])
        await self.publish(request, RunFinished(outcome=outcome))
        return outcome
