"""Canceling workflow runs: one waiting on a timer, one whose step is running."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest

from loomwork.flows import RetryPolicy, StepContext, Workflow, default_registry, step
from protos.loomwork.v1 import workflow_pb2
from tests.support import auth
from tests.workflow_support import (
    Total,
    has_status,
    start_run,
    steps_by_path,
    wait_run,
    watch_events,
)

S = workflow_pb2


default_registry.register(
    Workflow("long-sleep", input=Total, output=Total).sleep("nap", timedelta(hours=1))
)


async def test_cancel_run(workflows, token) -> None:
    run = await start_run(workflows, token, "long-sleep", {"total": 1})
    waiting = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_WAITING))
    assert steps_by_path(waiting)["nap"].status == S.WORKFLOW_STEP_STATUS_WAITING
    canceled = await workflows.CancelRun(
        S.WorkflowServiceCancelRunRequest(run_id=run.id, reason="not needed"),
        metadata=auth(token),
    )
    assert canceled.run.id == run.id
    done = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_CANCELED))
    assert done.error.reason == "CANCELED" and done.error.message == "not needed"
    assert steps_by_path(done)["nap"].status == S.WORKFLOW_STEP_STATUS_CANCELED
    events = await watch_events(workflows, token, run.id)
    assert events[-1].run_finished.status == S.WORKFLOW_RUN_STATUS_CANCELED
    # Canceling again is a no-op; a succeeded run cannot be canceled.
    await workflows.CancelRun(
        S.WorkflowServiceCancelRunRequest(run_id=run.id), metadata=auth(token)
    )
    finished = await start_run(workflows, token, "flaky", {"total": 1, "rounds": 5})
    await wait_run(workflows, token, finished.id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await workflows.CancelRun(
            S.WorkflowServiceCancelRunRequest(run_id=finished.id), metadata=auth(token)
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@step("linger", input=Total, output=Total, retry=RetryPolicy(timeout=timedelta(minutes=5)))
async def linger(data: Total, ctx: StepContext) -> Total:
    await asyncio.sleep(300)
    return data


default_registry.register(Workflow("lingering", input=Total, output=Total).then(linger))


async def test_cancel_run_while_a_step_runs(workflows, token) -> None:
    run = await start_run(workflows, token, "lingering", {"total": 1})

    def step_running(r: S.WorkflowRun) -> bool:
        return any(s.status == S.WORKFLOW_STEP_STATUS_RUNNING for s in r.steps)

    await wait_run(workflows, token, run.id, step_running)
    await workflows.CancelRun(
        S.WorkflowServiceCancelRunRequest(run_id=run.id, reason="changed my mind"),
        metadata=auth(token),
    )
    done = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_CANCELED))
    assert steps_by_path(done)["linger"].status == S.WORKFLOW_STEP_STATUS_CANCELED
    assert done.error.message == "changed my mind"
