"""WorkflowService end to end: the DSL's definitions run by the generic workflow on real
Temporal, driven through gRPC as a client service would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from pydantic import BaseModel

from loomwork.demo.tools import WordCountArgs
from loomwork.flows import (
    AgentStepInput,
    AgentStepOutput,
    InvalidDefinition,
    RetryPolicy,
    StepContext,
    ToolStepOutput,
    Workflow,
    agent_step,
    default_registry,
    step,
    tool_step,
)
from loomwork.flows.state import DslRunInput
from loomwork.testing import Turn
from protos.loomwork.v1 import workflow_pb2, workflow_pb2_grpc
from tests.support import (
    RunningWorker,
    another_server,
    auth,
    field_violations,
    own_runtime,
    unique,
)
from workflows.dsl_run import DslRunWorkflow

ROOT = Path(__file__).resolve().parent.parent

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
    workflows, token: str, run_id: str, done: Callable[[S.WorkflowRun], bool]
) -> S.WorkflowRun:
    deadline = asyncio.get_running_loop().time() + 30
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
    return {execution.path: execution for execution in run.steps}


# -- definitions and examples ------------------------------------------------------------


async def test_list_workflows_shows_the_examples_with_their_schemas(workflows, token) -> None:
    response = await workflows.ListWorkflows(S.ListWorkflowsRequest(), metadata=auth(token))
    listed = response.workflows
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


async def test_client_run_id_of_a_run_temporal_no_longer_keeps_is_not_run_again(
    workflows, token, runtime
) -> None:
    """Days later, Temporal's retention has dropped the ended run (the directory still says
    its start reached Temporal): a repeat of its client run id is refused (ALREADY_EXISTS)
    rather than run again."""
    from loomwork.agents.directory import RunDirectory
    from loomwork.flows.state import temporal_workflow_id

    directory = RunDirectory(runtime.redis, prefix="loomwork:workflow-run")
    ran = unique("order")
    await _start(workflows, token, "order-pipeline", _ORDER, client_run_id=ran)
    assert await directory.was_started("alpha", ran)
    # What the directory holds of such a run once Temporal dropped it.
    run_id = unique("order")
    await directory.record("alpha", run_id, temporal_workflow_id("order-pipeline", "alpha", run_id))
    await directory.mark_started("alpha", run_id)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _start(workflows, token, "order-pipeline", _ORDER, client_run_id=run_id)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "no longer kept by Temporal" in (error.value.details() or "")
    await _wait(workflows, token, ran, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))


async def test_client_run_id_starts_a_run_whose_first_start_failed(
    workflows, token, runtime
) -> None:
    """The first call recorded the run and then failed to start it (Temporal unreachable, the
    server gone): the repeat starts it instead of answering NOT_FOUND for the id's lifetime."""
    from loomwork.agents.directory import RunDirectory
    from loomwork.flows.state import temporal_workflow_id

    run_id = unique("order")
    directory = RunDirectory(runtime.redis, prefix="loomwork:workflow-run")
    await directory.record("alpha", run_id, temporal_workflow_id("order-pipeline", "alpha", run_id))
    run = await _start(workflows, token, "order-pipeline", _ORDER, client_run_id=run_id)
    assert run.id == run_id
    await _wait(workflows, token, run_id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))


