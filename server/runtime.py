"""The live dependencies of a Loomwork process: database, Redis, Temporal client, domain objects."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from temporalio.client import Client

from loomwork.config import Settings
from loomwork.embeddings import embedding_provider, resolve_dimension
from loomwork.memory.memory import Memory
from loomwork.memory.recall import MessageRecall
from loomwork.storage.database import Database
from loomwork.storage.migrations import apply_migrations
from loomwork.storage.postgres import PostgresMemoryStorage
from server.temporal import connect_temporal

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    redis: Redis
    temporal: Client
    memory: Memory
    recall: MessageRecall

    @classmethod
    async def open(cls, settings: Settings, *, migrate: bool = True) -> Runtime:
        """Connect everything (waiting for servers that are starting) and apply migrations."""
        if not settings.database_url or not settings.redis_url or not settings.temporal_address:
            raise ValueError("Runtime.open needs database_url, redis_url and temporal_address")
        db = Database(settings.database_url)
        await db.open()
        try:
            if migrate:
                applied = await apply_migrations(db)
                if applied:
                    log.info("applied migrations %s", applied)
            redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
            temporal = await connect_temporal(
                settings.temporal_address, settings.temporal_namespace
            )
            provider = embedding_provider(
                settings.embedding_model,
                base_url=settings.openai_base_url,
                api_key=settings.openai_api_key,
            )
            await resolve_dimension(provider)
            recall = MessageRecall(db, provider)
            if migrate:
                await recall.ensure_space()
        except BaseException:
            await db.close()
            raise
        return cls(settings, db, redis, temporal, Memory(PostgresMemoryStorage(db)), recall)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.db.close()
