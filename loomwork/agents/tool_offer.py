"""What the model of an agent run's step is told of the run's tools, and how each call of
them runs: the worker's own tools, the agents it calls and hands off to, the MCP servers'
tools and the caller's client tools."""

from __future__ import annotations

import logging

from loomwork.agents.definitions import AgentDefinition
from loomwork.agents.run_models import AgentRunRequest
from loomwork.agents.sub_agents import AgentLookup, is_agent_tool, offered_agents
from loomwork.llm.chat import ToolSpec
from loomwork.tools import ToolRegistry
from loomwork.tools.mcp_names import is_mcp_name
from loomwork.tools.mcp_source import McpToolInfo, McpTools
from loomwork.tools.routes import ToolRoute

log = logging.getLogger(__name__)


async def offered_tools(
    tools: ToolRegistry,
    mcp: McpTools | None,
    agents: AgentLookup,
    request: AgentRunRequest,
    agent: AgentDefinition,
    names: list[str],
) -> tuple[list[ToolSpec], dict[str, ToolRoute]]:
    """The specs of the agent's tools (`names`): the worker's, the agents it calls and hands
    off to (looked up by `agents`), then the MCP servers' (from their cached lists), then
    the caller's client tools; and the routes of all but the worker's, by function name. A
    client tool keeps its name: an MCP tool of the same function name is left out (the
    worker's own were checked as the run started; a sub-agent run's own tools keep theirs)."""
    tenant = request.tenant
    own = [n for n in names if not is_mcp_name(n) and not is_agent_tool(n)]
    specs = tools.specs(own)
    agent_specs, agent_routes = await offered_agents(agent, names, agents)
    specs += agent_specs
    taken_by_own = {spec.name for spec in specs}
    client_tools = [t for t in request.client_tools if t.name not in taken_by_own]
    mcp_names = [n for n in names if is_mcp_name(n)]
    offered: list[McpToolInfo] = []
    if mcp_names and mcp is None:
        log.warning("MCP tools are not available in this process: %s left out", mcp_names)
    elif mcp_names and mcp is not None:
        offered = await mcp.offer(tenant, mcp_names)
    taken = {spec.name for spec in specs} | {tool.name for tool in client_tools}
    for info in offered:
        if info.ref.function_name in taken:
            log.warning(
                "%s is left out: a tool is named %s", info.ref.tool_name, info.ref.function_name
            )
    offered = [i for i in offered if i.ref.function_name not in taken]
    specs += [info.spec() for info in offered]
    specs += [tool.spec() for tool in client_tools]
    routes = {info.ref.function_name: info.route() for info in offered}
    routes.update({tool.name: tool.route() for tool in client_tools})
    routes.update(agent_routes)
    return specs, routes
