"""Finding a run's Temporal workflow id from its tenant and run id, durably."""

from __future__ import annotations

import contextlib
import logging

from redis.exceptions import RedisError
from temporalio.client import Client

from loomwork.agents.directory import RunDirectory

log = logging.getLogger(__name__)


def visibility_literal(value: str) -> str:
    """A string literal of Temporal's visibility query language."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class RunLookup:
    """Run id -> workflow id: the run directory first (Redis: fast, but a cache), else
    Temporal visibility, which knows every run Temporal keeps, so a run is found after Redis
    lost its keys (a restart without persistence, a failover, FLUSHALL) or its 7 days."""

    def __init__(self, directory: RunDirectory, client: Client, workflow_type: str) -> None:
        self.directory = directory
        self.client = client
        self.workflow_type = workflow_type

    async def workflow_id(self, tenant: str, run_id: str) -> str | None:
        try:
            found = await self.directory.workflow_id(tenant, run_id)
        except RedisError as exc:  # the directory is a cache: Temporal still knows
            log.warning("run directory unreachable (%s): asking Temporal visibility", exc)
            found = None
        if found is not None:
            return found
        query = (
            f"WorkflowType = {visibility_literal(self.workflow_type)}"
            f" AND LoomworkTenant = {visibility_literal(tenant)}"
            f" AND LoomworkRun = {visibility_literal(run_id)}"
        )
        async for execution in self.client.list_workflows(query, limit=1):
            # Found all the same if Redis is down; the next lookup asks Temporal again.
            with contextlib.suppress(RedisError):
                await self.directory.record(tenant, run_id, execution.id)
            return execution.id
        return None
