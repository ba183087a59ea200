"""Agent steps retried by Temporal after they published (a worker gone, a save that failed
after the publish): what a step says once — a step finished, a tool's result, an approval —
reaches the run's stream once."""

from __future__ import annotations

from datetime import UTC, datetime

from loomwork.agents.events import ApprovalRequested, StepFinished, decode_event
from loomwork.agents.payloads import ToolInput
from loomwork.agents.run_models import AgentRunRequest, PendingApproval, RunOutcome
from loomwork.agents.run_start import event_log_key
from loomwork.llm.chat import ChatUsage
from loomwork.messages import ToolCallPart
from server.runtime import Runtime
from tests.support import agent_run_request

TENANT = "alpha"


async def _types(runtime: Runtime, request: AgentRunRequest) -> list[str]:
    events = await runtime.events.read(event_log_key(TENANT, request.run_id), 0)
    return [decode_event(e.payload).type for e in events]


async def test_a_retried_tool_call_and_finish_publish_what_they_say_once(
    runtime: Runtime, worker
) -> None:
    steps = runtime.agent_steps
    assert steps is not None
    request = agent_run_request("add 2 and 3")
    agent = await steps.agents.get(TENANT, "assistant")
    call = ToolInput(
        request=request,
        agent=agent,
        step=1,
        call=ToolCallPart(tool_call_id="c1", tool_name="add", arguments={"a": 2, "b": 3}),
    )
    first = await steps.tool_call(call)
    again = await steps.tool_call(call)  # the activity retried after its publish
    assert first == again
    # The same call id in a later step is another call: its result is published.
    await steps.tool_call(call.model_copy(update={"step": 2}))

    approval = ApprovalRequested(
        step=2,
        approval=PendingApproval(
            tool_call_id="c2",
            tool_name="send_email",
            arguments={},
            step=2,
            request_time=datetime.now(UTC),
        ),
    )
    assert await steps.publish(request, approval) == await steps.publish(request, approval)

    # The finish: its first attempt published the last step_finished, then failed saving.
    last = StepFinished(step=2, finish_reason="tool_calls", usage=ChatUsage())
    await steps.publish(request, last)
    outcome = RunOutcome(
        run_id=request.run_id, agent_name="assistant", status="succeeded", finish_reason="stop"
    )
    finished = await steps.finish(request, outcome.model_copy(), last_step=last)
    again_finished = await steps.finish(request, outcome.model_copy(), last_step=last)
    assert again_finished.terminal_event_id == finished.terminal_event_id
    assert await _types(runtime, request) == [
        "tool_result",
        "tool_result",
        "approval_requested",
        "step_finished",
        "run_finished",
    ]
