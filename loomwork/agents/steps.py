"""The steps of an agent run, as plain async functions over the domain.

Each is one Temporal activity (see activities/agents.py); the workflow only orders them.
Events go to the run's event log as they happen, so streams leave the worker live.
The start step resolves the agent by tenant and name (code or stored) and the run keeps
that definition, with the call's overrides applied, for all its later steps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from loomwork.agents import sub_agents
from loomwork.agents.batching import DeltaBatcher
from loomwork.agents.catalog import AgentCatalog
from loomwork.agents.definitions import AgentDefinition
from loomwork.agents.events import (
    AgentEvent,
    ObjectFinalEvent,
    ObjectPartialEvent,
    RunFinished,
    StepFinished,
    StepRetrying,
    TextDeltaEvent,
    ToolCallEvent,
    ToolResultEvent,
    UsageEvent,
    encode_event,
    once_key,
)
from loomwork.agents.guarded_step import blocked_step, step_guardrails
from loomwork.agents.model_fallback import next_model
from loomwork.agents.output_schema import parse_final, partial_object
from loomwork.agents.payloads import (
    FirstStep,
    HandoffInput,
    HandoffOutcome,
    RunPlan,
    StepInput,
    StepOutput,
    ToolInput,
)
from loomwork.agents.run_models import AgentRunRequest, ContextUsage, RunOutcome, Violation
from loomwork.agents.run_start import announce_run, effective_agent, event_log_key, tool_names
from loomwork.agents.speculation import (
    SpeculativeSteps,
    drafting,
    until_adopted,
    until_confirmed,
)
from loomwork.agents.thread_context import thread_context
from loomwork.agents.tool_calls import call_mcp_tool, call_worker_tool, invalid_client_calls
from loomwork.agents.tool_offer import offered_tools
from loomwork.guardrails.custom import ProcessorRegistry
from loomwork.guardrails.processors import Tripped
from loomwork.json_schema import validate_object
from loomwork.llm.chat import (
    ChatMessage,
    ChatModel,
    ChatResult,
    ChatUsage,
    TextDelta,
    ToolCallDelta,
    ToolCallDone,
    json_schema_format,
)
from loomwork.llm.errors import ModelError
from loomwork.memory.recall import MessageRecall
from loomwork.memory.threads import Memory
from loomwork.memory.tokens import count_context_tokens
from loomwork.memory.working import WorkingMemoryStore
from loomwork.messages import NewMessage, Role, ToolResultPart
from loomwork.retries import RetryNotice
from loomwork.streams.run_events import RunEventLog
from loomwork.tools import ToolRegistry
from loomwork.tools.mcp_source import McpTools
from loomwork.tools.routes import earliest
from loomwork.tools.tool_context import OAuthAccess
from loomwork.usage.ledger import ModelCall, UsageLedger, step_call

log = logging.getLogger(__name__)


FIRST_STEP = "step:1"  # the draft a speculative first step streams as


class AgentSteps:
    def __init__(
        self,
        agents: AgentCatalog,
        tools: ToolRegistry,
        memory: Memory,
        recall: MessageRecall,
        working_memory: WorkingMemoryStore,
        events: RunEventLog,
        chat_model: Callable[[str], ChatModel],
        default_model: str,
        speculation: SpeculativeSteps[FirstStep] | None = None,
        oauth: OAuthAccess | None = None,
        mcp: McpTools | None = None,
        max_agent_depth: int = sub_agents.DEFAULT_MAX_DEPTH,
        usage: UsageLedger | None = None,
        processors: ProcessorRegistry | None = None,
    ) -> None:
        self.agents = agents
        self.tools = tools
        self.memory = memory
        self.recall = recall
        self.working_memory = working_memory
        self.events = events
        self.chat_model = chat_model
        self.default_model = default_model
        self.speculation = speculation
        self.oauth = oauth  # the tenant's OAuth connections, for tools (ctx.oauth)
        self.mcp = mcp  # the MCP servers' tools (`mcp:<server>/<tool>` names)
        self.max_agent_depth = max_agent_depth  # how deep sub-agent runs nest
        self.usage = usage  # where each model step's tokens are recorded
        self.processors = processors  # custom guardrail processors (`@processor`)

    async def publish(
        self, request: AgentRunRequest, event: AgentEvent, *, patience: float | None = None
    ) -> int:
        """Append one event; its id (for a retried terminal event, or one said once per run
        (`once_key`): the one stored first). A sub-agent run's go to its top-level run's log,
        marked with its path; its end does not end that log. `patience`: how long to wait out
        Redis (None: the event log's own)."""
        key = event_log_key(request.tenant, request.log_run_id)
        if request.parents:
            event = event.model_copy(update={"run_path": request.run_path})
        if isinstance(event, TextDeltaEvent | ObjectPartialEvent):
            # A speculative step streams once its run exists, as a draft until its activity
            # owns it: an activity that runs the step itself takes the draft over first.
            await until_confirmed()
            if drafting():
                draft = FIRST_STEP + request.run_path  # a sub-run's: its own, in one log
                return await self.events.publish(key, encode_event(event), draft=draft)
        await until_adopted()  # anything else waits until the step's activity owns it
        terminal = isinstance(event, RunFinished) and not request.parents
        return await self.events.publish(
            key, encode_event(event), terminal=terminal, once=once_key(event), patience=patience
        )

    async def retrying(
        self, request: AgentRunRequest, step: StepInput | int, notice: RetryNotice
    ) -> None:
        """Say, as a step's attempt fails, that it is tried again: what failed and when
        (`step`: the model step's input, whose pending events go first, or 1 for the run's
        first activity). One try: the failure may be Redis's, and the next attempt then
        says the step is retried, without the cause."""
        events: list[AgentEvent] = []
        if isinstance(step, StepInput):
            events += step.tool_results
            events += [step.previous_step] if step.previous_step else []
        number = step if isinstance(step, int) else step.step
        for event in [*events, StepRetrying.announced(number, notice)]:
            await self.publish(request, event, patience=0)

    async def start(self, request: AgentRunRequest) -> RunPlan:
        """Resolve the agent, save the input to the thread, assemble the context from memory:
        working memory, recalled messages and recent ones, trimmed to the token limit."""
        agent = effective_agent(await self.agents.get(request.tenant, request.agent_name), request)
        # A first step that fell back starts over on the next model (agents/model_fallback.py).
        model = request.fallback_model or agent.model or self.default_model
        if not request.announced:  # started by a workflow, not the service
            await announce_run(self.events, request, agent, model, patience=None)

        def plan(conversation: list[ChatMessage], usage: ContextUsage) -> RunPlan:
            return RunPlan(
                agent=agent,
                model=model,
                max_steps=agent.max_steps,
                conversation=conversation,
                context=usage,
            )

        if request.fork is not None:  # a fork: the original's conversation at the fork point
            await self._reused_steps(request)
            conversation = list(request.fork.conversation)
            return plan(
                conversation, ContextUsage(tokens_in_context=count_context_tokens(conversation))
            )
        if not request.thread_id:  # stateless: no memory read or written
            conversation = [
                ChatMessage.system(agent.instructions),
                *(ChatMessage(role=m.role, parts=m.parts) for m in request.input_messages),
            ]
            return plan(
                conversation, ContextUsage(tokens_in_context=count_context_tokens(conversation))
            )

        conversation, usage = await thread_context(
            self.memory, self.recall, self.working_memory, request, agent
        )
        return plan(conversation, usage)

    async def _reused_steps(self, request: AgentRunRequest) -> None:
        """A fork's steps before its fork point, published as the original recorded them
        (marked reused, no usage: nothing was paid for them again); once each."""
        assert request.fork is not None
        for reused in request.fork.reused:
            await self.publish(
                request,
                StepFinished(
                    step=reused.step,
                    finish_reason=reused.finish_reason,
                    usage=ChatUsage(),
                    messages=reused.messages,
                    reused=True,
                ),
            )

    def speculate(self, request: AgentRunRequest) -> bool:
        """Begin the first step of a run that is being started, for its first activity to
        adopt (see loomwork.agents.speculation); False if nothing was begun."""
        if self.speculation is None:
            return False
        key = event_log_key(request.tenant, request.run_id)
        begun = self.speculation.begin(key, lambda: self._start_and_step(request))
        if begun and request.parents:  # a sub-run: the caller's recorded step starts it
            self.speculation.confirm(key)
        return begun

    async def start_and_step(self, request: AgentRunRequest, attempt: int = 1) -> FirstStep:
        """`start`, then the first model step in the same activity: one Temporal round trip
        less before the first token. Both are safe to repeat (message ids, event guards).
        The run's first attempt takes over the step if this process began it already."""
        key = event_log_key(request.tenant, request.run_id)
        if self.speculation is not None:
            if attempt == 1:
                begun = self.speculation.adopt(key)
                if begun is not None:
                    return await begun
            else:
                self.speculation.abandon(key)
        # Begun by the service, but not taken over here: fence off the step's draft (it may
        # run in another process), and have readers discard what it streamed (a retry says
        # so itself, in model_step).
        # A step rerouted from the worker chosen for it may have streamed there before that
        # worker was lost: readers discard it as well (loomwork.agents.first_step_routing).
        log_key, draft = event_log_key(request.tenant, request.log_run_id), FIRST_STEP
        took_draft = request.first_step_begun and await self.events.take_draft(
            log_key, draft + request.run_path
        )
        if attempt == 1 and (took_draft or request.first_step_rerouted):
            await self.publish(request, StepRetrying(step=request.first_step, attempt=1))
        return await self._start_and_step(request, attempt)

    async def _start_and_step(self, request: AgentRunRequest, attempt: int = 1) -> FirstStep:
        plan = await self.start(request)
        output = await self.model_step(
            StepInput(
                request=request,
                agent=plan.agent,
                plan_model=plan.model,
                step=request.first_step,
                conversation=plan.conversation,
            ),
            attempt,
        )
        return FirstStep(plan=plan, output=output)

    async def model_step(self, step: StepInput, attempt: int = 1) -> StepOutput:
        """One model call, streamed: text deltas (or partial objects, for an agent with an
        output schema) are published as they arrive. What the previous step left to publish
        goes out while the call starts; this step's own events wait for it."""
        request, agent = step.request, step.agent

        async def announce() -> None:
            for published in step.tool_results:  # each once, like previous_step
                await self.publish(request, published)
            if step.previous_step is not None:  # once: a retry publishes it if still missing
                await self.publish(request, step.previous_step)
            if attempt > 1:  # once: the failed attempt may have said it, with its cause
                await self.publish(request, StepRetrying.lost(step.step, attempt))

        schema = agent.output_schema
        written: list[str] = []
        last_partial: dict[str, object] | None = None

        # Guardrail processors (loomwork.guardrails): the input before the call, the text as
        # it streams (held back by the guard's window), the answer and the tool calls.
        async def record_usage(call_key: str, model: str, usage: ChatUsage) -> None:
            if self.usage is not None:  # once per call: a retry rewrites the same row
                await self.usage.record(
                    ModelCall(
                        tenant=request.tenant,
                        run_id=request.run_id,
                        call_key=call_key,
                        run_kind="agent",
                        agent_name=agent.name,
                        model=model,
                        usage=usage,
                        attempt=attempt,
                    )
                )

        async def guard_usage(name: str, model: str, usage: ChatUsage) -> None:
            # A model-based check's call: a row of its own beside the step's.
            await record_usage(f"{step_call(step.step)}:{name}", model, usage)

        rails, ctx = step_guardrails(
            agent,
            request,
            step.step,
            self.processors,
            model=step.plan_model,
            chat_model=self.chat_model,
            record_usage=guard_usage,
        )
        guard = rails.output_guard(ctx)
        calls = 0

        async def publish_text(text: str) -> None:
            await self.publish(request, TextDeltaEvent(step=step.step, delta=text))

        deltas = DeltaBatcher(publish_text)

        async def on_event(event: TextDelta | ToolCallDelta | ToolCallDone) -> None:
            nonlocal last_partial, calls
            await announced
            if isinstance(event, TextDelta):
                if schema is None:
                    released = await guard.add(event.delta)
                    if released:
                        await deltas.add(released)
                    return
                written.append(event.delta)
                if guard.active:  # a structured answer is checked whole, at its end
                    return
                partial = partial_object("".join(written))
                if partial is not None and partial != last_partial:
                    last_partial = partial
                    await self.publish(request, ObjectPartialEvent(step=step.step, object=partial))
            elif isinstance(event, ToolCallDone):
                calls += 1
                rails.check_tool_calls(step.conversation, calls)
                if schema is None and (released := await guard.settle()):
                    await deltas.add(released)
                await deltas.flush()
                await self.publish(request, ToolCallEvent(step=step.step, call=event.call))

        names = tool_names(agent, request)
        agents = self._agents_of(request.tenant)
        specs, routes = await offered_tools(self.tools, self.mcp, agents, request, agent, names)
        model = self.chat_model(step.plan_model)
        settings = agent.model_settings
        announced = asyncio.ensure_future(announce())
        answered: ChatResult | None = None  # the model's answer, once it is complete
        try:
            try:
                conversation = await rails.check_input(step.conversation, ctx)
                result = answered = await model.stream(
                    conversation,
                    tools=specs,
                    response_format=json_schema_format(schema, name=agent.name) if schema else None,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                    max_tokens=settings.max_output_tokens,
                    on_event=on_event,
                )
                await announced
                rest = await guard.finish(result.text)
                if schema is None and rest:
                    await deltas.add(rest)
                if guard.final_text != result.text:  # rewritten: the answer as processed
                    result = result.model_copy(update={"text": guard.final_text})
                await deltas.flush()
            except Tripped as tripped:  # nothing more of the step goes out
                await announced
                await deltas.flush()
                if answered is not None:  # tripped by a check of the whole answer: it was paid
                    await record_usage(step_call(step.step), step.plan_model, answered.usage)
                blocked, event = blocked_step(step.step, tripped)
                await self.publish(request, event)
                return blocked
        except ModelError as error:
            if error.retryable:  # once its retries run out, the step goes on with this one
                error.fallback_model = next_model(agent, step.plan_model, self.default_model)
            raise
        finally:
            announced.cancel()  # the call failed first: a retry announces again (once)
            await deltas.cancel()
            await model.aclose()
        await self.publish(request, UsageEvent(step=step.step, usage=result.usage))
        await record_usage(step_call(step.step), step.plan_model, result.usage)
        approval_required = [
            c.tool_call_id
            for c in result.tool_calls
            if c.tool_name in names and self.tools.requires_approval(c.tool_name)
        ]
        tool_routes = {
            c.tool_call_id: routes.get(c.tool_name) or self.tools.route(c.tool_name)
            for c in result.tool_calls
        }
        for call_id in approval_required:  # the tool's or the agent's limit, whichever is first
            route = tool_routes[call_id]
            limit = earliest(route.approval_timeout, agent.approval_timeout)
            tool_routes[call_id] = route.model_copy(update={"approval_timeout": limit})
        output = StepOutput(
            text=result.text,
            tool_calls=result.tool_calls,
            argument_errors=result.argument_errors,
            approval_required=approval_required,
            finish_reason=result.finish_reason,
            usage=result.usage,
            model=step.plan_model,
            tool_routes=tool_routes,
        )
        invalid_client_calls(request, output)
        output.invalid_calls.update(sub_agents.refused_calls(request, output, self.max_agent_depth))
        if output.tool_calls:
            sub_agents.begin_sub_runs(request, output, self.speculate)  # their first steps, at once
            return output  # the step finishes once its tools ran
        if schema is not None:
            value, problems = parse_final(result.text)
            if not problems:
                problems = validate_object(schema, value)
            output.object_violations = [
                Violation(field=p.field, description=p.description) for p in problems
            ]
            if not problems and isinstance(value, dict):
                output.object = value
                await self.publish(request, ObjectFinalEvent(step=step.step, object=value))
        await self.publish(request, self.step_finished(step.step, output))
        return output

    def _agents_of(self, tenant: str) -> sub_agents.AgentLookup:
        return lambda name: self.agents.find(tenant, name)

    async def handoff(self, handoff: HandoffInput) -> HandoffOutcome:
        """Hand the run to another agent (its definition with the call's overrides applied)."""

        async def resolve(name: str) -> AgentDefinition | None:
            found = await self.agents.find(handoff.request.tenant, name)
            return effective_agent(found, handoff.request) if found is not None else None

        return await sub_agents.hand_off(handoff, resolve, self.publish, self.default_model)

    @staticmethod
    def step_finished(step: int, output: StepOutput) -> StepFinished:
        """The end of a step that called no tools: its one message is the model's answer."""
        finish, usage = output.finish_reason, output.usage
        return StepFinished(
            step=step,
            finish_reason=finish,
            usage=usage,
            model=output.model,
            messages=[output.message()],
        )

    async def tool_call(self, call: ToolInput, *, attempt: int = 1) -> ToolResultPart:
        """Run one tool call; every problem becomes an error result the model will read. A
        tool with a retry policy that raises is retried (ToolFailed) until its last attempt."""
        result = await call_worker_tool(self.tools, self.oauth, call, attempt)
        if call.publish_result:
            await self.publish(call.request, ToolResultEvent(step=call.step, result=result))
        return result

    async def mcp_tool_call(self, call: ToolInput, *, attempt: int = 1) -> ToolResultPart:
        """Call an MCP server's tool (the call's route names it); every problem becomes an
        error result, except a server that cannot be reached, which raises Unavailable
        (retried) until the last attempt."""
        result = await call_mcp_tool(self.mcp, call, attempt)
        if call.publish_result:
            await self.publish(call.request, ToolResultEvent(step=call.step, result=result))
        return result

    async def finish(
        self,
        request: AgentRunRequest,
        outcome: RunOutcome,
        *,
        last_step: StepFinished | None = None,
        tool_results: Sequence[ToolResultEvent] = (),
        read_only: bool = False,
    ) -> RunOutcome:
        """Save what the run produced (idempotently, by message id) and publish the end."""
        for published in tool_results:
            await self.publish(request, published)
        if last_step is not None:
            await self.publish(request, last_step)
        if request.thread_id and outcome.messages and not read_only:
            saved = await self.memory.append_messages(
                request.tenant,
                request.thread_id,
                [
                    NewMessage(id=f"{request.run_id}.out.{i}", role=m.role, parts=m.parts)
                    for i, m in enumerate(outcome.messages)
                    if m.role in (Role.ASSISTANT, Role.TOOL) and m.parts
                ],
            )
            await self.recall.index(request.tenant, request.thread_id, saved)
        # Kept with the result: once the run's events expire, WatchRun rebuilds this one.
        outcome.terminal_event_id = await self.publish(request, RunFinished(outcome=outcome))
        return outcome