async def test_watch_says_when_no_worker_takes_a_run(settings, runtime, token) -> None:
    """A run no worker takes: its watchers get run_started at once (the server announces
    the run), then run_pending once (however many watch), and the rest when a worker comes.
    A run a worker took, however long it waits for a person, is not "pending"."""
    async with (
        own_runtime(settings, pending_notice_seconds=0.5) as own,
        another_server(own) as channel,
    ):
        stub = workflow_pb2_grpc.WorkflowServiceStub(channel)
        run = await _start(stub, token, "order-pipeline", _ORDER)
        watchers = [
            aiter(
                stub.WatchRun(
                    S.WorkflowServiceWatchRunRequest(run_id=run.id),
                    metadata=auth(token),
                    timeout=60,
                )
            )
            for _ in range(2)
        ]
        heads = []
        for events in watchers:
            started = (await asyncio.wait_for(anext(events), 10)).event
            pending = (await asyncio.wait_for(anext(events), 10)).event
            heads.append((started, pending))
        for started, pending in heads:
            assert started.event_id == 1 and started.HasField("run_started")
            assert started.run_started.workflow_id == "order-pipeline"
            assert pending.event_id == 2 and pending.HasField("run_pending")
            assert pending.run_pending.task_queue == own.settings.task_queue
            assert pending.run_pending.waited.ToTimedelta().total_seconds() >= 0.5

        worker = RunningWorker(own)
        try:
            rests = [[r.event async for r in events] for events in watchers]
            # A run a worker took: its watchers hear nothing while it waits for a person.
            suspended = await _start(stub, token, "expense-approval", _EXPENSE)
            await _wait(stub, token, suspended.id, _status(S.WORKFLOW_RUN_STATUS_SUSPENDED))
            watched: list[S.WorkflowRunEvent] = []

            async def watch() -> None:
                async for response in stub.WatchRun(
                    S.WorkflowServiceWatchRunRequest(run_id=suspended.id), metadata=auth(token)
                ):
                    watched.append(response.event)

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch(), 3)
        finally:
            await worker.stop()
        for rest in rests:
            assert rest[-1].HasField("run_finished")
            assert [e.event_id for e in rest] == list(range(3, len(rest) + 3))
            assert not any(e.HasField("run_pending") or e.HasField("run_started") for e in rest)
        assert watched[-1].HasField("step_suspended")
        assert not any(e.HasField("run_pending") for e in watched)


async def test_watch_leaves_out_an_event_kind_this_server_does_not_know(
    workflows, token, runtime
) -> None:
    """A newer server's kind of event (rolling upgrade) is left out; the rest still comes."""
    from loomwork.agents.directory import RunDirectory
    from loomwork.flows.state import (
        RunFinished,
        RunStarted,
        encode_event,
        event_log_key,
        temporal_workflow_id,
    )

    run_id = unique("future")
    directory = RunDirectory(runtime.redis, prefix="loomwork:workflow-run")
    await directory.record("alpha", run_id, temporal_workflow_id("order-pipeline", "alpha", run_id))
    key = event_log_key("alpha", run_id)
    started = RunStarted(workflow_id="order-pipeline", workflow_version="1", input={})
    await runtime.events.append(key, encode_event(started))
    await runtime.events.append(key, b'{"type": "from_the_future"}')
    finished = RunFinished(status="succeeded", output={})
    await runtime.events.append(key, encode_event(finished), terminal=True)
    watched = await asyncio.wait_for(_events(workflows, token, run_id), 30)
    assert [(e.event_id, e.WhichOneof("event")) for e in watched] == [
        (1, "run_started"),
        (3, "run_finished"),
    ]


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
        expected = "SUCCEEDED" if path == taken else "SKIPPED"
        assert S.WorkflowStepStatus.Name(steps[path].status).endswith(expected), path
    # The paths merge: the reply step got what the taken path produced.
    queue = {"escalate": "on-call", "billing": "billing", "general": "support"}[taken]
    assert _dict(done.output)["queue"] == queue
    assert steps["reply"].status == S.WORKFLOW_STEP_STATUS_SUCCEEDED


# -- every composition primitive ----------------------------------------------------------


class Item(BaseModel):
    n: int


class Numbers(BaseModel):
    values: list[Item]


class Squared(BaseModel):
    n: int


class Squares(BaseModel):
    results: list[Squared]


class Total(BaseModel):
    total: int
    rounds: int = 0


class Half(BaseModel):
    half: float


class Text(BaseModel):
    text: str


class Fanout(BaseModel):
    half: Half
    wordy: ToolStepOutput


class Final(BaseModel):
    total: int
    rounds: int
    half: float
    words: int


@step("square", input=Item, output=Squared)
async def square(item: Item, ctx: StepContext) -> Squared:
    return Squared(n=item.n * item.n)


@step("double", input=Total, output=Total)
async def double(data: Total, ctx: StepContext) -> Total:
    return Total(total=data.total * 2, rounds=data.rounds + 1)


@step("increment", input=Total, output=Total)
async def increment(data: Total, ctx: StepContext) -> Total:
    return Total(total=data.total + 1, rounds=data.rounds + 1)


@step("half", input=Total, output=Half)
async def half(data: Total, ctx: StepContext) -> Half:
    return Half(half=data.total / 2)


@step("textify", input=Total, output=Text)
async def textify(data: Total, ctx: StepContext) -> Text:
    return Text(text=f"the total is {data.total}")


