"""An agent run's tool calls as a worker runs them: one of its own tools or an MCP server's,
every problem an error result the model reads; and the calls refused before they run (a
person rejected them, or their arguments do not fit)."""

from __future__ import annotations

from loomwork.agents.payloads import StepOutput, ToolInput
from loomwork.agents.run_models import AgentRunRequest
from loomwork.agents.run_start import tool_names
from loomwork.errors import Unavailable
from loomwork.messages import ToolResultPart
from loomwork.tools import ToolContext, ToolRegistry
from loomwork.tools.mcp_source import McpTools
from loomwork.tools.registry import error_result
from loomwork.tools.tool_context import OAuthAccess


def not_an_object(argument_error: str) -> str:
    """The error result of a call whose arguments are not a JSON object."""
    return f"arguments are not a JSON object: {argument_error}"


def invalid_client_calls(request: AgentRunRequest, output: StepOutput) -> None:
    """Record the calls of client tools whose arguments are not a JSON object or do not
    fit the declared schema: they go back to the model, never to the caller."""
    for call in output.tool_calls:
        client_tool = request.client_tool(call.tool_name)
        route = output.tool_routes.get(call.tool_call_id)
        if client_tool is None or route is None or route.kind != "client":
            continue
        argument_error = output.argument_errors.get(call.tool_call_id)
        invalid = (
            not_an_object(argument_error)
            if argument_error is not None
            else client_tool.argument_problems(call)
        )
        if invalid:
            output.invalid_calls[call.tool_call_id] = invalid


def refused(call: ToolInput) -> ToolResultPart | None:
    """The error result of a call that does not run: rejected by a person, or with
    arguments that are not a JSON object."""
    if call.rejection is not None:
        return error_result(
            call.call, f"a person rejected this call: {call.rejection or 'no reason given'}"
        )
    if call.argument_error:
        return error_result(call.call, not_an_object(call.argument_error))
    return None


def last_attempt(call: ToolInput, attempt: int) -> bool:
    """Whether `attempt` is the call's last: its tool has no retry policy, or it ran out."""
    retry = call.route.retry if call.route is not None else None
    return retry is None or 0 < retry.max_attempts <= attempt


async def call_worker_tool(
    tools: ToolRegistry, oauth: OAuthAccess | None, call: ToolInput, attempt: int
) -> ToolResultPart:
    """Run one of the worker's tools (`oauth`: the tenant's connections, for ctx.oauth). A
    tool with a retry policy that raises is retried (ToolFailed) until its last attempt."""
    request, agent = call.request, call.agent
    result = refused(call)
    if result is None:
        wm = agent.memory.working_memory
        context = ToolContext(
            tenant=request.tenant,
            run_id=request.run_id,
            tool_call_id=call.call.tool_call_id,
            thread_id=request.thread_id,
            resource_id=request.resource_id,
            memory_scope=wm.scope.value if wm is not None else "thread",
            working_memory_schema=wm.json_schema if wm is not None else None,
            metadata=request.metadata,
            oauth_connections=oauth,
        )
        result = await tools.call(
            call.call,
            context,
            allowed=tool_names(agent, request),
            retry_failures=not last_attempt(call, attempt),
        )
    return result


async def call_mcp_tool(mcp: McpTools | None, call: ToolInput, attempt: int) -> ToolResultPart:
    """Call an MCP server's tool (the call's route names it). A server that cannot be reached
    raises Unavailable (retried) until the last attempt."""
    result = refused(call)
    if result is not None:
        return result
    ref = call.route.mcp if call.route is not None else None
    if ref is None or mcp is None:
        return error_result(call.call, "MCP tools are not available on this worker")
    request = call.request
    try:
        return await mcp.call(
            request.tenant,
            ref,
            call.call,
            idempotency_key=f"{request.run_id}:{call.call.tool_call_id}",
        )
    except Unavailable as exc:
        if not last_attempt(call, attempt):
            raise
        return error_result(call.call, exc.message)
