"""Waits that end, for workflow runs: a suspended step with a suspend timeout resumes with
its `resume_on_timeout` data, or fails without one; a run whose workflow an operator
terminated is FAILED with the reason, and its streams end."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from pydantic import BaseModel

from loomwork.flows import StepContext, Workflow, default_registry, step
from loomwork.flows.nodes import InvalidDefinition
from protos.loomwork.v1 import workflow_pb2
from tests.support import auth, collect_events, field_violations
from tests.workflow_support import (
    as_dict,
    as_struct,
    has_status,
    start_run,
    steps_by_path,
    wait_run,
    watch_events,
)

S = workflow_pb2


class Request(BaseModel):
    what: str


class Decision(BaseModel):
    approved: bool
    approver: str


class Outcome(BaseModel):
    what: str
    approved: bool
    approver: str


def _approval(name: str, **limits: object):
    @step(name, input=Request, output=Outcome, suspend=Request, resume=Decision, **limits)  # type: ignore[arg-type]
    async def approve(data: Request, ctx: StepContext) -> Outcome:
        if not isinstance(ctx.resume_data, Decision):
            ctx.suspend(data)
        return Outcome(what=data.what, **ctx.resume_data.model_dump())

    return approve


NOBODY = Decision(approved=False, approver="nobody (timed out)")
default_registry.register(
    Workflow("lapsing-approval", input=Request, output=Outcome).then(
        _approval("approve", suspend_timeout=timedelta(seconds=1), resume_on_timeout=NOBODY)
    ),
    Workflow("strict-approval", input=Request, output=Outcome).then(
        _approval("approve", suspend_timeout=timedelta(seconds=1))
    ),
)


async def test_a_suspension_past_its_timeout_resumes_with_the_steps_default(
    workflows, token
) -> None:
    described = await workflows.GetWorkflow(
        S.GetWorkflowRequest(workflow_id="lapsing-approval"), metadata=auth(token)
    )
    [declared] = described.workflow.steps
    assert declared.suspend_timeout.ToTimedelta() == timedelta(seconds=1)
    assert as_dict(declared.resume_on_timeout) == NOBODY.model_dump()

    run = await start_run(workflows, token, "lapsing-approval", {"what": "a laptop"})
    suspended = await wait_run(
        workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUSPENDED)
    )
    approve = steps_by_path(suspended)["approve"]
    waits = approve.expire_time.ToDatetime() - approve.suspend_time.ToDatetime()
    assert waits == timedelta(seconds=1)
    done = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    assert as_dict(done.output) == {"what": "a laptop", **NOBODY.model_dump()}
    events = await watch_events(workflows, token, run.id)
    [resumed] = [e.step_resumed for e in events if e.HasField("step_resumed")]
    assert as_dict(resumed.resume_data) == NOBODY.model_dump()
    # Too late: nothing waits for resume data any more.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await workflows.ResumeRun(
            S.WorkflowServiceResumeRunRequest(
                run_id=run.id,
                step_id="approve",
                resume_data=as_struct({"approved": True, "approver": "Ken"}),
            ),
            metadata=auth(token),
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_suspension_past_its_timeout_without_a_default_fails_the_run(
    workflows, token
) -> None:
    run = await start_run(workflows, token, "strict-approval", {"what": "a desk"})
    failed = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_FAILED))
    approve = steps_by_path(failed)["approve"]
    assert approve.status == S.WORKFLOW_STEP_STATUS_FAILED
    assert approve.error.reason == "SuspendTimedOut"
    assert failed.error.reason == "SuspendTimedOut"
    assert "no resume data within 0:00:01" in failed.error.message
    events = await watch_events(workflows, token, run.id)
    assert events[-1].HasField("run_failed")


def test_a_suspend_timeout_is_checked_when_the_step_is_declared() -> None:
    with pytest.raises(InvalidDefinition, match="needs suspend and resume"):
        step("x", input=Request, output=Outcome, suspend_timeout=timedelta(seconds=1))
    with pytest.raises(InvalidDefinition, match="instance of its resume schema"):
        step(
            "x",
            input=Request,
            output=Outcome,
            suspend=Request,
            resume=Decision,
            suspend_timeout=timedelta(seconds=1),
            resume_on_timeout=Request(what="not a decision"),
        )


async def test_a_run_an_operator_terminated_is_failed_with_the_reason(
    workflows, token, runtime
) -> None:
    run = await start_run(
        workflows,
        token,
        "expense-approval",
        {"employee": "Ada", "amount": 500.0, "reason": "travel"},
    )
    await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUSPENDED))
    watch = asyncio.ensure_future(
        collect_events(
            workflows.WatchRun(
                S.WorkflowServiceWatchRunRequest(run_id=run.id),
                metadata=auth(token),
                timeout=60,
            )
        )
    )
    await asyncio.sleep(0.5)  # the watcher has read what there is and waits
    handle = runtime.temporal.get_workflow_handle(run.temporal_workflow_id)
    await handle.terminate(reason="stopped by the operator")

    failed = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_FAILED))
    assert failed.error.reason == "Terminated"
    assert "stopped by the operator" in failed.error.message
    assert steps_by_path(failed)["approve"].status == S.WORKFLOW_STEP_STATUS_CANCELED
    assert failed.HasField("end_time")

    events = await asyncio.wait_for(watch, 30)
    assert events[-1].HasField("run_failed")
    assert events[-1].run_failed.reason == "Terminated"
    again = await watch_events(workflows, token, run.id)
    assert [e.event_id for e in again] == [e.event_id for e in events]


async def test_the_memo_key_of_waits_is_not_the_callers(workflows, token) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await start_run(
            workflows,
            token,
            "lapsing-approval",
            {"what": "a chair"},
            metadata=as_struct({"loomwork.waiting": "mine"}),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata.loomwork.waiting" in field_violations(err.value)
