"""The tenant's quotas as the server applies them when it starts a run (an agent run, a
workflow run, a RAG answer): tokens per day, and a concurrent-run slot whose run Temporal
says is still open."""

from __future__ import annotations

from functools import partial

from loomwork.usage.quotas import QuotaStatus
from server.runtime import Runtime
from server.temporal import workflow_open


async def admit_run(runtime: Runtime, tenant: str, workflow_id: str) -> bool:
    """Admit the run about to start as `workflow_id`, or raise QuotaExceeded naming the
    quota; True when it took a concurrent-run slot (`refuse_run` if its start then fails)."""
    return await runtime.usage.quotas.admit(
        tenant, workflow_id, partial(workflow_open, runtime.temporal)
    )


async def refuse_run(runtime: Runtime, tenant: str, workflow_id: str, slot: bool) -> None:
    """The admitted run did not start: its slot, if it took one, is free again."""
    if slot:
        await runtime.usage.quotas.refused(tenant, workflow_id)


async def quota_status(runtime: Runtime, tenant: str) -> QuotaStatus:
    """The tenant's quota and what it uses of it now (GetQuota)."""
    return await runtime.usage.quotas.status(tenant, partial(workflow_open, runtime.temporal))