def _sum(squares: Squares) -> Total:
    return Total(total=sum(s.n for s in squares.results))


def _finish(fanout: Fanout) -> Final:
    return Final(
        total=int(fanout.half.half * 2),
        rounds=0,
        half=fanout.half.half,
        words=fanout.wordy.result["words"],
    )


WORDY = (
    Workflow("wordy", input=Total, output=ToolStepOutput, description="Count the words")
    .then(textify)
    .then(tool_step("count", tool="word_count", args=WordCountArgs))
)

PRIMITIVES = (
    Workflow("dsl-primitives", input=Numbers, output=Final, description="Every primitive once")
    .foreach("squares", square, over="values", concurrency=2)
    .map("sum", _sum, output=Total)
    .dowhile("doubling", double, lambda t: t.total < 100)
    .dountil("counting", increment, lambda t: t.total % 7 == 0)
    .sleep("pause", timedelta(milliseconds=50))
    .sleep_until("until", lambda t: datetime(2000, 1, 1, tzinfo=UTC))
    .parallel("fanout", [half, WORDY])
    .map("finish", _finish, output=Final)
)
default_registry.register(PRIMITIVES)


async def test_every_composition_primitive(workflows, token) -> None:
    run = await _start(
        workflows, token, "dsl-primitives", {"values": [{"n": 1}, {"n": 2}, {"n": 3}]}
    )
    done = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    # squares 1+4+9 = 14; doubled while < 100: 112; incremented until divisible by 7: 119.
    assert _dict(done.output) == {"total": 119, "rounds": 0, "half": 59.5, "words": 4}
    steps = _steps(done)
    assert [_dict(steps[f"square[{i}]"].output)["n"] for i in range(3)] == [1, 4, 9]
    assert steps["square[1]"].iteration == 1
    assert [p for p in steps if p.startswith("double[")] == ["double[0]", "double[1]", "double[2]"]
    assert len([p for p in steps if p.startswith("increment[")]) == 7
    assert steps["pause"].HasField("wake_time")
    assert steps["wordy/textify"].status == S.WORKFLOW_STEP_STATUS_SUCCEEDED
    assert _dict(steps["wordy/count"].output) == {"result": {"words": 4}}
    assert steps["wordy"].kind == S.WORKFLOW_STEP_KIND_WORKFLOW
    assert steps["fanout"].kind == S.WORKFLOW_STEP_KIND_PARALLEL
    assert all(s.status == S.WORKFLOW_STEP_STATUS_SUCCEEDED for s in done.steps)
    events = await _events(workflows, token, run.id)
    assert any(e.HasField("step_waiting") and e.step_waiting.step_id == "pause" for e in events)


def test_wrong_wiring_is_refused_at_registration() -> None:
    with pytest.raises(InvalidDefinition, match=r"needs 'total'.*Squares"):
        Workflow("bad-wiring", input=Numbers, output=Total).foreach(
            "squares", square, over="values"
        ).then(double).commit()
    with pytest.raises(InvalidDefinition, match="needs 'n', which Text does not have"):
        Workflow("bad-missing", input=Text, output=Squared).then(square).commit()

    class TextN(BaseModel):
        n: str

    with pytest.raises(InvalidDefinition, match="needs 'n' as int, TextN has str"):
        Workflow("bad-types", input=TextN, output=Squared).then(square).commit()
    with pytest.raises(InvalidDefinition, match="not a list"):
        Workflow("bad-foreach", input=Total, output=Squares).foreach(
            "each", square, over="total"
        ).commit()
    with pytest.raises(InvalidDefinition, match="used twice"):
        Workflow("twice", input=Total, output=Total).then(double).then(double).commit()
    with pytest.raises(InvalidDefinition, match="output"):
        Workflow("bad-output", input=Total, output=Squared).then(double).commit()


# -- retries -----------------------------------------------------------------------------


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
    if data.rounds < 0:
        raise Fatal("cannot continue")
    if ctx.attempt < 3:
        raise Flaky(f"attempt {ctx.attempt} failed")
    return Total(total=data.total, rounds=ctx.attempt)


default_registry.register(Workflow("flaky", input=Total, output=Total).then(flaky))


