"""Agents working together inside an agent run (see loomwork.agents.sub_agents).

A call of an agent as a tool starts that agent's run as a Temporal child workflow of the
calling run (its own run id and workflow, `agent/<agent>/<tenant>/<run>`) and reads its
answer; its usage adds to the caller's. A handoff call runs the handoff step, and the run's
next steps run as the new agent.

A sub-agent run tells the run that called it (a `sub_run_waiting` signal) whenever what it
waits on changes: approvals and client tool calls, its own and its sub-runs'. The calling
run lists them as its own (so the top-level run is WAITING, and GetRun, ListRuns and
Generate show them) and passes on the decisions and results it is given for them (the
`resume` and `tool_results` signals), so that ResumeRun and SubmitToolResults answer them
with the top-level run's id.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ChildWorkflowError, FailureError

from workflows.retries import BOOKKEEPING
from workflows.search_attributes import AGENT, RUN, STATUS, TENANT

with workflow.unsafe.imports_passed_through():
    from loomwork.agents.definitions import AgentDefinition
    from loomwork.agents.payloads import HandoffInput, HandoffOutcome
    from loomwork.agents.run_models import (
        AgentRunRequest,
        Decision,
        PendingApproval,
        PendingToolCall,
        ResumeInput,
        RunOutcome,
        SubRunWaiting,
        ToolResultsInput,
        WaitingOn,
        agent_run_workflow_id,
    )
    from loomwork.agents.sub_agents import sub_run_request, sub_run_result
    from loomwork.llm.chat import ChatUsage
    from loomwork.messages import ToolCallPart, ToolResultPart
    from loomwork.tools.client_tools import ClientToolResult
    from loomwork.tools.registry import error_result
    from loomwork.tools.routes import ToolRoute

# The signal a sub-agent run sends the run that called it, with what it waits on.
SUB_RUN_WAITING = "sub_run_waiting"
# The signals that pass decisions and client tool results on to a sub-agent run.
RESUME = "resume"
TOOL_RESULTS = "tool_results"
HANDOFF = "agent_handoff"
# The kinds of tool call this module runs.
SUB_RUN_KINDS = ("agent", "handoff")

_Waiting = TypeVar("_Waiting", PendingApproval, PendingToolCall)
_Answer = TypeVar("_Answer", Decision, ClientToolResult)


def _caller_failure(error: ChildWorkflowError) -> str:
    cause: BaseException = error
    while isinstance(cause, FailureError) and cause.cause is not None:
        cause = cause.cause
    return str(cause) or type(cause).__name__


class SubRuns:
    """The agent run's sub-agent calls and handoffs, what its sub-runs wait on, and (when the
    run is itself a sub-run) what it last told the run that called it."""

    def __init__(self) -> None:
        self.waits: dict[str, SubRunWaiting] = {}  # by the sub-run's workflow id
        self._running: set[str] = set()  # the sub-runs under way, by workflow id
        self.usage = ChatUsage()  # of the sub-runs that ended since `take_usage`
        self.path = ""  # this run's AgentRunRequest.run_path
        self._handoff: HandoffOutcome | None = None
        self._handoff_step = 0  # the last step whose handoff call ran (one per step)
        self._told = WaitingOn()  # what the caller was last told (or is being told)
        self._version = 0
        self._sent = 0
        self._reporter: asyncio.Task[None] | None = None
        self._passing_on: list[asyncio.Task[object]] = []

    # -- what the sub-runs wait on, as this run lists it

    def approvals(self) -> list[PendingApproval]:
        return [a for report in self.waits.values() for a in report.waiting.approvals]

    def tool_calls(self) -> list[PendingToolCall]:
        return [c for report in self.waits.values() for c in report.waiting.tool_calls]

    def waiting(self) -> bool:
        return any(r.waiting.approvals or r.waiting.tool_calls for r in self.waits.values())

    def awaits_decision(self, call_id: str) -> bool:
        return self._owner(call_id, approvals=True) is not None

    def awaits_result(self, call_id: str) -> bool:
        return self._owner(call_id, approvals=False) is not None

    def settled(self, call_ids: Sequence[str]) -> bool:
        """None of these calls is waiting in a sub-run any more."""
        return not any(self.awaits_decision(i) or self.awaits_result(i) for i in call_ids)

    def update(self, report: SubRunWaiting) -> bool:
        """A sub-run's report (the `sub_run_waiting` signal); False if an older one, or one of
        a sub-run that has ended."""
        current = self.waits.get(report.workflow_id)
        if report.workflow_id not in self._running or (current and current.seq >= report.seq):
            return False
        self.waits[report.workflow_id] = report
        return True

    def _owner(self, call_id: str, *, approvals: bool) -> str | None:
        """The workflow id of the sub-run waiting on the call (for a decision, or a result)."""
        for workflow_id, report in self.waits.items():
            waiting = report.waiting
            calls = waiting.approvals if approvals else waiting.tool_calls
            if any(c.tool_call_id == call_id for c in calls):
                return workflow_id
        return None

    async def pass_on_decisions(self, decisions: Sequence[Decision]) -> list[str]:
        """Send each sub-run the decisions on its calls; the ids of the calls passed on."""
        mine = self._by_run(decisions, approvals=True)
        for workflow_id, passed in mine.items():
            await self._signal(workflow_id, RESUME, ResumeInput(decisions=passed))
        return [d.tool_call_id for passed in mine.values() for d in passed]

    async def pass_on_results(self, results: Sequence[ClientToolResult]) -> list[str]:
        """Send each sub-run the results of its client tool calls; the ids passed on."""
        mine = self._by_run(results, approvals=False)
        for workflow_id, passed in mine.items():
            await self._signal(workflow_id, TOOL_RESULTS, ToolResultsInput(results=passed))
        return [r.tool_call_id for passed in mine.values() for r in passed]

    def _by_run(self, answers: Sequence[_Answer], *, approvals: bool) -> dict[str, list[_Answer]]:
        """The answers to sub-runs' calls, by the workflow id of the sub-run waiting on each."""
        by_run: defaultdict[str, list[_Answer]] = defaultdict(list)
        for answer in answers:
            owner = self._owner(answer.tool_call_id, approvals=approvals)
            if owner is not None:
                by_run[owner].append(answer)
        return by_run

    def in_background(self, passing_on: Coroutine[Any, Any, object]) -> None:
        """Pass decisions or results on from a signal handler (which does not wait)."""
        self._passing_on.append(asyncio.create_task(passing_on))

    @staticmethod
    async def _signal(workflow_id: str, name: str, payload: object) -> None:
        try:
            await workflow.get_external_workflow_handle(workflow_id).signal(name, payload)
        except FailureError:  # it ended meanwhile: nothing waits any more
            workflow.logger.info("sub-run %s ended before its %s signal", workflow_id, name)

    # -- the calls

    async def call(
        self,
        request: AgentRunRequest,
        agent: AgentDefinition,
        step: int,
        call: ToolCallPart,
        route: ToolRoute,
    ) -> tuple[ToolResultPart, bool]:
        """Run a call of an agent (a sub-agent run) or a handoff call: its result, and
        whether that result is published already (a handoff's is, by its step)."""
        if route.kind == "handoff":
            if self._handoff_step == step:
                return error_result(call, "one handoff per step: the first one was taken"), False
            self._handoff_step = step
            outcome: HandoffOutcome = await workflow.execute_activity(
                HANDOFF,
                HandoffInput(
                    request=request, agent=agent, step=step, call=call, target=route.agent
                ),
                result_type=HandoffOutcome,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=BOOKKEEPING,
                summary=route.summary,
            )
            if outcome.agent is not None:
                self._handoff = outcome
            return outcome.result, True
        return await self._sub_run(request, call, route), False

    async def _sub_run(
        self, request: AgentRunRequest, call: ToolCallPart, route: ToolRoute
    ) -> ToolResultPart:
        # The step that asked for the call began the sub-run's first step, or the id is new.
        run_id = route.run_id or f"run_{workflow.uuid4().hex[:26]}"
        workflow_id = agent_run_workflow_id(route.agent, request.tenant, run_id)
        attributes = [
            SearchAttributePair(TENANT, request.tenant),
            SearchAttributePair(AGENT, route.agent),
            SearchAttributePair(RUN, run_id),
            SearchAttributePair(STATUS, "RUNNING"),
        ]
        self._running.add(workflow_id)
        try:
            outcome: RunOutcome = await workflow.execute_child_workflow(
                "AgentRun",
                sub_run_request(
                    request, call, route.agent, run_id, first_step_begun=bool(route.run_id)
                ),
                id=workflow_id,
                result_type=RunOutcome,
                search_attributes=TypedSearchAttributes(attributes),
                static_summary=f"agent {route.agent}, called by run {request.run_id}",
            )
        except ChildWorkflowError as error:  # terminated, timed out: not its own answer
            return error_result(
                call, f"the agent {route.agent} did not answer: {_caller_failure(error)}"
            )
        finally:
            self._running.discard(workflow_id)
            self.waits.pop(workflow_id, None)
        self.usage = self.usage.plus(outcome.usage)
        return sub_run_result(call, route.agent, outcome)

    def take_handoff(self) -> HandoffOutcome | None:
        """The handoff of the step that just ended, if there was one."""
        handoff, self._handoff = self._handoff, None
        return handoff

    def take_usage(self) -> ChatUsage:
        """The usage of the sub-runs that ended since the last call."""
        usage, self.usage = self.usage, ChatUsage()
        return usage

    # -- this run as a sub-run

    def tell_caller(
        self, approvals: list[PendingApproval], tool_calls: list[PendingToolCall]
    ) -> None:
        """Have the run that called this one told what this one waits on now. Only a
        sub-agent run reports (not a run a caller started, nor a workflow's agent step).
        Reports go out in order, one at a time, in the background."""
        parent = workflow.info().parent
        if parent is None or not self.path:
            return

        waiting = WaitingOn(
            approvals=[self._stamped(a) for a in approvals],
            tool_calls=[self._stamped(c) for c in tool_calls],
        )
        if waiting == self._told:
            return
        self._told = waiting
        self._version += 1
        if self._reporter is None:
            self._reporter = asyncio.create_task(self._report(parent.workflow_id))

    def _stamped(self, call: _Waiting) -> _Waiting:
        """A call of this run's own, marked with its path (its sub-runs' are already)."""
        return call if call.run_path else call.model_copy(update={"run_path": self.path})

    async def _report(self, caller_id: str) -> None:
        while True:
            await workflow.wait_condition(lambda: self._sent < self._version)
            version = self._version
            report = SubRunWaiting(
                workflow_id=workflow.info().workflow_id, seq=version, waiting=self._told
            )
            await self._signal(caller_id, SUB_RUN_WAITING, report)
            self._sent = version

    async def caller_told(self) -> None:
        """Wait until the run that called this one has been told the latest."""
        if self._reporter is not None:
            await workflow.wait_condition(lambda: self._sent == self._version)
