"""Roles: only role `admin` creates, updates and deletes agents, webhook sources, OAuth
providers and MCP servers; any authenticated caller runs, reads and resumes. On gRPC and for
what /mcp's tools do. The session's tokens: `t-alpha` (tenant alpha, admin) and
`t-alpha-user` (tenant alpha, no role)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from loomwork.errors import PermissionDenied
from loomwork.testing import ScriptedModelServer, Turn
from protos.loomwork import v1 as protos_v1
from protos.loomwork.v1 import (
    access_pb2,
    agent_pb2,
    agent_pb2_grpc,
    integration_pb2,
    integration_pb2_grpc,
    run_pb2,
    workflow_pb2,
    workflow_pb2_grpc,
)
from server.servicers.tenancy import current_tenant
from server.transport.access import RULES, Principal, current_principal
from server.transport.grpc_app import SERVICE_NAMES
from server.transport.http import build_http_app
from server.transport.mcp_tools import NO_GRPC_CONTEXT, McpTools
from tests.support import auth, serving, unique
from tests.test_mcp_endpoint import call, mcp_client

USER = "t-alpha-user"
# What the issue names as admin-only; everything else is for any authenticated caller.
ADMIN_ONLY = {
    "loomwork.v1.AgentService": {"CreateAgent", "UpdateAgent", "DeleteAgent"},
    "loomwork.v1.IntegrationService": {
        "CreateWebhookSource",
        "DeleteWebhookSource",
        "CreateOAuthProvider",
        "DeleteOAuthProvider",
        "CreateMcpServer",
        "DeleteMcpServer",
    },
    "loomwork.v1.WorkflowService": {"CreateSchedule", "PauseSchedule", "DeleteSchedule"},
}


def _proto_services() -> dict[str, Any]:
    """Every service of every generated module of protos/loomwork/v1, by full name."""
    services = {}
    for info in pkgutil.iter_modules(protos_v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"{protos_v1.__name__}.{info.name}")
            services.update(module.DESCRIPTOR.services_by_name)
    return {s.full_name: s for s in services.values()}


def test_every_rpc_has_an_access_decision_and_admin_is_exactly_the_configuration() -> None:
    services = _proto_services()
    assert set(services) == set(SERVICE_NAMES)  # every service the server serves, no other
    undecided, admin = [], set()
    for service in services.values():
        for method in service.methods:
            level = method.GetOptions().Extensions[access_pb2.access]
            if level == access_pb2.ACCESS_UNSPECIFIED:
                undecided.append(method.full_name)
            if level == access_pb2.ACCESS_ADMIN:
                admin.add((service.full_name, method.name))
            # The server enforces what the proto says, for this very path.
            assert RULES.governs(f"/{service.full_name}/{method.name}")
    assert undecided == [], "each rpc needs `option (loomwork.v1.access) = ...;`"
    assert admin == {(s, m) for s, names in ADMIN_ONLY.items() for m in names}


def test_an_rpc_without_a_decision_is_refused_for_everyone() -> None:
    rules = type(RULES)()
    path = "/loomwork.v1.AgentService/GetAgent"
    rules.levels[path] = access_pb2.ACCESS_UNSPECIFIED
    with pytest.raises(PermissionDenied):
        rules.authorize(Principal("alpha", frozenset({"admin"})), path)


async def test_a_caller_without_role_admin_cannot_configure(channel, token) -> None:
    """Each admin-only rpc: PERMISSION_DENIED naming the role for the plain caller, before
    the request is even looked at; the admin's same (empty) request gets past the check."""
    stubs = {
        "loomwork.v1.AgentService": (agent_pb2_grpc.AgentServiceStub(channel), agent_pb2),
        "loomwork.v1.IntegrationService": (
            integration_pb2_grpc.IntegrationServiceStub(channel),
            integration_pb2,
        ),
        "loomwork.v1.WorkflowService": (
            workflow_pb2_grpc.WorkflowServiceStub(channel),
            workflow_pb2,
        ),
    }
    for service, names in ADMIN_ONLY.items():
        stub, module = stubs[service]
        for name in sorted(names):
            request: Message = getattr(module, f"{name}Request")()
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await getattr(stub, name)(request, metadata=auth(USER))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
            assert "'admin'" in (denied.value.details() or ""), denied.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as checked:
                await getattr(stub, name)(request, metadata=auth(token))
            assert checked.value.code() != grpc.StatusCode.PERMISSION_DENIED, name


async def test_a_plain_caller_runs_reads_and_resumes_what_the_admin_configured(
    agents, token, model: ScriptedModelServer
) -> None:
    name = unique("roles-agent")
    created = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(name=name, description="d", instructions="Be brief.")
        ),
        metadata=auth(token),
    )
    assert created.agent.name == name
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await agents.DeleteAgent(agent_pb2.DeleteAgentRequest(agent_name=name), metadata=auth(USER))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    got = await agents.GetAgent(agent_pb2.GetAgentRequest(agent_name=name), metadata=auth(USER))
    assert got.agent.instructions == "Be brief."
    model.push(Turn(text="Done."))
    run = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name=name, prompt="Go."), metadata=auth(USER)
        )
    ).run
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED and run.output.text == "Done."
    # The admin of the same tenant sees the plain caller's run: one tenant, two roles.
    seen = await agents.GetRun(
        agent_pb2.AgentServiceGetRunRequest(run_id=run.id), metadata=auth(token)
    )
    assert seen.run.output.text == "Done."


async def test_a_plain_caller_runs_an_agent_over_mcp(
    runtime, worker, model: ScriptedModelServer
) -> None:
    model.push(Turn(text="Hello over MCP."))
    async with serving(build_http_app(runtime)) as url, mcp_client(f"{url}/mcp", USER) as client:
        run = await call(client, "run_agent", agent_name="assistant", prompt="Hi.")
    assert run["status"] == "SUCCEEDED" and run["text"] == "Hello over MCP."


async def test_mcp_tools_call_the_servicers_with_the_roles_of_grpc(runtime) -> None:
    """What /mcp's tools do goes through the same rules: a tool that configured an agent
    would need role admin, as CreateAgent does on gRPC."""
    tools = McpTools(runtime)
    request = agent_pb2.CreateAgentRequest(
        agent=agent_pb2.Agent(name=unique("mcp-made"), description="d", instructions="i")
    )
    plain = current_principal.set(Principal("alpha", frozenset()))
    tenant = current_tenant.set("alpha")
    try:
        with pytest.raises(PermissionDenied, match="'admin'"):
            await tools.agents.CreateAgent(request, NO_GRPC_CONTEXT)
        listed = await tools.agents.ListAgents(agent_pb2.ListAgentsRequest(), NO_GRPC_CONTEXT)
        assert listed.agents  # reading needs no role
    finally:
        current_tenant.reset(tenant)
        current_principal.reset(plain)
