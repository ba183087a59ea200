"""Activities over loomwork.diagnostics."""

from __future__ import annotations

from redis.asyncio import Redis
from temporalio import activity

from loomwork.diagnostics import DependencyReport, check_dependencies
from loomwork.storage.database import Database


class DiagnosticsActivities:
    def __init__(self, db: Database, redis: Redis) -> None:
        self.db = db
        self.redis = redis

    @activity.defn(name="check_dependencies")
    async def check_dependencies(self) -> DependencyReport:
        return await check_dependencies(self.db, self.redis)
