"""WorkflowService end to end: the DSL's definitions run by the generic workflow on real
Temporal, driven through gRPC as a client service would."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from pydantic import BaseModel

from loomwork.agents.builtin import WordCountArgs
from loomwork.flows import (
    InvalidDefinition,
    RetryPolicy,
    StepContext,
    ToolStepOutput,
    Workflow,
    default_registry,
    step,
    tool_step,
)
from protos.loomwork.v1 import workflow_pb2, workflow_pb2_grpc
from tests.support import auth, field_violations, unique

S = workflow_pb2


@pytest.fixture(scope="session")
def workflows(channel: grpc.aio.Channel) -> workflow_pb2_grpc.WorkflowServiceStub:
    return workflow_pb2_grpc.WorkflowServiceStub(channel)


def _struct(data: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out


def _dict(message) -> dict:
    return json_format.MessageToDict(message)


async def _start(workflows, token: str, workflow_id: str, data: dict, **kw) -> S.WorkflowRun:
    response = await workflows.StartRun(
        S.WorkflowServiceStartRunRequest(workflow_id=workflow_id, input=_struct(data), **kw),
        metadata=auth(token),
    )
    return response.run


async def _get(workflows, token: str, run_id: str) -> S.WorkflowRun:
    response = await workflows.GetRun(
        S.WorkflowServiceGetRunRequest(run_id=run_id), metadata=auth(token)
    )
    return response.run


async def _wait(
    workflows, token: str, run_id: str, done: Callable[[S.WorkflowRun], bool], timeout: float = 30
) -> S.WorkflowRun:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = await _get(workflows, token, run_id)
        if done(run):
            return run
        assert asyncio.get_running_loop().time() < deadline, f"run stuck: {run}"
        await asyncio.sleep(0.1)


def _status(*statuses: int) -> Callable[[S.WorkflowRun], bool]:
    return lambda run: run.status in statuses


async def _events(workflows, token: str, run_id: str, after: int = 0) -> list[S.WorkflowRunEvent]:
    stream = workflows.WatchRun(
        S.WorkflowServiceWatchRunRequest(run_id=run_id, after_event_id=after),
        metadata=auth(token),
        timeout=60,
    )
    return [response.event async for response in stream]


def _steps(run: S.WorkflowRun) -> dict[str, S.WorkflowStepRun]:
    return {step.path: step for step in run.steps}


# -- definitions and examples ------------------------------------------------------------


async def test_list_workflows_shows_the_examples_with_their_schemas(workflows, token) -> None:
    listed = (await workflows.ListWorkflows(S.ListWorkflowsRequest(), metadata=auth(token))).workflows
    by_id = {w.id: w for w in listed}
    assert {"order-pipeline", "ticket-triage", "expense-approval"} <= set(by_id)
    order = by_id["order-pipeline"]
    assert [s.id for s in order.steps] == ["validate", "process", "store", "notify"]
    assert "lines" in _dict(order.input_schema)["properties"]
    assert order.version
    approval = by_id["expense-approval"].steps[1]
    assert approval.id == "approve"
    assert set(_dict(approval.resume_schema)["required"]) == {"approved", "approver"}
    route = by_id["ticket-triage"].steps[1]
    assert route.kind == S.WORKFLOW_STEP_KIND_BRANCH
    assert [(c.id, c.default_branch) for c in route.children] == [
        ("escalate", False),
        ("billing", False),
        ("general", True),
    ]
    assert route.children[0].condition.endswith("is_urgent")

    got = await workflows.GetWorkflow(
        S.GetWorkflowRequest(workflow_id="order-pipeline"), metadata=auth(token)
    )
    assert got.workflow == order
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await workflows.GetWorkflow(S.GetWorkflowRequest(workflow_id="nope"), metadata=auth(token))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


_ORDER = {
    "customer": "Ada",
    "country": "DE",
    "lines": [{"sku": "loom", "quantity": 2, "unit_price": 50.0}],
}


async def test_linear_order_pipeline_runs_every_step_once(workflows, token, runtime) -> None:
    run = await _start(workflows, token, "order-pipeline", _ORDER)
    assert run.id.startswith("wfr_")
    assert run.temporal_workflow_id == f"wf/order-pipeline/alpha/{run.id}"
    events = await _events(workflows, token, run.id)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert [e.step_succeeded.step_id for e in events if e.HasField("step_succeeded")] == [
        "validate",
        "process",
        "store",
        "notify",
    ]
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    output = _dict(events[-1].run_finished.output)
    assert output["total"] == pytest.approx(119.0)
    assert output["notified"].startswith("confirmation for ord-")

    done = await _get(workflows, token, run.id)
    assert done.status == S.WORKFLOW_RUN_STATUS_SUCCEEDED
    assert _dict(done.output) == output
    steps = _steps(done)
    assert [s.status for s in done.steps] == [S.WORKFLOW_STEP_STATUS_SUCCEEDED] * 4
    assert steps["process"].attempts == 1
    assert _dict(steps["process"].output)["tax"] == pytest.approx(19.0)
    assert done.last_event_id == events[-1].event_id
    async with runtime.db.connection() as conn:
        cur = await conn.execute(
            "select count(*) as n from notes where tenant_id = %s and idempotency_key like %s",
            ("alpha", f"wf/{run.id}:%"),
        )
        row = await cur.fetchone()
    assert row["n"] == 1


async def test_start_run_validates_input_against_the_schema(workflows, token) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _start(workflows, token, "order-pipeline", {"customer": "", "lines": []})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {"input.customer", "input.lines"} <= set(field_violations(err.value))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _start(workflows, token, "no-such-workflow", {})
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _start(workflows, token, "", {})
    assert "workflow_id" in field_violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _start(workflows, token, "order-pipeline", _ORDER, client_run_id="bad id!")
    assert "client_run_id" in field_violations(err.value)


async def test_client_run_id_makes_start_idempotent(workflows, token, other_token) -> None:
    run_id = unique("order")
    first = await _start(workflows, token, "order-pipeline", _ORDER, client_run_id=run_id)
    again = await _start(workflows, token, "order-pipeline", _ORDER, client_run_id=run_id)
    assert first.id == again.id == run_id
    assert first.temporal_workflow_id == again.temporal_workflow_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _start(workflows, token, "ticket-triage", {"subject": "x"}, client_run_id=run_id)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # Another tenant may use the same id: its own run, and it cannot see ours.
    theirs = await _start(workflows, other_token, "order-pipeline", _ORDER, client_run_id=run_id)
    assert theirs.temporal_workflow_id != first.temporal_workflow_id
    await _wait(workflows, token, run_id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    await _wait(workflows, other_token, run_id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _get(workflows, other_token, unique("nobody"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_business_rule_failure_is_not_retried(workflows, token) -> None:
    run = await _start(workflows, token, "order-pipeline", {**_ORDER, "country": "ZZ"})
    failed = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_FAILED))
    validate = _steps(failed)["validate"]
    assert validate.status == S.WORKFLOW_STEP_STATUS_FAILED
    assert validate.attempts == 1
    assert validate.error.reason == "InvalidOrder"
    assert "ZZ" in validate.error.message
    assert failed.error.reason == "InvalidOrder"
    assert "process" not in _steps(failed)
    events = await _events(workflows, token, run.id)
    assert events[-1].HasField("run_failed")


@pytest.mark.parametrize(
    ("ticket", "taken"),
    [
        ({"subject": "Site down", "body": "outage!"}, "escalate"),
        ({"subject": "Wrong invoice"}, "billing"),
        ({"subject": "How do I export?"}, "general"),
    ],
)
async def test_branch_takes_the_first_condition_or_the_default(
    workflows, token, ticket, taken
) -> None:
    run = await _start(workflows, token, "ticket-triage", ticket)
    done = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    steps = _steps(done)
    for path in ("escalate", "billing", "general"):
        expected = S.WORKFLOW_STEP_STATUS_SUCCEEDED if path == taken else S.WORKFLOW_STEP_STATUS_SKIPPED
        assert steps[path].status == expected, path
    # The paths merge: the reply step got what the taken path produced.
    queue = {"escalate": "on-call", "billing": "billing", "general": "support"}[taken]
    assert _dict(done.output)["queue"] == queue
    assert steps["reply"].status == S.WORKFLOW_STEP_STATUS_SUCCEEDED
