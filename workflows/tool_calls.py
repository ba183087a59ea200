"""A tool call of an agent run that a worker runs (one of its own tools, or an MCP server's),
as its own activity with the tool's timeout and retries."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from workflows.failures import failure_cause
from workflows.retries import TOOL_HEARTBEAT_TIMEOUT, temporal_retry_policy

with workflow.unsafe.imports_passed_through():
    from loomwork.agents.payloads import ToolInput
    from loomwork.messages import ToolResultPart
    from loomwork.tools.routes import DEFAULT_TOOL_TIMEOUT, ToolRoute

TOOL_CALL = "agent_tool_call"
MCP_TOOL_CALL = "agent_mcp_tool_call"
# Runs started before a tool call's last failure became an error result fail on it instead.
TOOL_FAILURE_TO_MODEL = "agent-run-tool-failure-to-model"
_QUICK = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=5)


async def run_tool_call(call: ToolInput) -> tuple[ToolResultPart, bool]:
    """The call's result, and whether its activity published it. A call that still fails
    after its retries is an error result the model reads (published by the run's next
    activity), not a failed run."""
    route = call.route or ToolRoute()
    # Runs recorded before MCP tools have no "mcp" routes: they replay the same commands.
    activity = MCP_TOOL_CALL if route.kind == "mcp" else TOOL_CALL
    try:
        result = await workflow.execute_activity(
            activity,
            call,
            result_type=ToolResultPart,
            start_to_close_timeout=route.timeout or DEFAULT_TOOL_TIMEOUT,
            # The activity heartbeats while the tool runs: a worker that dies mid-call is
            # noticed within seconds and the call moves on.
            heartbeat_timeout=TOOL_HEARTBEAT_TIMEOUT,
            retry_policy=temporal_retry_policy(route.retry) if route.retry else _QUICK,
            summary=route.summary or f"tool {call.call.tool_name}",
        )
    except ActivityError as error:
        # Older runs failed here; they replay that way.
        if not workflow.patched(TOOL_FAILURE_TO_MODEL):
            raise
        message, _ = failure_cause(error)
        name = call.call.tool_name
        failed = ToolResultPart(
            tool_call_id=call.call.tool_call_id,
            tool_name=name,
            result=f"{name} failed: {message or 'no attempt finished in time'}",
            is_error=True,
        )
        return failed, False
    return result, call.publish_result
