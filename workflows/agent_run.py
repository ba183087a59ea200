"""AgentRun: one agent call as a durable run — start, then model step → tool calls → … → finish.

The workflow only orders activities (each model call and each tool call is its own
activity with its own retries) and keeps the conversation in its state. Tools that need
approval suspend the run (status waiting) until a decision arrives, by the `resume_run`
Update (validated, answered synchronously: what ResumeRun uses) or by the `resume` signal
with the same JSON payload (`temporal workflow signal --name resume --input '{...}'`).
Calls of client tools (declared by the caller, run by it) are handed to the caller the same
way: the run waits (status waiting) for the `submit_tool_results` Update (SubmitToolResults).
Each wait ends: an approval at its tool's or agent's approval timeout (the call is rejected),
a client tool call at its tool's timeout (an error result), if they have one. What the run
waits on is kept in its memo for ListRuns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

from workflows.failures import failure_cause, is_cancellation
from workflows.first_step import run_first_step
from workflows.guardrails import blocked_outcome
from workflows.model_fallback import falls_back
from workflows.rejections import check_call_ids
from workflows.retries import (
    BOOKKEEPING,
    MODEL_CALL,
    MODEL_HEARTBEAT_TIMEOUT,
    OUTAGE_PATIENCE,
)
from workflows.search_attributes import RUN, STATUS
from workflows.sub_agents import SUB_RUN_KINDS, SUB_RUN_WAITING, TOOL_RESULTS, SubRuns
from workflows.tool_calls import run_tool_call
from workflows.waits import MAX_LISTED_WAITS, WaitingMemo, wait_until

with workflow.unsafe.imports_passed_through():
    from loomwork.agents.events import (
        ApprovalRequested,
        ApprovalResolved,
        StepFinished,
        ToolCallRequested,
        ToolResultEvent,
    )
    from loomwork.agents.payloads import (
        FinishInput,
        PublishInput,
        RunPlan,
        StepInput,
        StepOutput,
        ToolInput,
    )
    from loomwork.agents.run_models import (
        AgentRunRequest,
        Blocked,
        ContextUsage,
        Decision,
        PendingApproval,
        PendingToolCall,
        ResumeInput,
        RunOutcome,
        RunPhase,
        RunRecord,
        RunState,
        SubRunWaiting,
        ToolResultsInput,
        Violation,
        WaitingOn,
    )
    from loomwork.agents.sub_agents import handed_over
    from loomwork.llm.chat import ChatMessage, ChatUsage
    from loomwork.messages import ToolCallPart, ToolResultPart
    from loomwork.tools.client_tools import ClientToolResult
    from loomwork.tools.registry import error_result
    from loomwork.tools.routes import ToolRoute

MODEL_STEP = "agent_model_step"
PUBLISH = "agent_publish"
FINISH = "agent_finish"

# Runs started before publish and finish became local activities replay the old commands.
LOCAL_ACTIVITIES = "agent-run-local-activities"


def _is_client(output: StepOutput, call: ToolCallPart) -> bool:
    """A call of a client tool: the caller runs it, not a worker."""
    route = output.tool_routes.get(call.tool_call_id)
    return route is not None and route.kind == "client"


@workflow.defn(name="AgentRun")
class AgentRunWorkflow:
    def __init__(self) -> None:
        self._phase: RunPhase = "running"
        self._pending: dict[str, PendingApproval] = {}
        self._decisions: dict[str, Decision] = {}
        self._awaiting_approvals = False  # the step's approvals are not all decided yet
        self._expired: set[str] = set()  # approvals rejected because their timeout passed
        # Client tool calls handed to the caller and not taken back yet, and their results.
        self._client_calls: dict[str, PendingToolCall] = {}
        self._client_results: dict[str, ClientToolResult] = {}
        # tool_result events left to the next activity to publish (StepInput.tool_results).
        self._unpublished: list[ToolResultEvent] = []
        self._steps = 0
        self._record = RunRecord()
        self._waiting_memo = WaitingMemo()
        self._subs = SubRuns()  # agents called as tools, handoffs (workflows/sub_agents.py)
        self._cancel_reason = ""  # CancelRun's reason, sent just before it cancels the run

    # -- messages

    def _undecided(self) -> list[PendingApproval]:
        own = [p for p in self._pending.values() if p.tool_call_id not in self._decisions]
        return own + self._subs.approvals()

    def _unanswered(self) -> list[PendingToolCall]:
        own = [c for c in self._client_calls.values() if c.tool_call_id not in self._client_results]
        return own + self._subs.tool_calls()

    @workflow.query(name="state")
    def state(self) -> RunState:
        return RunState(
            **dict(self._record),
            status=self._phase,
            pending=self._undecided(),
            pending_tool_calls=self._unanswered(),
            steps=self._steps,
        )

    def _show_waiting(self) -> None:
        """Keep the memo ListRuns reads equal to what the run waits on (no arguments)."""
        approvals = self._undecided()[:MAX_LISTED_WAITS]
        calls = self._unanswered()[:MAX_LISTED_WAITS]
        waiting = WaitingOn(
            approvals=[p.model_copy(update={"arguments": {}}) for p in approvals],
            tool_calls=[c.model_copy(update={"arguments": {}}) for c in calls],
        )
        self._waiting_memo.show(waiting.model_dump(mode="json") if approvals or calls else None)
        self._subs.tell_caller(self._undecided(), self._unanswered())

    @workflow.update(name="resume_run")
    async def resume_run(self, resume: ResumeInput) -> RunState:
        """Apply decisions on pending tool calls (all validated first, all or none); those of
        sub-agent runs' calls are passed on to them."""
        for decision in resume.decisions:
            if decision.tool_call_id in self._pending:
                self._decisions[decision.tool_call_id] = decision
        passed = await self._subs.pass_on_decisions(resume.decisions)
        # Answer once the run moved on, or at once if other calls still wait for a decision.
        await workflow.wait_condition(
            lambda: self._decisions_taken() and self._subs.settled(passed)
        )
        return self.state()

    def _decisions_taken(self) -> bool:
        return not self._awaiting_approvals or any(i not in self._decisions for i in self._pending)

    @resume_run.validator
    def _validate_resume(self, resume: ResumeInput) -> None:
        check_call_ids(
            "decisions",
            [d.tool_call_id for d in resume.decisions],
            lambda i: (
                (i in self._pending and i not in self._decisions) or self._subs.awaits_decision(i)
            ),
            what="decision",
            twice="is decided twice",
            not_waiting="is not waiting for approval (not a call of this run that needs"
            " approval, decided already, or past its approval timeout)",
        )

    @workflow.update(name="submit_tool_results")
    async def submit_tool_results(self, submitted: ToolResultsInput) -> RunState:
        """Results of client tool calls the run waits on (all validated first, all or none);
        those of sub-agent runs' calls are passed on to them."""
        for result in submitted.results:
            if result.tool_call_id in self._client_calls:
                self._client_results[result.tool_call_id] = result
        passed = await self._subs.pass_on_results(submitted.results)
        # Answer once the run moved on, or at once if other calls still wait.
        await workflow.wait_condition(lambda: self._results_taken() and self._subs.settled(passed))
        return self.state()

    def _results_taken(self) -> bool:
        waiting = any(i not in self._client_results for i in self._client_calls)
        return self._phase != "waiting" or self._awaiting_approvals or waiting

    @submit_tool_results.validator
    def _validate_results(self, submitted: ToolResultsInput) -> None:
        check_call_ids(
            "results",
            [r.tool_call_id for r in submitted.results],
            lambda i: (
                (i in self._client_calls and i not in self._client_results)
                or self._subs.awaits_result(i)
            ),
            what="result",
            twice="is answered twice",
            not_waiting="is not waiting for a result (not a client tool call of this run,"
            " answered already, or past its timeout)",
        )

    @workflow.signal(name="resume")
    def resume(self, resume: ResumeInput) -> None:
        """The same decisions as a plain signal; decisions that do not apply are ignored."""
        for decision in resume.decisions:
            if decision.tool_call_id in self._pending:
                self._decisions.setdefault(decision.tool_call_id, decision)
        if any(self._subs.awaits_decision(d.tool_call_id) for d in resume.decisions):
            self._subs.in_background(self._subs.pass_on_decisions(resume.decisions))

    @workflow.signal(name=TOOL_RESULTS)
    async def tool_results(self, submitted: ToolResultsInput) -> None:
        """Client tool results as a plain signal (how a calling run passes them on to its
        sub-agent run); results that do not apply are ignored."""
        for result in submitted.results:
            if result.tool_call_id in self._client_calls:
                self._client_results.setdefault(result.tool_call_id, result)
        await self._subs.pass_on_results(submitted.results)

    @workflow.signal(name=SUB_RUN_WAITING)
    def sub_run_waiting(self, report: SubRunWaiting) -> None:
        """What a sub-agent run of this one waits on now (see workflows/sub_agents.py)."""
        if self._subs.update(report) and self._phase in ("running", "waiting"):
            self._settle_phase()

    @workflow.signal(name="cancel_reason")
    def cancel_reason(self, reason: str) -> None:
        """Sent by CancelRun just before it cancels the run: kept as the run's error message."""
        self._cancel_reason = reason

    # -- the run

    @workflow.run
    async def run(self, request: AgentRunRequest) -> RunOutcome:
        usage = ChatUsage()  # what this run paid: a fork's reused steps are not counted
        # A fork's steps before its fork point, as recorded: the start of its output.
        produced: list[ChatMessage] = (
            [m for s in request.fork.reused for m in s.messages] if request.fork else []
        )
        first_step = request.first_step  # 1, or a fork's fork point
        self._steps = first_step - 1
        outcome: RunOutcome
        model = ""
        context = ContextUsage()
        unfinished: StepFinished | None = None  # a step with tool calls, not yet announced
        read_only = False
        scheduled = not request.run_id
        if scheduled:  # a schedule's runs start with run id "": it is their workflow id's end
            run_id = workflow.info().workflow_id.rsplit("/", 1)[-1]
            request = request.model_copy(update={"run_id": run_id})
        self._record = RunRecord.accepted(
            request, create_time=workflow.info().start_time, start_time=workflow.now()
        )
        self._subs.path = request.run_path
        # Started as PENDING unless the service handed it to its own worker (then RUNNING
        # from the start, and the first task goes straight to the model step).
        if scheduled:  # found by its run id from now on
            workflow.upsert_search_attributes(
                [RUN.value_set(request.run_id), STATUS.value_set("RUNNING")]
            )
        elif workflow.info().typed_search_attributes.get(STATUS) != "RUNNING":
            workflow.upsert_search_attributes([STATUS.value_set("RUNNING")])
        try:
            first = await run_first_step(request)
            plan = first.plan
            model, context = plan.model, plan.context
            self._record.model = model
            read_only = plan.agent.memory_read_only
            conversation = list(plan.conversation)
            finish_reason = "max_steps"
            text = ""
            answer: dict[str, object] | None = None
            mismatch: list[Violation] = []
            blocked: Blocked | None = None
            for step in range(first_step, plan.max_steps + 1):
                self._steps = step
                output = first.output
                if step > first_step:
                    output = await self._model_step(
                        StepInput(
                            request=request,
                            agent=plan.agent,
                            plan_model=plan.model,
                            step=step,
                            conversation=conversation,
                            previous_step=unfinished,
                            tool_results=list(self._unpublished),
                        )
                    )
                if output.model and output.model != plan.model:  # it fell back: the run goes on
                    plan.model = model = self._record.model = output.model  # with that model
                unfinished = None
                self._unpublished.clear()
                if output.blocked is not None:  # a guardrail processor tripped: it ends here
                    blocked = output.blocked
                    break
                usage = usage.plus(output.usage)
                assistant = output.message()
                conversation.append(assistant)
                produced.append(assistant)
                text = output.text
                if not output.tool_calls:
                    finish_reason = "stop"
                    answer, mismatch = output.object, output.object_violations
                    break
                results = await self._tool_calls(request, plan, step, output)
                tool_message = ChatMessage.tool(*results)
                conversation.append(tool_message)
                produced.append(tool_message)
                usage = usage.plus(self._subs.take_usage())  # sub-agent runs' usage adds up
                if (handoff := self._subs.take_handoff()) is not None:  # a new agent goes on
                    plan, conversation = handed_over(plan, conversation, handoff)
                    model = self._record.model = plan.model
                unfinished = StepFinished(
                    time=workflow.now(),
                    step=step,
                    finish_reason=output.finish_reason,
                    usage=output.usage,
                    model=output.model,
                    messages=[assistant, tool_message],
                )
            if blocked is not None:
                outcome = blocked_outcome(
                    self._outcome(request, model, "blocked", "content_filter", produced, usage),
                    blocked,
                )
            elif mismatch:
                outcome = self._outcome(request, model, "failed", "error", produced, usage)
                outcome.error = "the model's answer does not match the output schema"
                outcome.error_type = "OutputSchemaMismatch"
                outcome.violations = mismatch
                outcome.error_details = {"output": text[:10_000]}
            else:
                outcome = self._outcome(request, model, "succeeded", finish_reason, produced, usage)
                outcome.object = answer
                outcome.text = "" if answer is not None else text
        except (ActivityError, asyncio.CancelledError, CancelledError) as error:
            if is_cancellation(error):
                outcome = self._outcome(request, model, "canceled", "canceled", produced, usage)
                outcome.error = self._cancel_reason or "canceled by CancelRun"
                outcome.error_type = "Canceled"
            else:
                message, error_type = failure_cause(error)
                outcome = self._outcome(request, model, "failed", "error", produced, usage)
                outcome.error, outcome.error_type = message, error_type
        outcome.context = context
        self._phase = outcome.status
        self._pending.clear()
        self._awaiting_approvals = False
        self._client_calls.clear()
        self._client_results.clear()
        self._show_waiting()
        finished = await self._bookkeeping(
            FINISH,
            FinishInput(
                request=request,
                outcome=outcome,
                last_step=unfinished,
                tool_results=self._unpublished,
                read_only=read_only,
            ),
            result_type=RunOutcome,
            summary=f"save and finish ({outcome.status})",
        )
        workflow.upsert_search_attributes([STATUS.value_set(outcome.status.upper())])
        await self._subs.caller_told()  # a sub-agent run: its caller knows it waits on nothing
        return finished

    async def _model_step(self, step: StepInput) -> StepOutput:
        """A model step after the first; on the agent's next model once a model ran out of
        retries."""
        while True:
            try:
                return await workflow.execute_activity(
                    MODEL_STEP,
                    step,
                    result_type=StepOutput,
                    start_to_close_timeout=timedelta(minutes=5),
                    heartbeat_timeout=MODEL_HEARTBEAT_TIMEOUT,
                    retry_policy=MODEL_CALL,
                    summary=f"model {step.plan_model}, step {step.step}",
                )
            except ActivityError as error:
                fallback = falls_back(error)
                if not fallback:
                    raise
                step = step.model_copy(update={"plan_model": fallback})

    def _outcome(
        self,
        request: AgentRunRequest,
        model: str,
        status: str,
        finish_reason: str,
        produced: list[ChatMessage],
        usage: ChatUsage,
    ) -> RunOutcome:
        return RunOutcome.model_validate(
            {
                **dict(self._record),
                "run_id": request.run_id,
                "agent_name": request.agent_name,
                "model": model,
                "status": status,
                "finish_reason": finish_reason,
                "messages": produced,
                "usage": usage,
                "steps": self._steps,
                "end_time": workflow.now(),
            }
        )

    async def _publish(self, request: AgentRunRequest, event: object) -> None:
        await self._bookkeeping(
            PUBLISH, PublishInput.model_validate({"request": request, "event": event})
        )

    async def _bookkeeping(
        self, name: str, arg: object, *, result_type: type | None = None, summary: str | None = None
    ) -> Any:
        """Publishing and saving: short, so a local activity (no round trip through the
        server); runs started before that change replay the activities they recorded.
        Retried while Redis or Postgres is out, for up to OUTAGE_PATIENCE."""
        execute = (
            workflow.execute_local_activity
            if workflow.patched(LOCAL_ACTIVITIES)
            else workflow.execute_activity
        )
        return await execute(
            name,
            arg,
            result_type=result_type,
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_close_timeout=OUTAGE_PATIENCE,
            retry_policy=BOOKKEEPING,
            summary=summary,
        )

    def _settle_phase(self) -> None:
        """Waiting while the step's approvals are undecided or a client tool call is the
        caller's, running otherwise; the STATUS search attribute follows."""
        waits = self._awaiting_approvals or self._client_calls or self._subs.waiting()
        phase: RunPhase = "waiting" if waits else "running"
        if phase != self._phase:
            self._phase = phase
            workflow.upsert_search_attributes([STATUS.value_set(phase.upper())])
        self._show_waiting()

    async def _tool_calls(
        self, request: AgentRunRequest, plan: RunPlan, step: int, output: StepOutput
    ) -> list[ToolResultPart]:
        needs_approval = [
            c for c in output.tool_calls if c.tool_call_id in output.approval_required
        ]
        for call in needs_approval:
            route = output.tool_routes.get(call.tool_call_id)
            limit = route.approval_timeout if route is not None else None
            self._pending[call.tool_call_id] = PendingApproval(
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
            self._client_calls[call.tool_call_id] = PendingToolCall(
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
            self._awaiting_approvals = bool(needs_approval)
            self._settle_phase()
            await self._subs.caller_told()
            for call in needs_approval:
                approval = self._pending[call.tool_call_id]
                await self._publish(request, ApprovalRequested(step=step, approval=approval))
            for call in handed:
                pending = self._client_calls[call.tool_call_id]
                await self._publish(
                    request, ToolCallRequested(time=workflow.now(), step=step, call=pending)
                )
        if needs_approval:
            await self._decided([c.tool_call_id for c in needs_approval])
            self._awaiting_approvals = False
            self._settle_phase()
            for call in needs_approval:
                decision = self._decisions[call.tool_call_id]
                decisions[call.tool_call_id] = decision
                del self._pending[call.tool_call_id]
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
            if call.tool_call_id in self._expired:  # no decision in time: it does not run
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
        while undecided := [self._pending[i] for i in ids if i not in self._decisions]:
            deadlines = [p.expire_time for p in undecided if p.expire_time is not None]
            first = min(deadlines, default=None)
            await wait_until(
                lambda: any(p.tool_call_id in self._decisions for p in undecided),
                first,
                summary="approval timeout",
            )
            for pending in undecided:
                expire_time = pending.expire_time
                if pending.tool_call_id in self._decisions or expire_time is None:
                    continue
                if expire_time <= workflow.now():
                    waited = expire_time - pending.request_time
                    self._decisions[pending.tool_call_id] = Decision(
                        tool_call_id=pending.tool_call_id,
                        approve=False,
                        reason=f"no decision within {waited}",
                    )
                    self._expired.add(pending.tool_call_id)
            self._show_waiting()

    async def _client_call(
        self, request: AgentRunRequest, step: int, call: ToolCallPart
    ) -> ToolResultPart:
        """The caller's result of a client tool call handed to it, or an error result once
        the tool's timeout has passed without one."""
        call_id = call.tool_call_id
        expire_time = self._client_calls[call_id].expire_time
        await wait_until(lambda: call_id in self._client_results, expire_time)
        answer = self._client_results.pop(call_id, None)
        pending = self._client_calls.pop(call_id)
        self._settle_phase()
        if answer is not None:
            result = answer.part(call.tool_name)
        else:
            waited = (pending.expire_time or workflow.now()) - pending.request_time
            result = error_result(
                call, f"{call.tool_name}: no result from the caller within {waited}"
            )
        if any(i not in self._client_results for i in self._client_calls):
            return await self._tool_result(request, step, result)  # the run waits on
        # The run moves on now: the next activity publishes it (publishing here, a local
        # activity, would hold up the next model call by its round trip).
        self._unpublished.append(ToolResultEvent(time=workflow.now(), step=step, result=result))
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
        self._settle_phase()  # its sub-run waits on nothing any more
        if not published and alone:
            self._unpublished.append(ToolResultEvent(time=workflow.now(), step=step, result=result))
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
            self._unpublished.append(
                ToolResultEvent(time=workflow.now(), step=call.step, result=result)
            )
        return result
