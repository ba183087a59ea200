"""Workflow definitions that worker processes started by tests load through
LOOMWORK_WORKFLOW_MODULES=tests.workflow_fixtures."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel

from loomwork.flows import RetryPolicy, StepContext, Workflow, default_registry, step


class Job(BaseModel):
    name: str


class JobDone(BaseModel):
    name: str
    attempt: int


@step(
    "work",
    input=Job,
    output=JobDone,
    # The default timeout (5 minutes): a killed worker's attempt is retried once its heartbeats
    # stop, not once the timeout passes.
    retry=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
)
async def work(job: Job, ctx: StepContext) -> JobDone:
    """The first attempt announces itself in Redis and then hangs (its worker gets killed)."""
    if ctx.attempt == 1:
        await ctx.services["redis"].set(f"test:wf-kill:{ctx.run_id}", "started", ex=300)
        await asyncio.sleep(3600)
    return JobDone(name=job.name, attempt=ctx.attempt)


KILLABLE = Workflow("killable", input=Job, output=JobDone).then(work)
if not default_registry.contains(KILLABLE.commit().id, KILLABLE.version):
    default_registry.register(KILLABLE)
