"""WorkflowService.ForkRun: a new run reuses the outputs of the steps the original finished
before the fork point (they do not run again) and runs the rest anew; the original is
untouched."""

from __future__ import annotations

from collections import Counter

import grpc
import pytest
from pydantic import BaseModel

from loomwork.flows import StepContext, Workflow, default_registry, step
from protos.loomwork.v1 import workflow_pb2
from tests.support import auth, field_violations, unique
from tests.workflow_support import as_dict, as_struct, get_run, has_status, start_run, wait_run

S = workflow_pb2
# Executions of each step (the worker runs in this process): what a side effect would count.
RAN: Counter[tuple[str, str]] = Counter()
# Orders whose price list is broken (the world outside, fixed by a test before it forks).
BROKEN: set[str] = set()


class Order(BaseModel):
    key: str
    note: str = ""


class Fetched(BaseModel):
    key: str
    fetch_number: int


class Priced(BaseModel):
    key: str
    fetch_number: int
    price: int


class Published(BaseModel):
    key: str
    fetch_number: int
    price: int
    published: bool


@step("fetch", input=Order, output=Fetched)
async def fetch(order: Order, ctx: StepContext) -> Fetched:
    RAN["fetch", order.key] += 1
    return Fetched(key=order.key, fetch_number=RAN["fetch", order.key])


@step("price", input=Fetched, output=Priced)
async def price(fetched: Fetched, ctx: StepContext) -> Priced:
    RAN["price", fetched.key] += 1
    if fetched.key in BROKEN:
        raise ValueError("the price list is broken")
    return Priced(key=fetched.key, fetch_number=fetched.fetch_number, price=42)


@step("publish", input=Priced, output=Published)
async def publish(priced: Priced, ctx: StepContext) -> Published:
    RAN["publish", priced.key] += 1
    return Published(**priced.model_dump(), published=True)


default_registry.register(
    Workflow("forkable", input=Order, output=Published).then(fetch).then(price).then(publish)
)

SUCCEEDED = has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED)
FAILED = has_status(S.WORKFLOW_RUN_STATUS_FAILED)


async def _fork(workflows, token: str, run_id: str, from_step: str, **kw) -> S.WorkflowRun:
    response = await workflows.ForkRun(
        S.WorkflowServiceForkRunRequest(run_id=run_id, from_step_id=from_step, **kw),
        metadata=auth(token),
    )
    return response.run


async def test_a_fork_reuses_the_steps_before_its_fork_point(workflows, token) -> None:
    key = unique("order")
    original = await start_run(workflows, token, "forkable", {"key": key})
    original = await wait_run(workflows, token, original.id, SUCCEEDED)
    assert RAN["fetch", key] == RAN["price", key] == RAN["publish", key] == 1

    forked = await _fork(workflows, token, original.id, "price")
    assert forked.id != original.id
    assert forked.forked_from == original.id
    forked = await wait_run(workflows, token, forked.id, SUCCEEDED)

    # fetch did not run again; price and publish did.
    assert (RAN["fetch", key], RAN["price", key], RAN["publish", key]) == (1, 2, 2)
    steps = {s.path: s for s in forked.steps}
    assert steps["fetch"].reused_from == original.id
    assert steps["fetch"].status == S.WORKFLOW_STEP_STATUS_SUCCEEDED
    assert as_dict(steps["fetch"].output) == as_dict(original.steps[0].output)
    assert steps["price"].reused_from == steps["publish"].reused_from == ""
    assert as_dict(forked.output)["fetch_number"] == 1  # the reused fetch's output

    # The original is untouched.
    again = await get_run(workflows, token, original.id)
    assert again.status == S.WORKFLOW_RUN_STATUS_SUCCEEDED
    assert [s.reused_from for s in again.steps] == ["", "", ""]
    assert again.forked_from == ""


async def test_a_failed_run_is_forked_at_its_failing_step_once_the_fault_is_fixed(
    workflows, token
) -> None:
    key = unique("order")
    BROKEN.add(key)
    failed = await start_run(workflows, token, "forkable", {"key": key})
    failed = await wait_run(workflows, token, failed.id, FAILED)
    assert (RAN["fetch", key], RAN["publish", key]) == (1, 0)

    BROKEN.discard(key)  # the price list is repaired
    fixed = await _fork(workflows, token, failed.id, "price")
    fixed = await wait_run(workflows, token, fixed.id, SUCCEEDED)
    assert fixed.forked_from == failed.id
    assert (RAN["fetch", key], RAN["publish", key]) == (1, 1)
    assert as_dict(fixed.output) == {
        "key": key,
        "fetch_number": 1,
        "price": 42,
        "published": True,
    }


async def test_a_fork_from_the_first_step_with_a_new_input_runs_everything(
    workflows, token
) -> None:
    key = unique("order")
    original = await start_run(workflows, token, "forkable", {"key": key})
    original = await wait_run(workflows, token, original.id, SUCCEEDED)
    forked = await _fork(
        workflows, token, original.id, "fetch", input=as_struct({"key": key, "note": "again"})
    )
    forked = await wait_run(workflows, token, forked.id, SUCCEEDED)
    assert as_dict(forked.input) == {"key": key, "note": "again"}
    assert [s.reused_from for s in forked.steps] == ["", "", ""]
    assert RAN["fetch", key] == 2
    assert as_dict(forked.output)["fetch_number"] == 2


async def test_fork_errors_name_the_field(workflows, token, other_token) -> None:
    key = unique("order")
    run = await start_run(workflows, token, "forkable", {"key": key})
    await wait_run(workflows, token, run.id, SUCCEEDED)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _fork(workflows, token, run.id, "no-such-step")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "from_step_id" in field_violations(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _fork(workflows, token, run.id, "")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "from_step_id" in field_violations(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _fork(workflows, token, run.id, "price", input=as_struct({"wrong": 1}))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Another tenant's run is not found, and nothing is started for it.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _fork(workflows, other_token, run.id, "price")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert RAN["fetch", key] == 1
