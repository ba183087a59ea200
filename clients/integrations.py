"""`client.integrations`: webhook sources, OAuth connections and MCP servers
(IntegrationService)."""

# `timeout=` on the async methods is the gRPC deadline of the call, as in grpc's own API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import Mapping, Sequence

from clients.transport import Transport
from protos.loomwork.v1 import integration_pb2, integration_pb2_grpc

__all__ = ["IntegrationsClient"]


class IntegrationsClient:
    """Webhook sources and their deliveries; OAuth providers, authorizations, connections;
    MCP servers whose tools agents call."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = integration_pb2_grpc.IntegrationServiceStub(transport.channel)

    # -- webhooks

    async def create_webhook_source(
        self,
        secret: str,
        *,
        routes: Sequence[integration_pb2.WebhookRoute] = (),
        display_name: str = "",
        timeout: float | None = None,
    ) -> integration_pb2.WebhookSource:
        """A webhook source; POST signed events to its `path` on the HTTP endpoint."""
        source = integration_pb2.WebhookSource(
            secret=secret, routes=list(routes), display_name=display_name
        )
        response = await self._transport.call(
            self._stub.CreateWebhookSource,
            integration_pb2.CreateWebhookSourceRequest(webhook_source=source),
            integration_pb2.CreateWebhookSourceResponse,
            timeout,
        )
        return response.webhook_source

    async def list_webhook_deliveries(
        self,
        webhook_source_id: str = "",
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> integration_pb2.ListWebhookDeliveriesResponse:
        return await self._transport.call(
            self._stub.ListWebhookDeliveries,
            integration_pb2.ListWebhookDeliveriesRequest(
                webhook_source_id=webhook_source_id, page_size=page_size, page_token=page_token
            ),
            integration_pb2.ListWebhookDeliveriesResponse,
            timeout,
        )

    # -- OAuth

    async def create_oauth_provider(
        self, provider: integration_pb2.OAuthProvider, *, timeout: float | None = None
    ) -> integration_pb2.OAuthProvider:
        response = await self._transport.call(
            self._stub.CreateOAuthProvider,
            integration_pb2.CreateOAuthProviderRequest(oauth_provider=provider),
            integration_pb2.CreateOAuthProviderResponse,
            timeout,
        )
        return response.oauth_provider

    async def start_authorization(
        self,
        oauth_provider_id: str,
        *,
        scopes: Sequence[str] = (),
        label: str = "",
        timeout: float | None = None,
    ) -> integration_pb2.StartAuthorizationResponse:
        """The URL to send the user to; the connection exists once they come back."""
        return await self._transport.call(
            self._stub.StartAuthorization,
            integration_pb2.StartAuthorizationRequest(
                oauth_provider_id=oauth_provider_id, scopes=list(scopes), label=label
            ),
            integration_pb2.StartAuthorizationResponse,
            timeout,
        )

    async def list_connections(
        self,
        oauth_provider_id: str = "",
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> integration_pb2.ListConnectionsResponse:
        return await self._transport.call(
            self._stub.ListConnections,
            integration_pb2.ListConnectionsRequest(
                oauth_provider_id=oauth_provider_id, page_size=page_size, page_token=page_token
            ),
            integration_pb2.ListConnectionsResponse,
            timeout,
        )

    async def get_connection(
        self, connection_id: str, *, timeout: float | None = None
    ) -> integration_pb2.Connection:
        response = await self._transport.call(
            self._stub.GetConnection,
            integration_pb2.GetConnectionRequest(connection_id=connection_id),
            integration_pb2.GetConnectionResponse,
            timeout,
        )
        return response.connection

    async def delete_connection(self, connection_id: str, *, timeout: float | None = None) -> None:
        await self._transport.call(
            self._stub.DeleteConnection,
            integration_pb2.DeleteConnectionRequest(connection_id=connection_id),
            integration_pb2.DeleteConnectionResponse,
            timeout,
        )

    # -- MCP servers

    async def create_mcp_server(
        self,
        name: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        oauth_connection_id: str = "",
        timeout: float | None = None,
    ) -> integration_pb2.McpServer:
        """Register a streamable HTTP MCP server once its tools could be listed; agents name
        them `mcp:<name>/<tool>`. `headers` are stored encrypted and never returned."""
        server = integration_pb2.McpServer(
            name=name, url=url, headers=dict(headers or {}), oauth_connection_id=oauth_connection_id
        )
        response = await self._transport.call(
            self._stub.CreateMcpServer,
            integration_pb2.CreateMcpServerRequest(mcp_server=server),
            integration_pb2.CreateMcpServerResponse,
            timeout,
        )
        return response.mcp_server

    async def get_mcp_server(
        self, name: str, *, timeout: float | None = None
    ) -> integration_pb2.McpServer:
        response = await self._transport.call(
            self._stub.GetMcpServer,
            integration_pb2.GetMcpServerRequest(mcp_server_name=name),
            integration_pb2.GetMcpServerResponse,
            timeout,
        )
        return response.mcp_server

    async def list_mcp_servers(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> integration_pb2.ListMcpServersResponse:
        return await self._transport.call(
            self._stub.ListMcpServers,
            integration_pb2.ListMcpServersRequest(page_size=page_size, page_token=page_token),
            integration_pb2.ListMcpServersResponse,
            timeout,
        )

    async def refresh_mcp_server(
        self, name: str, *, timeout: float | None = None
    ) -> integration_pb2.McpServer:
        """List the server's tools again now."""
        response = await self._transport.call(
            self._stub.RefreshMcpServer,
            integration_pb2.RefreshMcpServerRequest(mcp_server_name=name),
            integration_pb2.RefreshMcpServerResponse,
            timeout,
        )
        return response.mcp_server

    async def delete_mcp_server(self, name: str, *, timeout: float | None = None) -> None:
        await self._transport.call(
            self._stub.DeleteMcpServer,
            integration_pb2.DeleteMcpServerRequest(mcp_server_name=name),
            integration_pb2.DeleteMcpServerResponse,
            timeout,
        )
