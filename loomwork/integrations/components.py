"""Every integrations object of a process, built once from settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from loomwork.integrations.connections import ConnectionStore
from loomwork.integrations.deliveries import DeliveryStore
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

    @classmethod
    def build(
        cls,
        db: Database,
        redis: Redis,
        *,
        secret_key: str | None,
        home: Path,
        public_url: str,
    ) -> Integrations:
        box = secret_box(secret_key, home)
        providers = ProviderStore(db, box)
        connections = ConnectionStore(db, box)
        return cls(
            box=box,
            sources=WebhookSourceStore(db, box),
            deliveries=DeliveryStore(db),
            replay=ReplayGuard(redis),
            providers=providers,
            connections=connections,
            oauth=OAuthConnections(providers, connections, redis, public_url=public_url),
        )

    async def close(self) -> None:
        await self.oauth.close()
