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
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

from workflows.failures import failure_cause, is_cancellation
from workflows.guardrails import blocked_outcome
from workflows.model_steps import run_first_step, run_model_step
from workflows.rejections import check_call_ids
from workflows.retries import BOOKKEEPING, OUTAGE_PATIENCE
from workflows.search_attributes import RUN, STATUS
from workflows.step_calls import StepCalls
from workflows.sub_agents import SUB_RUN_WAITING, TOOL_RESULTS, SubRuns
from workflows.waits import MAX_LISTED_WAITS, WaitingMemo

with workflow.unsafe.imports_passed_through():
    from loomwork.agents.events import StepFinished
    from loomwork.agents.payloads import FinishInput, PublishInput, StepInput
    from loomwork.agents.run_models import (
        AgentRunRequest,
        Blocked,
        ContextUsage,
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

PUBLISH = "agent_publish"
FINISH = "agent_finish"

# Runs started before publish and finish became local activities replay the old commands.
LOCAL_ACTIVITIES = "agent-run-local-activities"


@workflow.defn(name="AgentRun")
class AgentRunWorkflow:
    def __init__(self) -> None:
        self._phase: RunPhase = "running"
        self._steps = 0
        self._record = RunRecord()
        self._waiting_memo = WaitingMemo()
        self._subs = SubRuns()  # agents called as tools, handoffs (workflows/sub_agents.py)
        # The steps' tool calls: approvals, client tool calls (workflows/step_calls.py).
        self._calls = StepCalls(self._subs, self._publish, self._settle_phase, self._show_waiting)
        self._cancel_reason = ""  # CancelRun's reason, sent just before it cancels the run

    # -- messages

    @workflow.query(name="state")
    def state(self) -> RunState:
        return RunState(
            **dict(self._record),
            status=self._phase,
            pending=self._calls.undecided(),
            pending_tool_calls=self._calls.unanswered(),
            steps=self._steps,
        )

    def _show_waiting(self) -> None:
        """Keep the memo ListRuns reads equal to what the run waits on (no arguments)."""
        approvals = self._calls.undecided()[:MAX_LISTED_WAITS]
        calls = self._calls.unanswered()[:MAX_LISTED_WAITS]
        waiting = WaitingOn(
            approvals=[p.model_copy(update={"arguments": {}}) for p in approvals],
            tool_calls=[c.model_copy(update={"arguments": {}}) for c in calls],
        )
        self._waiting_memo.show(waiting.model_dump(mode="json") if approvals or calls else None)
        self._subs.tell_caller(self._calls.undecided(), self._calls.unanswered())

    @workflow.update(name="resume_run")
    async def resume_run(self, resume: ResumeInput) -> RunState:
        """Apply decisions on pending tool calls (all validated first, all or none); those of
        sub-agent runs' calls are passed on to them."""
        self._calls.decide(resume.decisions)
        passed = await self._subs.pass_on_decisions(resume.decisions)
        # Answer once the run moved on, or at once if other calls still wait for a decision.
        await workflow.wait_condition(
            lambda: self._calls.decisions_taken() and self._subs.settled(passed)
        )
        return self.state()

    @resume_run.validator
    def _validate_resume(self, resume: ResumeInput) -> None:
        check_call_ids(
            "decisions",
            [d.tool_call_id for d in resume.decisions],
            lambda i: self._calls.awaits_decision(i) or self._subs.awaits_decision(i),
            what="decision",
            twice="is decided twice",
            not_waiting="is not waiting for approval (not a call of this run that needs"
            " approval, decided already, or past its approval timeout)",
        )

    @workflow.update(name="submit_tool_results")
    async def submit_tool_results(self, submitted: ToolResultsInput) -> RunState:
        """Results of client tool calls the run waits on (all validated first, all or none);
        those of sub-agent runs' calls are passed on to them."""
        self._calls.answer(submitted.results)
        passed = await self._subs.pass_on_results(submitted.results)
        # Answer once the run moved on, or at once if other calls still wait.
        await workflow.wait_condition(lambda: self._results_taken() and self._subs.settled(passed))
        return self.state()

    def _results_taken(self) -> bool:
        return self._phase != "waiting" or self._calls.results_taken()

    @submit_tool_results.validator
    def _validate_results(self, submitted: ToolResultsInput) -> None:
        check_call_ids(
            "results",
            [r.tool_call_id for r in submitted.results],
            lambda i: self._calls.awaits_result(i) or self._subs.awaits_result(i),
            what="result",
            twice="is answered twice",
            not_waiting="is not waiting for a result (not a client tool call of this run,"
            " answered already, or past its timeout)",
        )

    @workflow.signal(name="resume")
    def resume(self, resume: ResumeInput) -> None:
        """The same decisions as a plain signal; decisions that do not apply are ignored."""
        self._calls.decide(resume.decisions, keep_first=True)
        if any(self._subs.awaits_decision(d.tool_call_id) for d in resume.decisions):
            self._subs.in_background(self._subs.pass_on_decisions(resume.decisions))

    @workflow.signal(name=TOOL_RESULTS)
    async def tool_results(self, submitted: ToolResultsInput) -> None:
        """Client tool results as a plain signal (how a calling run passes them on to its
        sub-agent run); results that do not apply are ignored."""
        self._calls.answer(submitted.results, keep_first=True)
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
                    output = await run_model_step(
                        StepInput(
                            request=request,
                            agent=plan.agent,
                            plan_model=plan.model,
                            step=step,
                            conversation=conversation,
                            previous_step=unfinished,
                            tool_results=list(self._calls.unpublished),
                        )
                    )
                if output.model and output.model != plan.model:  # it fell back: the run goes on
                    plan.model = model = self._record.model = output.model  # with that model
                unfinished = None
                self._calls.unpublished.clear()
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
                results = await self._calls.run(request, plan, step, output)
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
        self._calls.end()
        self._show_waiting()
        finished = await self._bookkeeping(
            FINISH,
            FinishInput(
                request=request,
                outcome=outcome,
                last_step=unfinished,
                tool_results=self._calls.unpublished,
                read_only=read_only,
            ),
            result_type=RunOutcome,
            summary=f"save and finish ({outcome.status})",
        )
        workflow.upsert_search_attributes([STATUS.value_set(outcome.status.upper())])
        await self._subs.caller_told()  # a sub-agent run: its caller knows it waits on nothing
        return finished

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
        waits = self._calls.awaiting_approvals or self._calls.client_calls or self._subs.waiting()
        phase: RunPhase = "waiting" if waits else "running"
        if phase != self._phase:
            self._phase = phase
            workflow.upsert_search_attributes([STATUS.value_set(phase.upper())])
        self._show_waiting()
