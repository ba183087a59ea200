"""Helpers of the WorkflowService tests: calls through the gRPC stub, inputs of the example
workflows, and a test workflow (`flaky`) more than one test module runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from google.protobuf import json_format, struct_pb2
from pydantic import BaseModel

from loomwork.flows import RetryPolicy, StepContext, Workflow, default_registry, step
from protos.loomwork.v1 import workflow_pb2
from tests.support import auth, collect_events

S = workflow_pb2


def as_struct(data: dict) -> struct_pb2.Struct:
    """A Struct of `data`."""
    out = struct_pb2.Struct()
    out.update(data)
    return out


def as_dict(message) -> dict:
    """A message as JSON-like data."""
    return json_format.MessageToDict(message)


async def start_run(workflows, token: str, workflow_id: str, data: dict, **kw) -> S.WorkflowRun:
    """Start a run of `workflow_id` with input `data`; the run as StartRun answers."""
    response = await workflows.StartRun(
        S.WorkflowServiceStartRunRequest(workflow_id=workflow_id, input=as_struct(data), **kw),
        metadata=auth(token),
    )
    return response.run


async def get_run(workflows, token: str, run_id: str) -> S.WorkflowRun:
    """The run as GetRun answers."""
    response = await workflows.GetRun(
        S.WorkflowServiceGetRunRequest(run_id=run_id), metadata=auth(token)
    )
    return response.run


async def wait_run(
    workflows, token: str, run_id: str, done: Callable[[S.WorkflowRun], bool]
) -> S.WorkflowRun:
    """Poll GetRun until `done(run)` holds (30 seconds at most); the run."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        run = await get_run(workflows, token, run_id)
        if done(run):
            return run
        assert asyncio.get_running_loop().time() < deadline, f"run stuck: {run}"
        await asyncio.sleep(0.1)


def has_status(*statuses: int) -> Callable[[S.WorkflowRun], bool]:
    """A `wait_run` condition: the run is in one of `statuses`."""
    return lambda run: run.status in statuses


async def watch_events(
    workflows, token: str, run_id: str, after: int = 0
) -> list[S.WorkflowRunEvent]:
    """Every event of the run after `after`, read by WatchRun to the run's end."""
    stream = workflows.WatchRun(
        S.WorkflowServiceWatchRunRequest(run_id=run_id, after_event_id=after),
        metadata=auth(token),
        timeout=60,
    )
    return await collect_events(stream)


def steps_by_path(run: S.WorkflowRun) -> dict[str, S.WorkflowStepRun]:
    """The run's step executions by path."""
    return {execution.path: execution for execution in run.steps}


ORDER = {
    "customer": "Ada",
    "country": "DE",
    "lines": [{"sku": "loom", "quantity": 2, "unit_price": 50.0}],
}


EXPENSE = {"employee": "Grace", "amount": 250.0, "reason": "conference"}


class Total(BaseModel):
    total: int
    rounds: int = 0


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


@step(
    "flaky",
    input=Total,
    output=Total,
    retry=RetryPolicy(
        max_attempts=4,
        initial_interval=timedelta(milliseconds=50),
        non_retryable_error_types=("Fatal",),
    ),
)
async def flaky(data: Total, ctx: StepContext) -> Total:
    """Fails twice and succeeds on the third attempt; a negative `rounds` fails for good."""
    if data.rounds < 0:
        raise Fatal("cannot continue")
    if ctx.attempt < 3:
        raise Flaky(f"attempt {ctx.attempt} failed")
    return Total(total=data.total, rounds=ctx.attempt)


default_registry.register(Workflow("flaky", input=Total, output=Total).then(flaky))
