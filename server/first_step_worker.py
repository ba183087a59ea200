"""A worker process's own task queue for the first steps servers choose it for
(loomwork.agents.first_step_routing): it begins the step a server tells it of, and the run's
first activity, sent to this queue, adopts it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import timedelta

from redis.asyncio import Redis
from temporalio.worker import Worker

from activities.agents import AgentActivities
from loomwork.agents.first_step_routing import FirstStepNotice
from loomwork.config import redis_options
from loomwork.telemetry import continuing
from server.runtime import Runtime

log = logging.getLogger(__name__)


class FirstStepWorker:
    """Polls this process's first-step queue for `agent_start_and_step` and hears the
    servers' notices for it, while `run` runs. Build it after `build_worker` (it shares that
    worker's agent steps, and so the steps begun ahead)."""

    def __init__(self, runtime: Runtime) -> None:
        steps = runtime.agent_steps
        if steps is None:
            raise RuntimeError("build the process's worker (build_worker) first")
        settings = runtime.settings
        self.runtime = runtime
        self.queue = f"{settings.task_queue}-first-step-{uuid.uuid4().hex[:12]}"
        self.worker = Worker(
            runtime.temporal,
            task_queue=self.queue,
            activities=[AgentActivities(steps, settings).start_and_step],
            graceful_shutdown_timeout=timedelta(seconds=10),
            max_heartbeat_throttle_interval=timedelta(seconds=1),
            interceptors=list(runtime.telemetry.worker_interceptors() if runtime.telemetry else ()),
        )
        self._hearing: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Until `shutdown`: poll the queue, hear the notices, stay listed meanwhile."""
        runtime = self.runtime
        # The subscription waits for messages: a client of its own, with no socket timeout.
        assert runtime.settings.redis_url, "the runtime's settings name their Redis"
        redis = Redis.from_url(
            runtime.settings.redis_url, **redis_options(), socket_connect_timeout=2
        )
        self._hearing = asyncio.create_task(
            runtime.first_steps.serve(self.queue, redis, self._follow)
        )
        try:
            await self.worker.run()
        finally:
            await self._stop_hearing()
            await redis.aclose()

    async def shutdown(self) -> None:
        """Unlisted first (servers stop choosing this worker), then the worker's shutdown."""
        await self._stop_hearing()
        await self.worker.shutdown()

    async def _stop_hearing(self) -> None:
        if self._hearing is not None:
            self._hearing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._hearing

    def _follow(self, notice: FirstStepNotice) -> None:
        steps, speculation = self.runtime.agent_steps, self.runtime.speculation
        assert steps is not None
        if notice.op == "begin" and notice.request is not None:
            with continuing(notice.trace):  # the step's spans: in the starting call's trace
                begun = steps.speculate(notice.request)
            if not begun:
                log.info("first step of %s not begun (one is under way, or paused)", notice.key)
        elif notice.op == "confirm":
            speculation.confirm(notice.key)
        else:
            speculation.abandon(notice.key)
