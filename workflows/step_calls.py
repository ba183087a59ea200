"""The tool calls of an agent run's step (workflows/agent_run.py), run at once, and what
they wait on from outside: approvals of the calls that need one (decided by the
`resume_run` Update or the `resume` signal; rejected once their approval timeout passes)
and the client tool calls handed to the caller (answered by the `submit_tool_results`
Update or the `tool_results` signal; an error result once their timeout passes). Calls of
agents and handoffs go to the run's SubRuns, the worker's and MCP tools to their activity."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from temporalio import workflow

from workflows.sub_agents import SUB_RUN_KINDS, SubRuns
from workflows.tool_calls import run_tool_call
from workflows.waits import wait_until

with workflow.unsafe.imports_passed_through():
    from loomwork.agents.events import (
        ApprovalRequested,
        ApprovalResolved,
        ToolCallRequested,
        ToolResultEvent,
    )
    from loomwork.agents.payloads import RunPlan, StepOutput, ToolInput
    from loomwork.agents.run_models import (
        AgentRunRequest,
        Decision,
        PendingApproval,
        PendingToolCall,
    )
    from loomwork.messages import ToolCallPart, ToolResultPart
    from loomwork.tools.client_tools import ClientToolResult
    from loomwork.tools.registry import error_result
    from loomwork.tools.routes import ToolRoute

# Publishes an event of the run (through its bookkeeping activity).
Publish = Callable[[AgentRunRequest, object], Awaitable[None]]


def _is_client(output: StepOutput, call: ToolCallPart) -> bool:
    """A call of a client tool: the caller runs it, not a worker."""
    route = output.tool_routes.get(call.tool_call_id)
    return route is not None and route.kind == "client"


class StepCalls:
    """The run's pending approvals and client tool calls, the decisions and results given
    for them, and the tool results left to the run's next activity to publish. `settle`
    is called whenever whether the run waits may have changed, `show` when only what it
    waits on did (the workflow's phase and memo follow)."""

    def __init__(
        self, subs: SubRuns, publish: Publish, settle: Callable[[], None], show: Callable[[], None]
    ) -> None:
        self.pending: dict[str, PendingApproval] = {}
        self.decisions: dict[str, Decision] = {}
        self.awaiting_approvals = False  # the step's approvals are not all decided yet
        self.expired: set[str] = set()  # approvals rejected because their timeout passed
        # Client tool calls handed to the caller and not taken back yet, and their results.
        self.client_calls: dict[str, PendingToolCall] = {}
        self.client_results: dict[str, ClientToolResult] = {}
        # tool_result events left to the next activity to publish (StepInput.tool_results).
        self.unpublished: list[ToolResultEvent] = []
        self._subs = subs  # agents called as tools, handoffs (workflows/sub_agents.py)
        self._publish = publish
        self._settle = settle
        self._show = show

    # -- what the run waits on

    def undecided(self) -> list[PendingApproval]:
        """The approvals still waiting for a decision, this run's and its sub-runs'."""
        own = [p for p in self.pending.values() if p.tool_call_id not in self.decisions]
        return own + self._subs.approvals()

    def unanswered(self) -> list[PendingToolCall]:
        """The client tool calls still waiting for a result, this run's and its sub-runs'."""
        own = [c for c in self.client_calls.values() if c.tool_call_id not in self.client_results]
        return own + self._subs.tool_calls()

    def decide(self, decisions: Iterable[Decision], *, keep_first: bool = False) -> None:
        """Record the decisions on this run's pending calls (`keep_first`: not over one
        recorded already); others are not this run's to record."""
        for decision in decisions:
            if decision.tool_call_id in self.pending:
                if keep_first:
                    self.decisions.setdefault(decision.tool_call_id, decision)
                else:
                    self.decisions[decision.tool_call_id] = decision

    def answer(self, results: Iterable[ClientToolResult], *, keep_first: bool = False) -> None:
        """Record the results of this run's client tool calls (`keep_first`: not over one
        recorded already); others are not this run's to record."""
        for result in results:
            if result.tool_call_id in self.client_calls:
                if keep_first:
                    self.client_results.setdefault(result.tool_call_id, result)
                else:
                    self.client_results[result.tool_call_id] = result

    def awaits_decision(self, call_id: str) -> bool:
        return call_id in self.pending and call_id not in self.decisions

    def awaits_result(self, call_id: str) -> bool:
        return call_id in self.client_calls and call_id not in self.client_results

    def decisions_taken(self) -> bool:
        """The step no longer waits for the decisions given (or still waits for others)."""
        return not self.awaiting_approvals or any(i not in self.decisions for i in self.pending)

    def results_taken(self) -> bool:
        """Submitted results were taken in: the step still waits for approvals, or for
        other results (else the run's phase says when it moved on)."""
        waiting = any(i not in self.client_results for i in self.client_calls)
        return self.awaiting_approvals or waiting

    def end(self) -> None:
        """The run has ended: it waits on nothing any more."""
        self.pending.clear()
        self.awaiting_approvals = False
        self.client_calls.clear()
        self.client_results.clear()

    # -- the calls

    async def run(
        self, request: AgentRunRequest, plan: RunPlan, step: int, output: StepOutput
    ) -> list[ToolResultPart]:
        """Run the step's tool calls at once, once those that need approval are decided and
        with client tool calls handed to the caller; their results, in the calls' order."""
        needs_approval = [
            c for c in output.tool_calls if c.tool_call_id in output.approval_required
        ]
        for call in needs_approval:
            route = output.tool_routes.get(call.tool_call_id)
            limit = route.approval_timeout if route is not None else None
            self.pending[call.tool_call_id] = PendingApproval(
                tool_call_id=call.tool_call_id,
                tool_name=call.tool_name,
                arguments=dict(call.arguments),
                step=step,
                request_time=workflow.now(),
                expire_time=workflow.now() + limit if limit is not None else None,
            )
        # Client tool calls whose arguments fit their schema go to the caller.
        handed = [
            c
            for c in output.tool_calls
            if _is_client(output, c) and c.tool_call_id not in output.invalid_calls
        ]
        for call in handed:
            timeout = output.tool_routes[call.tool_call_id].timeout
            self.client_calls[call.tool_call_id] = PendingToolCall(
                tool_call_id=call.tool_call_id,
                tool_name=call.tool_name,
                arguments=dict(call.arguments),
                step=step,
                request_time=workflow.now(),
                expire_time=workflow.now() + timeout if timeout is not None else None,
            )
        decisions: dict[str, Decision] = {}
        if needs_approval or handed:
            # Waiting (with every pending call known) before the first event says so; a
            # sub-agent run's caller too.
            self.awaiting_approvals = bool(needs_approval)
            self._settle()
            await self._subs.caller_told()
            for call in needs_approval:
                approval = self.pending[call.tool_call_id]
                await self._publish(request, ApprovalRequested(step=step, approval=approval))
            for call in handed:
                pending = self.client_calls[call.tool_call_id]
                await self._publish(
                    request, ToolCallRequested(time=workflow.now(), step=step, call=pending)
                )
        if needs_approval:
            await self._decided([c.tool_call_id for c in needs_approval])
            self.awaiting_approvals = False
            self._settle()
            for call in needs_approval:
                decision = self.decisions[call.tool_call_id]
                decisions[call.tool_call_id] = decision
                del self.pending[call.tool_call_id]
                edited = decision.approve and decision.edited_arguments is not None
                await self._publish(
                    request,
                    ApprovalResolved(
                        step=step,
                        tool_call_id=call.tool_call_id,
                        tool_name=call.tool_name,
                        approved=decision.approve,
                        reason=decision.reason,
                        arguments=dict(
                            decision.edited_arguments
                            if edited and decision.edited_arguments
                            else call.arguments
                        ),
                        arguments_edited=edited,
                    ),
                )

        alone = len(output.tool_calls) == 1  # its result goes out with the next activity

        def tool_input(call: ToolCallPart) -> ToolInput:
            decision = decisions.get(call.tool_call_id)
            if decision is not None and decision.approve and decision.edited_arguments is not None:
                call = call.model_copy(update={"arguments": dict(decision.edited_arguments)})
            return ToolInput(
                request=request,
                agent=plan.agent,
                step=step,
                call=call,
                argument_error=output.argument_errors.get(call.tool_call_id),
                rejection=(decision.reason or "") if decision and not decision.approve else None,
                route=output.tool_routes.get(call.tool_call_id),
                publish_result=not alone,
            )

        def run(call: ToolCallPart) -> Awaitable[ToolResultPart]:
            if call.tool_call_id in self.expired:  # no decision in time: it does not run
                reason = decisions[call.tool_call_id].reason
                return self._tool_result(
                    request, step, error_result(call, f"{call.tool_name} did not run: {reason}")
                )
            invalid = output.invalid_calls.get(call.tool_call_id)
            if invalid is not None:  # back to the model, never to the caller or an agent
                return self._tool_result(request, step, error_result(call, invalid))
            route = output.tool_routes.get(call.tool_call_id) or ToolRoute()
            if route.kind in SUB_RUN_KINDS:
                return self._sub_run_call(request, plan, step, call, route, alone)
            if route.kind != "client":
                return self._tool_call(tool_input(call))
            return self._client_call(request, step, call)

        return list(await asyncio.gather(*(run(c) for c in output.tool_calls)))

    async def _decided(self, ids: list[str]) -> None:
        """Wait until each of these approvals is decided; one whose approval timeout passes
        first is rejected ("no decision within ...")."""
        while undecided := [self.pending[i] for i in ids if i not in self.decisions]:
            deadlines = [p.expire_time for p in undecided if p.expire_time is not None]
            first = min(deadlines, default=None)
            await wait_until(
                lambda: any(p.tool_call_id in self.decisions for p in undecided),
                first,
                summary="approval timeout",
            )
            for pending in undecided:
                expire_time = pending.expire_time
                if pending.tool_call_id in self.decisions or expire_time is None:
                    continue
                if expire_time <= workflow.now():
                    waited = expire_time - pending.request_time
                    self.decisions[pending.tool_call_id] = Decision(
                        tool_call_id=pending.tool_call_id,
                        approve=False,
                        reason=f"no decision within {waited}",
                    )
                    self.expired.add(pending.tool_call_id)
            self._show()

    async def _client_call(
        self, request: AgentRunRequest, step: int, call: ToolCallPart
    ) -> ToolResultPart:
        """The caller's result of a client tool call handed to it, or an error result once
        the tool's timeout has passed without one."""
        call_id = call.tool_call_id
        expire_time = self.client_calls[call_id].expire_time
        await wait_until(lambda: call_id in self.client_results, expire_time)
        answer = self.client_results.pop(call_id, None)
        pending = self.client_calls.pop(call_id)
        self._settle()
        if answer is not None:
            result = answer.part(call.tool_name)
        else:
            waited = (pending.expire_time or workflow.now()) - pending.request_time
            result = error_result(
                call, f"{call.tool_name}: no result from the caller within {waited}"
            )
        if any(i not in self.client_results for i in self.client_calls):
            return await self._tool_result(request, step, result)  # the run waits on
        # The run moves on now: the next activity publishes it (publishing here, a local
        # activity, would hold up the next model call by its round trip).
        self.unpublished.append(ToolResultEvent(time=workflow.now(), step=step, result=result))
        return result

    async def _sub_run_call(
        self,
        request: AgentRunRequest,
        plan: RunPlan,
        step: int,
        call: ToolCallPart,
        route: ToolRoute,
        alone: bool,
    ) -> ToolResultPart:
        """A call of an agent as a tool, or a handoff (workflows/sub_agents.py); its result
        goes out as a tool's does, with the next activity if it is the step's only call (a
        handoff's step published its own)."""
        result, published = await self._subs.call(request, plan.agent, step, call, route)
        self._settle()  # its sub-run waits on nothing any more
        if not published and alone:
            self.unpublished.append(ToolResultEvent(time=workflow.now(), step=step, result=result))
        elif not published:
            await self._tool_result(request, step, result)
        return result

    async def _tool_result(
        self, request: AgentRunRequest, step: int, result: ToolResultPart
    ) -> ToolResultPart:
        """A result the workflow made itself, published as a tool activity publishes its own."""
        await self._publish(request, ToolResultEvent(time=workflow.now(), step=step, result=result))
        return result

    async def _tool_call(self, call: ToolInput) -> ToolResultPart:
        """A worker's or an MCP server's tool call (workflows/tool_calls.py)."""
        result, published = await run_tool_call(call)
        if not published:  # handed to the next activity: no command of its own
            self.unpublished.append(
                ToolResultEvent(time=workflow.now(), step=call.step, result=result)
            )
        return result
