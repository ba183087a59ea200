"""Workflow definitions: listed with their schemas, every composition primitive of the DSL
run on real Temporal, wiring checked at registration, and a definition changed under runs
in flight."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from pydantic import BaseModel

from loomwork.demo.tools import WordCountArgs
from loomwork.flows import (
    InvalidDefinition,
    StepContext,
    ToolStepOutput,
    Workflow,
    default_registry,
    step,
    tool_step,
)
from protos.loomwork.v1 import workflow_pb2
from tests.support import auth
from tests.workflow_support import (
    Total,
    as_dict,
    as_struct,
    has_status,
    start_run,
    steps_by_path,
    wait_run,
    watch_events,
)

S = workflow_pb2


async def test_list_workflows_shows_the_examples_with_their_schemas(workflows, token) -> None:
    response = await workflows.ListWorkflows(S.ListWorkflowsRequest(), metadata=auth(token))
    listed = response.workflows
    by_id = {w.id: w for w in listed}
    assert {"order-pipeline", "ticket-triage", "expense-approval"} <= set(by_id)
    order = by_id["order-pipeline"]
    assert [s.id for s in order.steps] == ["validate", "process", "store", "notify"]
    assert "lines" in as_dict(order.input_schema)["properties"]
    assert order.version
    approval = by_id["expense-approval"].steps[1]
    assert approval.id == "approve"
    assert set(as_dict(approval.resume_schema)["required"]) == {"approved", "approver"}
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


class Item(BaseModel):
    n: int


class Numbers(BaseModel):
    values: list[Item]


class Squared(BaseModel):
    n: int


class Squares(BaseModel):
    results: list[Squared]


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
    run = await start_run(
        workflows, token, "dsl-primitives", {"values": [{"n": 1}, {"n": 2}, {"n": 3}]}
    )
    done = await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    # squares 1+4+9 = 14; doubled while < 100: 112; incremented until divisible by 7: 119.
    assert as_dict(done.output) == {"total": 119, "rounds": 0, "half": 59.5, "words": 4}
    steps = steps_by_path(done)
    assert [as_dict(steps[f"square[{i}]"].output)["n"] for i in range(3)] == [1, 4, 9]
    assert steps["square[1]"].iteration == 1
    assert [p for p in steps if p.startswith("double[")] == ["double[0]", "double[1]", "double[2]"]
    assert len([p for p in steps if p.startswith("increment[")]) == 7
    assert steps["pause"].HasField("wake_time")
    assert steps["wordy/textify"].status == S.WORKFLOW_STEP_STATUS_SUCCEEDED
    assert as_dict(steps["wordy/count"].output) == {"result": {"words": 4}}
    assert steps["wordy"].kind == S.WORKFLOW_STEP_KIND_WORKFLOW
    assert steps["fanout"].kind == S.WORKFLOW_STEP_KIND_PARALLEL
    assert all(s.status == S.WORKFLOW_STEP_STATUS_SUCCEEDED for s in done.steps)
    events = await watch_events(workflows, token, run.id)
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
    old = await start_run(workflows, token, "evolving", {"text": "a"})
    await wait_run(workflows, token, old.id, has_status(S.WORKFLOW_RUN_STATUS_SUSPENDED))
    # A new definition with other steps is deployed while the old run is suspended.
    default_registry.register(_versioned("2", ["stamp-v2"]))
    latest = await workflows.GetWorkflow(
        S.GetWorkflowRequest(workflow_id="evolving"), metadata=auth(token)
    )
    assert latest.workflow.version == "2"
    new = await start_run(workflows, token, "evolving", {"text": "b"})
    assert new.workflow_version == "2"
    for run in (old, new):
        await wait_run(workflows, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUSPENDED))
        await workflows.ResumeRun(
            S.WorkflowServiceResumeRunRequest(
                run_id=run.id, step_id="hold", resume_data=as_struct({"text": "x"})
            ),
            metadata=auth(token),
        )
    old_done = await wait_run(workflows, token, old.id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    new_done = await wait_run(workflows, token, new.id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
    assert old_done.workflow_version == "1" and "stamp" in steps_by_path(old_done)
    assert as_dict(old_done.output) == {"text": "a+resumed", "version": "1"}
    assert "stamp-v2" in steps_by_path(new_done)
    assert as_dict(new_done.output) == {"text": "b+resumed", "version": "2"}
