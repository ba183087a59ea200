"""Suspended workflow steps resumed: by ResumeRun (validated, idempotent by request id), by a
plain Temporal signal, and parallel branches and foreach items resumed one by one."""

from __future__ import annotations

import grpc
import pytest
from pydantic import BaseModel

from loomwork.flows import StepContext, Workflow, default_registry, step
from protos.loomwork.v1 import workflow_pb2
from tests.support import auth, field_violations, signal_workflow
from tests.workflow_support import (
    EXPENSE,
    as_dict,
    as_struct,
    get_run,
    has_status,
    start_run,
    steps_by_path,
    wait_run,
    watch_events,
)

S = workflow_pb2


async def test_suspend_then_resume_by_rpc(workflows, token) -> None:
    run = await start_run(workflows, token, "expense-approval", EXPENSE)
    suspended = await wait_run(
        workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUSPENDED)
    )
    approve = steps_by_path(suspended)["approve"]
    assert approve.status == S.WORKFLOW_STEP_STATUS_SUSPENDED
    assert as_dict(approve.suspend_payload)["amount"] == 250.0
    assert "settle" not in steps_by_path(suspended)

    # Bad resume data: INVALID_ARGUMENT naming the field, and the run is unharmed.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await workflows.ResumeRun(
            S.WorkflowServiceResumeRunRequest(
                run_id=run.id, step_id="approve", resume_data=as_struct({"approved": "maybe"})
            ),
            metadata=auth(token),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {"resume_data.approved", "resume_data.approver"} <= set(field_violations(err.value))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await workflows.ResumeRun(
            S.WorkflowServiceResumeRunRequest(run_id=run.id, step_id="settle"),
            metadata=auth(token),
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    still = await get_run(workflows, token, run.id)
    assert still.status == S.WORKFLOW_RUN_STATUS_SUSPENDED

    decision = {"approved": True, "approver": "Linus", "comment": "ok"}
    resumed = await workflows.ResumeRun(
        S.WorkflowServiceResumeRunRequest(
            run_id=run.id, step_id="approve", resume_data=as_struct(decision), request_id="r-1"
        ),
        metadata=auth(token),
    )
    assert resumed.run.status != S.WORKFLOW_RUN_STATUS_SUSPENDED
    # The same request id again answers with the run instead of FAILED_PRECONDITION.
    await workflows.ResumeRun(
        S.WorkflowServiceResumeRunRequest(
            run_id=run.id, step_id="approve", resume_data=as_struct(decision), request_id="r-1"
        ),
        metadata=auth(token),
    )
    done = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    assert as_dict(done.output)["message"].endswith("paid by Linus")
    # ... and still once the resume has let the run finish (a retry of a lost reply).
    late = await workflows.ResumeRun(
        S.WorkflowServiceResumeRunRequest(
            run_id=run.id, step_id="approve", resume_data=as_struct(decision), request_id="r-1"
        ),
        metadata=auth(token),
    )
    assert late.run.id == run.id
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a new request on an ended run
        await workflows.ResumeRun(
            S.WorkflowServiceResumeRunRequest(
                run_id=run.id, step_id="approve", resume_data=as_struct(decision), request_id="r-2"
            ),
            metadata=auth(token),
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    approve = steps_by_path(done)["approve"]
    assert as_dict(approve.resume_data)["approver"] == "Linus"
    assert approve.HasField("resume_time") and approve.HasField("suspend_time")
    kinds = [e.WhichOneof("event") for e in await watch_events(workflows, token, run.id)]
    assert kinds.count("step_suspended") == 1 and kinds.count("step_resumed") == 1


async def test_resume_by_plain_temporal_signal(workflows, token, settings) -> None:
    run = await start_run(workflows, token, "expense-approval", EXPENSE)
    suspended = await wait_run(
        workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUSPENDED)
    )
    payload = '{"step_id": "approve", "resume_data": {"approved": false, "approver": "Ken"}}'
    await signal_workflow(
        settings.temporal_address, suspended.temporal_workflow_id, "resume", payload
    )
    done = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    assert as_dict(done.output) == {
        "reference": f"exp-{run.id}",
        "approved": False,
        "approver": "Ken",
        "paid": 0.0,
        "message": f"exp-{run.id} rejected by Ken",
    }


class Review(BaseModel):
    document: str


class Verdict(BaseModel):
    ok: bool


class Reviewed(BaseModel):
    reviewer: str
    ok: bool


class BothReviews(BaseModel):
    legal: Reviewed
    finance: Reviewed


def _reviewer(name: str):
    @step(name, input=Review, output=Reviewed, suspend=Review, resume=Verdict)
    async def review(data: Review, ctx: StepContext) -> Reviewed:
        if not isinstance(ctx.resume_data, Verdict):
            ctx.suspend(data)
        return Reviewed(reviewer=name, ok=ctx.resume_data.ok)

    return review


default_registry.register(
    Workflow("two-reviews", input=Review, output=BothReviews).parallel(
        "reviews", [_reviewer("legal"), _reviewer("finance")]
    )
)


async def test_parallel_suspends_resume_independently(workflows, token) -> None:
    run = await start_run(workflows, token, "two-reviews", {"document": "contract"})

    def both_suspended(r: S.WorkflowRun) -> bool:
        return sum(s.status == S.WORKFLOW_STEP_STATUS_SUSPENDED for s in r.steps) == 2

    await wait_run(workflows, token, run.id, both_suspended)
    await workflows.ResumeRun(
        S.WorkflowServiceResumeRunRequest(
            run_id=run.id, step_id="finance", resume_data=as_struct({"ok": False})
        ),
        metadata=auth(token),
    )
    half = await get_run(workflows, token, run.id)
    assert half.status == S.WORKFLOW_RUN_STATUS_SUSPENDED
    assert steps_by_path(half)["legal"].status == S.WORKFLOW_STEP_STATUS_SUSPENDED
    await workflows.ResumeRun(
        S.WorkflowServiceResumeRunRequest(
            run_id=run.id, step_id="legal", resume_data=as_struct({"ok": True})
        ),
        metadata=auth(token),
    )
    done = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    assert as_dict(done.output) == {
        "legal": {"reviewer": "legal", "ok": True},
        "finance": {"reviewer": "finance", "ok": False},
    }


class Documents(BaseModel):
    documents: list[Review]


class Reviews(BaseModel):
    results: list[Reviewed]


default_registry.register(
    Workflow("review-each", input=Documents, output=Reviews).foreach(
        "each", _reviewer("item-review"), over="documents", concurrency=2
    )
)


async def test_suspended_foreach_items_resume_by_path(workflows, token) -> None:
    docs = {"documents": [{"document": "a"}, {"document": "b"}]}
    run = await start_run(workflows, token, "review-each", docs)

    def both_suspended(r: S.WorkflowRun) -> bool:
        return sum(s.status == S.WORKFLOW_STEP_STATUS_SUSPENDED for s in r.steps) == 2

    await wait_run(workflows, token, run.id, both_suspended)

    async def resume(step_id: str, ok: bool) -> None:
        await workflows.ResumeRun(
            S.WorkflowServiceResumeRunRequest(
                run_id=run.id, step_id=step_id, resume_data=as_struct({"ok": ok})
            ),
            metadata=auth(token),
        )

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await resume("item-review", True)  # two executions match: the path is needed
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "item-review[0]" in err.value.details() and "item-review[1]" in err.value.details()
    await resume("item-review[1]", False)
    await resume("item-review[0]", True)
    done = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    assert [r["ok"] for r in as_dict(done.output)["results"]] == [True, False]
