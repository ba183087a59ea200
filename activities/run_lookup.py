"""Finding a run's Temporal workflow id from its tenant and run id, durably."""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict

from redis.exceptions import RedisError
from temporalio.client import Client

from loomwork.agents.directory import RunDirectory

log = logging.getLogger(__name__)

KNOWN_RUNS = 10_000  # runs a lookup remembers, most recently used first


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
        # Runs known to have reached Temporal (started here, or found in its visibility):
        # a run's workflow id never changes once it started, so these need no Redis read.
        self._known: OrderedDict[tuple[str, str], str] = OrderedDict()

    def remember(self, tenant: str, run_id: str, workflow_id: str) -> None:
        """A run this process saw start in Temporal: later lookups answer from memory."""
        self._known[(tenant, run_id)] = workflow_id
        self._known.move_to_end((tenant, run_id))
        if len(self._known) > KNOWN_RUNS:
            self._known.popitem(last=False)

    async def workflow_id(self, tenant: str, run_id: str) -> str | None:
        known = self._known.get((tenant, run_id))
        if known is not None:
            self._known.move_to_end((tenant, run_id))
            return known
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
            self.remember(tenant, run_id, execution.id)
            return execution.id
        return None
