"""Every integrations object of a process, built once from settings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from redis.asyncio import Redis

from loomwork.integrations.connections import ConnectionStore
from loomwork.integrations.deliveries import DeliveryStore
from loomwork.integrations.mcp_client import McpClient
from loomwork.integrations.mcp_servers import McpServerStore, OperatorToolLists
from loomwork.integrations.mcp_tools import McpToolSource, OperatorMcpServer
from loomwork.integrations.oauth import OAuthConnections
from loomwork.integrations.providers import ProviderStore
from loomwork.integrations.replay import ReplayGuard
from loomwork.integrations.secret_box import SecretBox, secret_box
from loomwork.integrations.sources import WebhookSourceStore
from loomwork.storage.database import Database


@dataclass
class Integrations:
    box: SecretBox
    sources: WebhookSourceStore
    deliveries: DeliveryStore
    replay: ReplayGuard
    providers: ProviderStore
    connections: ConnectionStore
    oauth: OAuthConnections
    mcp: McpToolSource

    @classmethod
    def build(
        cls,
        db: Database,
        redis: Redis,
        *,
        secret_key: str | None,
        home: Path,
        public_url: str,
        mcp_servers: dict[str, OperatorMcpServer] | None = None,
        mcp_tools_ttl: timedelta = timedelta(minutes=5),
    ) -> Integrations:
        """`mcp_servers`: the operator's stdio servers (LOOMWORK_MCP_SERVERS, parsed)."""
        box = secret_box(secret_key, home)
        providers = ProviderStore(db, box)
        connections = ConnectionStore(db, box)
        oauth = OAuthConnections(providers, connections, redis, public_url=public_url)
        mcp = McpToolSource(
            McpServerStore(db, box),
            OperatorToolLists(db),
            McpClient(),
            operator=mcp_servers,
            oauth=oauth,
            ttl=mcp_tools_ttl,
        )
        return cls(
            box=box,
            sources=WebhookSourceStore(db, box),
            deliveries=DeliveryStore(db),
            replay=ReplayGuard(redis),
            providers=providers,
            connections=connections,
            oauth=oauth,
            mcp=mcp,
        )

    async def close(self) -> None:
        await self.oauth.close()
        await self.mcp.client.close()
