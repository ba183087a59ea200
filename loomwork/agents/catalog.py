"""The agents a tenant sees: those defined in code (read-only, shared) and its own stored ones."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from loomwork.agents.definitions import AGENT_NAME, AgentDefinition, AgentRegistry, AgentSource
from loomwork.agents.store import AgentStore
from loomwork.agents.sub_agents import called_agent, find_cycle, is_agent_tool, named_functions
from loomwork.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from loomwork.guardrails.custom import ProcessorRegistry
from loomwork.guardrails.settings import CustomProcessorRef
from loomwork.memory.settings import invalid_argument_from
from loomwork.paging import decode_text_token, encode_text_token
from loomwork.tools import ToolRegistry
from loomwork.tools.mcp_names import EVERY_TOOL, is_mcp_name, parse_mcp_name
from loomwork.tools.mcp_source import McpTools

DEFAULT_PAGE = 50
MAX_PAGE = 1000


class AgentCatalog:
    """Looks agents up by tenant and name; creates, updates and deletes stored ones."""

    def __init__(
        self,
        code: AgentRegistry,
        store: AgentStore,
        tools: ToolRegistry,
        mcp: McpTools | None = None,
        processors: ProcessorRegistry | None = None,
    ) -> None:
        self.code = code
        self.store = store
        self.tools = tools
        self.mcp = mcp
        self.processors = processors or ProcessorRegistry()  # custom guardrail processors

    async def find(self, tenant: str, name: str) -> AgentDefinition | None:
        """The agent the tenant sees by that name (code first), or None."""
        return self.code.find(name) or await self.store.find(tenant, name)

    async def get(self, tenant: str, name: str) -> AgentDefinition:
        agent = await self.find(tenant, name)
        if agent is None:
            raise NotFound(f"agent {name!r} not found")
        return agent

    async def list(
        self,
        tenant: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        source: AgentSource | None = None,
    ) -> tuple[list[AgentDefinition], str]:
        """One page of agents ordered by name, and the token of the next page ('' at the end)."""
        if not 0 <= page_size <= MAX_PAGE:
            raise InvalidArgument.field("page_size", f"must be between 0 and {MAX_PAGE}")
        limit = page_size or DEFAULT_PAGE
        scope = f"agents\x00{source or ''}"
        after = decode_text_token(page_token, scope)
        found: list[AgentDefinition] = []
        if source in (None, "code"):
            found += [a for a in self.code.all() if a.name > after][: limit + 1]
        if source in (None, "api"):
            found += await self.store.list(tenant, after=after, limit=limit + 1)
        found.sort(key=lambda a: a.name)
        page = found[:limit]
        token = encode_text_token(page[-1].name, scope) if len(found) > limit else ""
        return page, token

    async def every(self, tenant: str) -> builtins.list[AgentDefinition]:
        """Every agent the tenant sees, by name."""
        agents, token = await self.list(tenant, page_size=MAX_PAGE)
        while token:
            more, token = await self.list(tenant, page_size=MAX_PAGE, page_token=token)
            agents += more
        return agents

    async def _validated(self, tenant: str, data: Mapping[str, Any]) -> AgentDefinition:
        try:
            agent = AgentDefinition.model_validate({**data, "source": "api"})
        except ValidationError as exc:
            raise invalid_argument_from(exc, prefix="agent") from None
        for i, name in enumerate(agent.tool_names):
            field = f"agent.tool_names[{i}]"
            if is_mcp_name(name):
                await self._check_mcp_name(tenant, name, field)
            elif is_agent_tool(name):
                if called_agent(name) != agent.name:  # itself: a cycle (below)
                    await self._check_agent(tenant, called_agent(name), field)
            elif not self.tools.has(name):
                raise InvalidArgument.field(
                    field, f"{name!r} is not a registered tool (see ListTools)"
                )
        for i, name in enumerate(agent.handoffs):
            if name == agent.name:
                raise InvalidArgument.field(f"agent.handoffs[{i}]", "an agent hands off to others")
            await self._check_agent(tenant, name, f"agent.handoffs[{i}]")
        await self._check_agents_called(tenant, agent)
        self._check_processors(agent)
        return agent

    def _check_processors(self, agent: AgentDefinition) -> None:
        """A custom guardrail processor must be one the modules define."""
        for stage in ("input_processors", "output_processors"):
            for i, config in enumerate(getattr(agent, stage)):
                if isinstance(config, CustomProcessorRef) and not self.processors.has(config.name):
                    raise InvalidArgument.field(
                        f"agent.{stage}[{i}].custom.name",
                        f"{config.name!r} is not a registered processor (LOOMWORK_TOOL_MODULES)",
                    )

    async def _check_agent(self, tenant: str, name: str, field: str) -> None:
        """An agent called as a tool or handed off to must exist (an agent deleted later is
        left out of its callers' runs)."""
        if not AGENT_NAME.match(name):
            raise InvalidArgument.field(field, f"{name!r} is not an agent name")
        if await self.find(tenant, name) is None:
            raise InvalidArgument.field(field, f"there is no agent {name!r} (see ListAgents)")

    async def _check_agents_called(self, tenant: str, agent: AgentDefinition) -> None:
        """The model tells tools, agents and handoffs apart by name; and no agent calls
        itself as a tool, directly or through others (handoffs alone may go round)."""
        seen: set[str] = set()
        for function, field in named_functions(agent.tool_names, agent.handoffs):
            if function in seen:
                raise InvalidArgument.field(
                    f"agent.{field}", f"the model would see two tools named {function!r}"
                )
            seen.add(function)

        async def lookup(name: str) -> AgentDefinition | None:
            return agent if name == agent.name else await self.find(tenant, name)

        cycle = await find_cycle(agent, lookup)
        if cycle is not None:
            raise InvalidArgument.field(
                f"agent.{cycle.field}",
                "makes a cycle of agents calling each other as tools: " + " → ".join(cycle.path),
            )

    async def _check_mcp_name(self, tenant: str, name: str, field: str) -> None:
        """`mcp:<server>/<tool>` or `mcp:<server>/*`; for a server the tenant may use, the
        tool must be one it listed (a server registered later is not checked)."""
        try:
            ref = parse_mcp_name(name)
        except ValueError as exc:
            raise InvalidArgument.field(field, f"{name!r}: {exc}") from None
        known = await self.mcp.tool_names(tenant, ref.server) if self.mcp is not None else None
        if known is not None and ref.tool != EVERY_TOOL and ref.tool not in known:
            raise InvalidArgument.field(
                field,
                f"MCP server {ref.server!r} lists no tool {ref.tool!r} "
                "(RefreshMcpServer if it has one since)",
            )

    async def create(self, tenant: str, data: Mapping[str, Any]) -> AgentDefinition:
        agent = await self._validated(tenant, data)
        if self.code.find(agent.name) is not None:
            raise AlreadyExists(f"agent {agent.name!r} is defined in code")
        return await self.store.create(tenant, agent)

    async def _stored(self, tenant: str, name: str, verb: str) -> AgentDefinition:
        if self.code.find(name) is not None:
            raise FailedPrecondition(f"agent {name!r} is defined in code and cannot be {verb}")
        agent = await self.store.find(tenant, name)
        if agent is None:
            raise NotFound(f"agent {name!r} not found")
        return agent

    async def stored(self, tenant: str, name: str) -> AgentDefinition:
        """A stored agent, to be updated; FailedPrecondition for an agent defined in code."""
        return await self._stored(tenant, name, "updated")

    async def replace(self, tenant: str, data: Mapping[str, Any]) -> AgentDefinition:
        """Store a whole new definition of an existing stored agent."""
        agent = await self._validated(tenant, data)
        await self._stored(tenant, agent.name, "updated")
        return await self.store.replace(tenant, agent)

    async def delete(self, tenant: str, name: str) -> None:
        await self._stored(tenant, name, "deleted")
        await self.store.delete(tenant, name)
