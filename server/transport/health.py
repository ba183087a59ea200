"""grpc.health.v1: SERVING only while Postgres, Redis, Temporal (and a memory store of
another kind, DynamoDB; and whatever else the process is given to check, such as
`loomwork up`'s worker process) all answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from grpc_health.v1 import health, health_pb2
from redis.asyncio import Redis
from temporalio.client import Client

from loomwork.diagnostics import check_postgres, check_redis
from loomwork.storage.database import Database
from server.temporal import temporal_reachable

log = logging.getLogger(__name__)

# Something else the process depends on: its name, and a probe saying what is wrong with it
# (None: nothing is).
ExtraCheck = tuple[str, Callable[[], Awaitable[str | None]]]


class HealthMonitor:
    """Probes the dependencies every `interval` seconds and sets every service's status."""

    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        services: list[str],
        *,
        db: Database,
        redis: Redis,
        temporal: Client,
        store_check: tuple[str, Callable[[], Awaitable[bool]]] | None = None,
        checks: Sequence[ExtraCheck] = (),
        interval: float = 2.0,
    ) -> None:
        self.servicer = servicer
        self.services = ["", *services]
        self.db = db
        self.redis = redis
        self.temporal = temporal
        self.store_check = store_check  # (name, probe) of a memory store not probed above
        self.checks = list(checks)
        self.interval = interval
        self.last_problems: list[str] | None = None
        self._task: asyncio.Task[None] | None = None

    async def probe(self) -> list[str]:
        """Names and reasons of the dependencies that do not answer (empty when all do)."""
        (pg, rd, tp, store), others = await asyncio.gather(
            asyncio.gather(
                check_postgres(self.db),
                check_redis(self.redis),
                temporal_reachable(self.temporal),
                self._store_answers(),
            ),
            asyncio.gather(*(probe() for _, probe in self.checks)),
        )
        problems = [f"{c.name}: {c.detail}" for c in (pg, rd) if not c.ok]
        if not tp:
            problems.append("temporal: not reachable")
        if not store and self.store_check:
            problems.append(f"{self.store_check[0]}: the memory store does not answer")
        named = zip((name for name, _ in self.checks), others, strict=True)
        problems += [f"{name}: {problem}" for name, problem in named if problem]
        return problems

    async def _store_answers(self) -> bool:
        return self.store_check is None or await self.store_check[1]()

    async def update(self) -> None:
        problems = await self.probe()
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if not problems
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if problems != self.last_problems:
            if problems:
                log.warning("not serving: %s", "; ".join(problems))
            elif self.last_problems:
                log.info("dependencies reachable again: serving")
            self.last_problems = problems
        for service in self.services:
            await self.servicer.set(service, status)

    async def _loop(self) -> None:
        while True:
            try:
                await self.update()
            except Exception:
                log.exception("health probe failed")
            await asyncio.sleep(self.interval)

    async def start(self) -> None:
        await self.update()
        self._task = asyncio.create_task(self._loop(), name="health-monitor")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for service in self.services:
            await self.servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
