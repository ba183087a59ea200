"""AgentService's definition RPCs (CreateAgent, GetAgent, ListAgents, UpdateAgent,
DeleteAgent, ListTools): the caller's tenant's agents, stored or defined in code, and the
tools they may use."""

from __future__ import annotations

from typing import Any

import grpc

from loomwork.agents.catalog import AgentCatalog
from loomwork.agents.definitions import AgentDefinition
from loomwork.agents.store import AgentStore
from loomwork.agents.sub_agents import AGENT_TOOL_PREFIX
from loomwork.errors import InvalidArgument
from loomwork.paging import (
    decode_text_token,
    encode_text_token,
)
from loomwork.tools import Tool
from loomwork.tools.mcp_source import McpToolInfo
from protos.loomwork.v1 import agent_pb2
from server.runtime import Runtime
from server.servicers import agent_convert
from server.servicers.tenancy import tenant

_UPDATABLE = (
    "description",
    "instructions",
    "model",
    "model_settings",
    "tool_names",
    "memory",
    "max_steps",
    "output_schema",
    "metadata",
    "approval_timeout",
    "handoffs",
    "fallback_models",
    "input_processors",
    "output_processors",
)


class AgentDefinitionRpcs:
    """Mixed into AgentServicer: every call acts on the caller's tenant's agents."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        mcp = runtime.integrations.mcp if runtime.integrations is not None else None
        self.catalog = AgentCatalog(
            runtime.agents, AgentStore(runtime.db), runtime.tools, mcp, runtime.processors
        )

    async def CreateAgent(
        self, request: agent_pb2.CreateAgentRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.CreateAgentResponse:
        if not request.HasField("agent"):
            raise InvalidArgument.field("agent", "is required")
        created = await self.catalog.create(
            tenant(), agent_convert.agent_data_from_proto(request.agent)
        )
        return agent_pb2.CreateAgentResponse(agent=agent_convert.agent_to_proto(created))

    async def GetAgent(
        self, request: agent_pb2.GetAgentRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.GetAgentResponse:
        if not request.agent_name:
            raise InvalidArgument.field("agent_name", "is required")
        agent = await self.catalog.get(tenant(), request.agent_name)
        return agent_pb2.GetAgentResponse(agent=agent_convert.agent_to_proto(agent))

    async def ListAgents(
        self, request: agent_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListAgentsResponse:
        if request.source not in agent_convert.SOURCE_FROM_PROTO:
            raise InvalidArgument.field("source", "is not an AgentSource value")
        agents, token = await self.catalog.list(
            tenant(),
            page_size=request.page_size,
            page_token=request.page_token,
            source=agent_convert.SOURCE_FROM_PROTO[request.source],
        )
        return agent_pb2.ListAgentsResponse(
            agents=[agent_convert.agent_to_proto(a) for a in agents], next_page_token=token
        )

    async def UpdateAgent(
        self, request: agent_pb2.UpdateAgentRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.UpdateAgentResponse:
        if not request.agent.name:
            raise InvalidArgument.field("agent.name", "is required")
        paths = list(request.update_mask.paths)
        for i, path in enumerate(paths):
            if path.split(".")[0] not in _UPDATABLE:
                raise InvalidArgument.field(
                    f"update_mask.paths[{i}]", f"{path!r} is not an updatable field"
                )
        descriptor: Any = agent_pb2.Agent.DESCRIPTOR
        if paths and not request.update_mask.IsValidForDescriptor(descriptor):
            raise InvalidArgument.field("update_mask", "names a field that Agent does not have")
        tenant_id = tenant()
        current = await self.catalog.stored(tenant_id, request.agent.name)
        merged = agent_convert.agent_to_proto(current)
        mask = request.update_mask
        if not paths:  # every updatable field that is set in `agent`
            mask = type(request.update_mask)(
                paths=[f.name for f, _ in request.agent.ListFields() if f.name in _UPDATABLE]
            )
        try:
            mask.MergeMessage(
                request.agent, merged, replace_message_field=True, replace_repeated_field=True
            )
        except ValueError as error:
            raise InvalidArgument.field("update_mask", str(error)) from None
        updated = await self.catalog.replace(tenant_id, agent_convert.agent_data_from_proto(merged))
        return agent_pb2.UpdateAgentResponse(agent=agent_convert.agent_to_proto(updated))

    async def DeleteAgent(
        self, request: agent_pb2.DeleteAgentRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.DeleteAgentResponse:
        if not request.agent_name:
            raise InvalidArgument.field("agent_name", "is required")
        await self.catalog.delete(tenant(), request.agent_name)
        return agent_pb2.DeleteAgentResponse()

    async def ListTools(
        self, request: agent_pb2.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListToolsResponse:
        if not 0 <= request.page_size <= 1000:
            raise InvalidArgument.field("page_size", "must be between 0 and 1000")
        after = decode_text_token(request.page_token, "tools")
        # The worker's tools, the MCP servers' the tenant may use and its agents, by the names
        # agents use.
        tools: dict[str, Tool | McpToolInfo | AgentDefinition] = {
            t.name: t for t in self.runtime.tools.all()
        }
        if self.catalog.mcp is not None:
            tools |= {t.ref.tool_name: t for t in await self.catalog.mcp.listed(tenant())}
        tools |= {f"{AGENT_TOOL_PREFIX}{a.name}": a for a in await self.catalog.every(tenant())}
        rest = sorted(name for name in tools if name > after)
        page = rest[: request.page_size or 100]
        more = len(rest) > len(page)
        return agent_pb2.ListToolsResponse(
            tools=[agent_convert.any_tool_to_proto(tools[name]) for name in page],
            next_page_token=encode_text_token(page[-1], "tools") if more else "",
        )
