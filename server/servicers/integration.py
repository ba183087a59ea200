"""IntegrationService: webhook sources and deliveries, OAuth providers and connections, MCP
servers."""

from __future__ import annotations

import grpc

from loomwork.errors import FailedPrecondition, InvalidArgument
from loomwork.integrations.components import Integrations
from protos.loomwork.v1 import integration_pb2 as pb
from protos.loomwork.v1 import integration_pb2_grpc
from server.runtime import Runtime
from server.servicers import integration_convert as convert
from server.servicers.tenancy import tenant


def _required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument.field(field, "is required")
    return value


class IntegrationServicer(integration_pb2_grpc.IntegrationServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @property
    def integrations(self) -> Integrations:
        if self.runtime.integrations is None:
            raise FailedPrecondition("integrations are not configured in this process")
        return self.runtime.integrations

    # -- webhook sources

    async def CreateWebhookSource(
        self, request: pb.CreateWebhookSourceRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateWebhookSourceResponse:
        if not request.HasField("webhook_source"):
            raise InvalidArgument.field("webhook_source", "is required")
        new = convert.new_source_from_proto(request.webhook_source)
        source = await self.integrations.sources.create(tenant(), new)
        return pb.CreateWebhookSourceResponse(webhook_source=convert.source_to_proto(source))

    async def GetWebhookSource(
        self, request: pb.GetWebhookSourceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetWebhookSourceResponse:
        source_id = _required(request.webhook_source_id, "webhook_source_id")
        source = await self.integrations.sources.get(tenant(), source_id)
        return pb.GetWebhookSourceResponse(webhook_source=convert.source_to_proto(source))

    async def ListWebhookSources(
        self, request: pb.ListWebhookSourcesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWebhookSourcesResponse:
        page = await self.integrations.sources.list(
            tenant(), page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListWebhookSourcesResponse(
            webhook_sources=[convert.source_to_proto(s) for s in page.sources],
            next_page_token=page.next_page_token,
        )

    async def DeleteWebhookSource(
        self, request: pb.DeleteWebhookSourceRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteWebhookSourceResponse:
        source_id = _required(request.webhook_source_id, "webhook_source_id")
        await self.integrations.sources.delete(tenant(), source_id)
        return pb.DeleteWebhookSourceResponse()

    # -- deliveries

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWebhookDeliveriesResponse:
        page = await self.integrations.deliveries.list(
            tenant(),
            source_id=request.webhook_source_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListWebhookDeliveriesResponse(
            webhook_deliveries=[convert.delivery_to_proto(d) for d in page.deliveries],
            next_page_token=page.next_page_token,
        )

    async def GetWebhookDelivery(
        self, request: pb.GetWebhookDeliveryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetWebhookDeliveryResponse:
        source_id = _required(request.webhook_source_id, "webhook_source_id")
        delivery_id = _required(request.webhook_delivery_id, "webhook_delivery_id")
        delivery = await self.integrations.deliveries.get(tenant(), source_id, delivery_id)
        return pb.GetWebhookDeliveryResponse(webhook_delivery=convert.delivery_to_proto(delivery))

    # -- OAuth

    async def CreateOAuthProvider(
        self, request: pb.CreateOAuthProviderRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateOAuthProviderResponse:
        if not request.HasField("oauth_provider"):
            raise InvalidArgument.field("oauth_provider", "is required")
        new = convert.new_provider_from_proto(request.oauth_provider)
        provider = await self.integrations.providers.create(tenant(), new)
        redirect = self.integrations.oauth.redirect_uri(provider.id)
        return pb.CreateOAuthProviderResponse(
            oauth_provider=convert.provider_to_proto(provider, redirect)
        )

    async def ListOAuthProviders(
        self, request: pb.ListOAuthProvidersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListOAuthProvidersResponse:
        page = await self.integrations.providers.list(
            tenant(), page_size=request.page_size, page_token=request.page_token
        )
        oauth = self.integrations.oauth
        return pb.ListOAuthProvidersResponse(
            oauth_providers=[
                convert.provider_to_proto(p, oauth.redirect_uri(p.id)) for p in page.providers
            ],
            next_page_token=page.next_page_token,
        )

    async def DeleteOAuthProvider(
        self, request: pb.DeleteOAuthProviderRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteOAuthProviderResponse:
        provider_id = _required(request.oauth_provider_id, "oauth_provider_id")
        await self.integrations.providers.delete(tenant(), provider_id)
        return pb.DeleteOAuthProviderResponse()

    async def StartAuthorization(
        self, request: pb.StartAuthorizationRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartAuthorizationResponse:
        started = await self.integrations.oauth.start_authorization(
            tenant(), request.oauth_provider_id, scopes=list(request.scopes), label=request.label
        )
        return pb.StartAuthorizationResponse(
            authorization_url=started.authorization_url,
            state=started.state,
            connection_id=started.connection_id,
        )

    async def ListConnections(
        self, request: pb.ListConnectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListConnectionsResponse:
        page = await self.integrations.connections.list(
            tenant(),
            provider_id=request.oauth_provider_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListConnectionsResponse(
            connections=[convert.connection_to_proto(c) for c in page.connections],
            next_page_token=page.next_page_token,
        )

    async def GetConnection(
        self, request: pb.GetConnectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConnectionResponse:
        connection_id = _required(request.connection_id, "connection_id")
        connection = await self.integrations.connections.get(tenant(), connection_id)
        return pb.GetConnectionResponse(connection=convert.connection_to_proto(connection))

    async def DeleteConnection(
        self, request: pb.DeleteConnectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteConnectionResponse:
        connection_id = _required(request.connection_id, "connection_id")
        await self.integrations.connections.delete(tenant(), connection_id)
        return pb.DeleteConnectionResponse()

    # -- MCP servers

    async def CreateMcpServer(
        self, request: pb.CreateMcpServerRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateMcpServerResponse:
        if not request.HasField("mcp_server"):
            raise InvalidArgument.field("mcp_server", "is required")
        new = convert.new_mcp_server_from_proto(request.mcp_server)
        server = await self.integrations.mcp.create(tenant(), new)
        return pb.CreateMcpServerResponse(mcp_server=convert.mcp_server_to_proto(server))

    async def GetMcpServer(
        self, request: pb.GetMcpServerRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMcpServerResponse:
        name = _required(request.mcp_server_name, "mcp_server_name")
        server = await self.integrations.mcp.get(tenant(), name)
        return pb.GetMcpServerResponse(mcp_server=convert.mcp_server_to_proto(server))

    async def ListMcpServers(
        self, request: pb.ListMcpServersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMcpServersResponse:
        servers, token = await self.integrations.mcp.list_servers(
            tenant(), page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListMcpServersResponse(
            mcp_servers=[convert.mcp_server_to_proto(s) for s in servers], next_page_token=token
        )

    async def DeleteMcpServer(
        self, request: pb.DeleteMcpServerRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteMcpServerResponse:
        name = _required(request.mcp_server_name, "mcp_server_name")
        await self.integrations.mcp.delete(tenant(), name)
        return pb.DeleteMcpServerResponse()

    async def RefreshMcpServer(
        self, request: pb.RefreshMcpServerRequest, context: grpc.aio.ServicerContext
    ) -> pb.RefreshMcpServerResponse:
        name = _required(request.mcp_server_name, "mcp_server_name")
        server = await self.integrations.mcp.refresh(tenant(), name)
        return pb.RefreshMcpServerResponse(mcp_server=convert.mcp_server_to_proto(server))