async def test_step_retries_then_succeeds(workflows, token) -> None:
    run = await _start(workflows, token, "flaky", {"total": 5})
    done = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    assert _dict(done.output) == {"total": 5, "rounds": 3}
    assert _steps(done)["flaky"].attempts == 3
    events = await _events(workflows, token, run.id)
    retrying = [e.step_retrying for e in events if e.HasField("step_retrying")]
    assert [r.attempts for r in retrying] == [1, 2]
    assert retrying[0].error.reason == "Flaky"


async def test_non_retryable_error_fails_at_once(workflows, token) -> None:
    run = await _start(workflows, token, "flaky", {"total": 5, "rounds": -1})
    failed = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_FAILED))
    step_run = _steps(failed)["flaky"]
    assert (step_run.attempts, step_run.error.reason) == (1, "Fatal")
    assert failed.error.message == "cannot continue"


# -- suspend / resume --------------------------------------------------------------------

_EXPENSE = {"employee": "Grace", "amount": 250.0, "reason": "conference"}


async def test_a_run_no_worker_took_is_pending_until_one_comes(settings, runtime, token) -> None:
    """A run accepted by a server whose workers are down is PENDING (read from its start
    input, without waiting on a worker); once its worker is gone again, GetRun says so
    (UNAVAILABLE) instead of hanging; it finishes when a worker is back."""
    async with own_runtime(settings) as own, another_server(own) as channel:
        stub = workflow_pb2_grpc.WorkflowServiceStub(channel)
        run = await _start(stub, token, "expense-approval", _EXPENSE)
        pending = (
            await stub.GetRun(
                S.WorkflowServiceGetRunRequest(run_id=run.id), metadata=auth(token), timeout=3
            )
        ).run
        assert pending.status == S.WORKFLOW_RUN_STATUS_PENDING
        assert _dict(pending.input) == _EXPENSE

        worker = RunningWorker(own)
        try:
            await _wait(stub, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUSPENDED))
        finally:
            await worker.stop()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _get(stub, token, run.id)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no worker answered" in (err.value.details() or "")

        worker = RunningWorker(own)
        try:
            await stub.ResumeRun(
                S.WorkflowServiceResumeRunRequest(
                    run_id=run.id,
                    step_id="approve",
                    resume_data=_struct({"approved": True, "approver": "Linus"}),
                ),
                metadata=auth(token),
            )
            done = await _wait(stub, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
        finally:
            await worker.stop()
        assert _dict(done.output)["paid"] == 250.0


async def test_suspend_then_resume_by_rpc(workflows, token) -> None:
    run = await _start(workflows, token, "expense-approval", _EXPENSE)
    suspended = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUSPENDED))
    approve = _steps(suspended)["approve"]
    assert approve.status == S.WORKFLOW_STEP_STATUS_SUSPENDED
    assert _dict(approve.suspend_payload)["amount"] == 250.0
    assert "settle" not in _steps(suspended)

    # Bad resume data: INVALID_ARGUMENT naming the field, and the run is unharmed.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await workflows.ResumeRun(
            S.WorkflowServiceResumeRunRequest(
                run_id=run.id, step_id="approve", resume_data=_struct({"approved": "maybe"})
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
    still = await _get(workflows, token, run.id)
    assert still.status == S.WORKFLOW_RUN_STATUS_SUSPENDED

    decision = {"approved": True, "approver": "Linus", "comment": "ok"}
    resumed = await workflows.ResumeRun(
        S.WorkflowServiceResumeRunRequest(
            run_id=run.id, step_id="approve", resume_data=_struct(decision), request_id="r-1"
        ),
        metadata=auth(token),
    )
    assert resumed.run.status != S.WORKFLOW_RUN_STATUS_SUSPENDED
    # The same request id again answers with the run instead of FAILED_PRECONDITION.
    await workflows.ResumeRun(
        S.WorkflowServiceResumeRunRequest(
            run_id=run.id, step_id="approve", resume_data=_struct(decision), request_id="r-1"
        ),
        metadata=auth(token),
    )
    done = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    assert _dict(done.output)["message"].endswith("paid by Linus")
    # ... and still once the resume has let the run finish (a retry of a lost reply).
    late = await workflows.ResumeRun(
        S.WorkflowServiceResumeRunRequest(
            run_id=run.id, step_id="approve", resume_data=_struct(decision), request_id="r-1"
        ),
        metadata=auth(token),
    )
    assert late.run.id == run.id
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a new request on an ended run
        await workflows.ResumeRun(
            S.WorkflowServiceResumeRunRequest(
                run_id=run.id, step_id="approve", resume_data=_struct(decision), request_id="r-2"
            ),
            metadata=auth(token),
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    approve = _steps(done)["approve"]
    assert _dict(approve.resume_data)["approver"] == "Linus"
    assert approve.HasField("resume_time") and approve.HasField("suspend_time")
    kinds = [e.WhichOneof("event") for e in await _events(workflows, token, run.id)]
    assert kinds.count("step_suspended") == 1 and kinds.count("step_resumed") == 1


async def test_resume_by_plain_temporal_signal(workflows, token, settings) -> None:
    run = await _start(workflows, token, "expense-approval", _EXPENSE)
    suspended = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUSPENDED))
    payload = '{"step_id": "approve", "resume_data": {"approved": false, "approver": "Ken"}}'
    proc = await asyncio.create_subprocess_exec(
        _temporal_cli(),
        "workflow",
        "signal",
        "--address",
        settings.temporal_address,
        "--workflow-id",
        suspended.temporal_workflow_id,
        "--name",
        "resume",
        "--input",
        payload,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    done = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    assert _dict(done.output) == {
        "reference": f"exp-{run.id}",
        "approved": False,
        "approver": "Ken",
        "paid": 0.0,
        "message": f"exp-{run.id} rejected by Ken",
    }


def _temporal_cli() -> str:
    found = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    assert Path(found).exists()
    return found


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
    run = await _start(workflows, token, "two-reviews", {"document": "contract"})

    def both_suspended(r: S.WorkflowRun) -> bool:
        return sum(s.status == S.WORKFLOW_STEP_STATUS_SUSPENDED for s in r.steps) == 2

    await _wait(workflows, token, run.id, both_suspended)
    await workflows.ResumeRun(
        S.WorkflowServiceResumeRunRequest(
            run_id=run.id, step_id="finance", resume_data=_struct({"ok": False})
        ),
        metadata=auth(token),
    )
    half = await _get(workflows, token, run.id)
    assert half.status == S.WORKFLOW_RUN_STATUS_SUSPENDED
    assert _steps(half)["legal"].status == S.WORKFLOW_STEP_STATUS_SUSPENDED
    await workflows.ResumeRun(
        S.WorkflowServiceResumeRunRequest(
            run_id=run.id, step_id="legal", resume_data=_struct({"ok": True})
        ),
        metadata=auth(token),
    )
    done = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    assert _dict(done.output) == {
        "legal": {"reviewer": "legal", "ok": True},
        "finance": {"reviewer": "finance", "ok": False},
    }


# -- cancel, list, versions -----------------------------------------------------------------


default_registry.register(
    Workflow("long-sleep", input=Total, output=Total).sleep("nap", timedelta(hours=1))
)


async def test_cancel_run(workflows, token) -> None:
    run = await _start(workflows, token, "long-sleep", {"total": 1})
    waiting = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_WAITING))
    assert _steps(waiting)["nap"].status == S.WORKFLOW_STEP_STATUS_WAITING
    canceled = await workflows.CancelRun(
        S.WorkflowServiceCancelRunRequest(run_id=run.id, reason="not needed"),
        metadata=auth(token),
    )
    assert canceled.run.id == run.id
    done = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_CANCELED))
    assert done.error.reason == "CANCELED" and done.error.message == "not needed"
    assert _steps(done)["nap"].status == S.WORKFLOW_STEP_STATUS_CANCELED
    events = await _events(workflows, token, run.id)
    assert events[-1].run_finished.status == S.WORKFLOW_RUN_STATUS_CANCELED
    # Canceling again is a no-op; a succeeded run cannot be canceled.
    await workflows.CancelRun(
        S.WorkflowServiceCancelRunRequest(run_id=run.id), metadata=auth(token)
    )
    finished = await _start(workflows, token, "flaky", {"total": 1, "rounds": 5})
    await _wait(workflows, token, finished.id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await workflows.CancelRun(
            S.WorkflowServiceCancelRunRequest(run_id=finished.id), metadata=auth(token)
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_list_runs_filters_by_workflow_and_status(workflows, token, other_token) -> None:
    run = await _start(workflows, token, "expense-approval", _EXPENSE)
    await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUSPENDED))

    async def listed(tok: str, **kw) -> list[S.WorkflowRun]:
        response = await workflows.ListRuns(
            S.WorkflowServiceListRunsRequest(**kw), metadata=auth(tok)
        )
        return list(response.runs)

    deadline = asyncio.get_running_loop().time() + 20
    while True:  # visibility catches up a moment after the run changes
        found = await listed(
            token,
            workflow_id="expense-approval",
            statuses=[S.WORKFLOW_RUN_STATUS_SUSPENDED],
            page_size=1000,
        )
        if any(r.id == run.id for r in found):
            break
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.2)
    assert all(r.status == S.WORKFLOW_RUN_STATUS_SUSPENDED for r in found)
    assert all(r.workflow_id == "expense-approval" and not r.steps for r in found)
    assert run.id not in {r.id for r in await listed(other_token, page_size=1000)}
    succeeded = await listed(token, statuses=[S.WORKFLOW_RUN_STATUS_SUCCEEDED], page_size=1000)
    assert run.id not in {r.id for r in succeeded}
    page = await workflows.ListRuns(
        S.WorkflowServiceListRunsRequest(page_size=1), metadata=auth(token)
    )
    assert len(page.runs) == 1 and page.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await workflows.ListRuns(
            S.WorkflowServiceListRunsRequest(
                page_size=1, page_token=page.next_page_token, workflow_id="flaky"
            ),
            metadata=auth(token),
        )
    assert "page_token" in field_violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await listed(token, page_size=5000)
    assert "page_size" in field_violations(err.value)


class Doc(BaseModel):
    text: str


class Out(BaseModel):
    text: str
    version: str


def _versioned(version: str, steps: list[str]) -> Workflow:
    @step("hold", input=Doc, output=Doc, suspend=Doc, resume=Doc)
    async def hold(data: Doc, ctx: StepContext) -> Doc:
        if ctx.resume_data is None:
            ctx.suspend(data)
        return Doc(text=data.text + "+resumed")

    def stamp(doc: Doc) -> Out:
        return Out(text=doc.text, version=version)

    workflow = Workflow("evolving", input=Doc, output=Out, version=version).then(hold)
    for name in steps:
        workflow = workflow.map(name, stamp, output=Out)
    return workflow


async def test_changing_a_definition_does_not_break_runs_in_flight(workflows, token) -> None:
    default_registry.register(_versioned("1", ["stamp"]))
    old = await _start(workflows, token, "evolving", {"text": "a"})
    await _wait(workflows, token, old.id, _status(S.WORKFLOW_RUN_STATUS_SUSPENDED))
    # A new definition with other steps is deployed while the old run is suspended.
    default_registry.register(_versioned("2", ["stamp-v2"]))
    latest = await workflows.GetWorkflow(
        S.GetWorkflowRequest(workflow_id="evolving"), metadata=auth(token)
    )
    assert latest.workflow.version == "2"
    new = await _start(workflows, token, "evolving", {"text": "b"})
    assert new.workflow_version == "2"
    for run in (old, new):
        await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUSPENDED))
        await workflows.ResumeRun(
            S.WorkflowServiceResumeRunRequest(
                run_id=run.id, step_id="hold", resume_data=_struct({"text": "x"})
            ),
            metadata=auth(token),
        )
    old_done = await _wait(workflows, token, old.id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    new_done = await _wait(workflows, token, new.id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    assert old_done.workflow_version == "1" and "stamp" in _steps(old_done)
    assert _dict(old_done.output) == {"text": "a+resumed", "version": "1"}
    assert "stamp-v2" in _steps(new_done)
    assert _dict(new_done.output) == {"text": "b+resumed", "version": "2"}


async def test_run_rpcs_validate_their_input(workflows, token, other_token) -> None:
    run = await _start(workflows, token, "expense-approval", _EXPENSE)
    calls = [
        workflows.GetRun(S.WorkflowServiceGetRunRequest(), metadata=auth(token)),
        workflows.ResumeRun(S.WorkflowServiceResumeRunRequest(), metadata=auth(token)),
        workflows.CancelRun(S.WorkflowServiceCancelRunRequest(), metadata=auth(token)),
        workflows.CancelRun(
            S.WorkflowServiceCancelRunRequest(run_id=run.id, reason="x" * 2000),
            metadata=auth(token),
        ),
        workflows.ListWorkflows(S.ListWorkflowsRequest(page_token="garbage"), metadata=auth(token)),
        workflows.ListRuns(S.WorkflowServiceListRunsRequest(statuses=[99]), metadata=auth(token)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert field_violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anext(
            aiter(
                workflows.WatchRun(
                    S.WorkflowServiceWatchRunRequest(run_id=run.id, after_event_id=-1),
                    metadata=auth(token),
                )
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for call in (
        workflows.GetRun(S.WorkflowServiceGetRunRequest(run_id=run.id), metadata=auth(other_token)),
        workflows.ResumeRun(
            S.WorkflowServiceResumeRunRequest(run_id=run.id, step_id="approve"),
            metadata=auth(other_token),
        ),
        workflows.CancelRun(
            S.WorkflowServiceCancelRunRequest(run_id=run.id), metadata=auth(other_token)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


# -- worker killed mid-step -----------------------------------------------------------------


def _worker_process(embedded: dict[str, str], task_queue: str, log: Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        DATABASE_URL=embedded["DATABASE_URL"],
        REDIS_URL=embedded["REDIS_URL"],
        TEMPORAL_ADDRESS=embedded["TEMPORAL_ADDRESS"],
        LOOMWORK_TASK_QUEUE=task_queue,
        LOOMWORK_WORKFLOW_MODULES="tests.workflow_fixtures",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "worker"],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_worker_killed_mid_step_and_the_run_completes(
    embedded, runtime, tmp_path: Path
) -> None:
    from tests.workflow_fixtures import KILLABLE

    queue = unique("wf-kill")
    run_id = unique("kill")
    log = tmp_path / "workers.log"
    first = _worker_process(embedded, queue, log)
    second = None
    try:
        handle = await runtime.temporal.start_workflow(
            DslRunWorkflow.run,
            DslRunInput(
                tenant="alpha",
                run_id=run_id,
                workflow_id="killable",
                workflow_version=KILLABLE.version,
                input={"name": "rebuild"},
            ),
            id=f"wf/killable/alpha/{run_id}",
            task_queue=queue,
        )
        marker = f"test:wf-kill:{run_id}"
        deadline = asyncio.get_running_loop().time() + 60
        while await runtime.redis.get(marker) is None:
            assert first.poll() is None, log.read_text()
            assert asyncio.get_running_loop().time() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        first.send_signal(signal.SIGKILL)  # mid-step, no chance to clean up
        first.wait(10)
        second = _worker_process(embedded, queue, log)
        state = await asyncio.wait_for(handle.result(), 60)
        assert state.status == "succeeded"
        assert state.output == {"name": "rebuild", "attempt": 2}
        assert state.step("work").attempts == 2
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


# -- agents as steps, the Temporal UI, resumable streams --------------------------------------


class Topic(BaseModel):
    topic: str


class Summary(BaseModel):
    topic: str
    summary: str


def _ask(topic: Topic) -> AgentStepInput:
    return AgentStepInput(prompt=f"Summarize {topic.topic} in one line.")


def _summary(answer: AgentStepOutput) -> Summary:
    return Summary(topic="", summary=answer.text)


default_registry.register(
    Workflow("summarize", input=Topic, output=Summary)
    .map("ask", _ask, output=AgentStepInput)
    .then(agent_step("assistant-step", agent="assistant"))
    .map("shape", _summary, output=Summary)
)


async def test_agent_as_a_step(workflows, token, model_server, runtime) -> None:
    model_server.set_script([Turn(text="Looms weave threads into cloth.")])
    try:
        run = await _start(workflows, token, "summarize", {"topic": "looms"})
        done = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    finally:
        model_server.set_script(None)
    assert _dict(done.output)["summary"] == "Looms weave threads into cloth."
    step_run = _steps(done)["assistant-step"]
    assert step_run.kind == S.WORKFLOW_STEP_KIND_AGENT
    assert _dict(step_run.output)["run_id"] == f"{run.id}.assistant-step"
    # The agent ran as a child workflow, visible in the Temporal UI under the run's id.
    child = runtime.temporal.get_workflow_handle(f"{done.temporal_workflow_id}/assistant-step")
    assert (await child.describe()).status.name == "COMPLETED"


async def test_steps_are_named_in_the_temporal_ui(workflows, token, runtime) -> None:
    run = await _start(workflows, token, "ticket-triage", {"subject": "Wrong invoice"})
    await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    handle = runtime.temporal.get_workflow_handle(run.temporal_workflow_id)
    summaries = []
    converter = runtime.temporal.data_converter.payload_converter
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            summary = event.user_metadata.summary
            summaries.append(converter.from_payload(summary, str))
    assert summaries == [
        "classify: Sort the ticket by keywords.",
        "billing: Hand over to the billing team.",
        "reply: Answer the customer with what happens next (every path merges here).",
    ]
    described = await handle.describe()
    attributes = {k.name: v for k, v in described.typed_search_attributes}
    assert attributes["LoomworkTenant"] == "alpha"
    assert attributes["LoomworkWorkflow"] == "ticket-triage"
    assert attributes["LoomworkRun"] == run.id
    assert attributes["LoomworkStatus"] == "SUCCEEDED"


async def test_watch_run_resumes_after_the_last_event_seen(workflows, token) -> None:
    run = await _start(workflows, token, "order-pipeline", _ORDER)
    every = await _events(workflows, token, run.id)
    for cut in (1, 3, len(every) - 1):
        rest = await _events(workflows, token, run.id, after=cut)
        assert [e.event_id for e in rest] == [e.event_id for e in every[cut:]]
        assert rest == every[cut:]
    assert await _events(workflows, token, run.id, after=len(every)) == []


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
    run = await _start(workflows, token, "review-each", docs)

    def both_suspended(r: S.WorkflowRun) -> bool:
        return sum(s.status == S.WORKFLOW_STEP_STATUS_SUSPENDED for s in r.steps) == 2

    await _wait(workflows, token, run.id, both_suspended)

    async def resume(step_id: str, ok: bool) -> None:
        await workflows.ResumeRun(
            S.WorkflowServiceResumeRunRequest(
                run_id=run.id, step_id=step_id, resume_data=_struct({"ok": ok})
            ),
            metadata=auth(token),
        )

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await resume("item-review", True)  # two executions match: the path is needed
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "item-review[0]" in err.value.details() and "item-review[1]" in err.value.details()
    await resume("item-review[1]", False)
    await resume("item-review[0]", True)
    done = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    assert [r["ok"] for r in _dict(done.output)["results"]] == [True, False]


async def test_watch_after_events_expired_sends_the_terminal_event(
    workflows, token, runtime
) -> None:
    from loomwork.flows.state import event_log_key

    run = await _start(workflows, token, "ticket-triage", {"subject": "Wrong invoice"})
    every = await _events(workflows, token, run.id)
    terminal = every[-1]
    assert terminal.HasField("run_finished")
    # What the retention TTL does a day after the run ended (the run notes its terminal id
    # once the event is out, a moment after the stream saw it).
    await runtime.temporal.get_workflow_handle(run.temporal_workflow_id).result()
    key = event_log_key("alpha", run.id)
    await runtime.redis.delete(runtime.events.meta_key(key), runtime.events.stream_key(key))

    rebuilt = await _events(workflows, token, run.id)
    assert [e.event_id for e in rebuilt] == [terminal.event_id]
    assert rebuilt[0].run_finished == terminal.run_finished
    assert await _events(workflows, token, run.id, after=terminal.event_id) == []
    assert (await _get(workflows, token, run.id)).last_event_id == terminal.event_id


@step("linger", input=Total, output=Total, retry=RetryPolicy(timeout=timedelta(minutes=5)))
async def linger(data: Total, ctx: StepContext) -> Total:
    await asyncio.sleep(300)
    return data


default_registry.register(Workflow("lingering", input=Total, output=Total).then(linger))


async def test_cancel_run_while_a_step_runs(workflows, token) -> None:
    run = await _start(workflows, token, "lingering", {"total": 1})

    def step_running(r: S.WorkflowRun) -> bool:
        return any(s.status == S.WORKFLOW_STEP_STATUS_RUNNING for s in r.steps)

    await _wait(workflows, token, run.id, step_running)
    await workflows.CancelRun(
        S.WorkflowServiceCancelRunRequest(run_id=run.id, reason="changed my mind"),
        metadata=auth(token),
    )
    done = await _wait(workflows, token, run.id, _status(S.WORKFLOW_RUN_STATUS_CANCELED))
    assert _steps(done)["linger"].status == S.WORKFLOW_STEP_STATUS_CANCELED
    assert done.error.message == "changed my mind"
