"""Workflow DSL overhead: a 10-step linear run, suspend → resume and runs/s held, each
against a bare Temporal workflow measured in the same run on the same dev server.

    .venv/bin/python bench/workflow_steps.py [--runs 30] [--resumes 30] [--total 80]

- Per run: a 10-step linear DSL definition (10 trivial step functions) started with the
  Temporal client (`DslRun` with a `DslRunInput`, as a webhook route does; StartRun also
  publishes run_started first, and the workflow then does not) and awaited, over a bare
  workflow calling 10 plain activities doing the same work (goal ≤ 1.2×). The gRPC path
  (StartRun, then WatchRun to the terminal event) is shown beside it.
- Suspend → resume: the `resume_run` Update on a suspended step, from send to answer, over a
  bare Update whose handler sets a flag and returns (goal ≤ 1.5×); ResumeRun shown beside.
- Throughput: runs/s with `--concurrency` runs in flight, `--total` runs, DSL over bare
  (goal ≥ 0.8×).

Timed runs alternate one by one (DSL, bare, gRPC, DSL, ...) and throughput alternates in
slices, so load from elsewhere on the machine falls on both sides alike. Both workers run
in this process on their own task queues with the SDK's default
(sandboxed) workflow runner; the bare workflows' module (this one) is passed through the
sandbox, as `workflows/dsl_run.py` passes its imports through. Starts embedded Postgres,
Valkey and Temporal in a temporary home.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.client import WorkflowHandle
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loomwork.config import Settings
from loomwork.flows import StepContext, Workflow, default_registry, step
from loomwork.flows.nodes import Step
from loomwork.flows.state import (
    DslRunInput,
    ResumeRequest,
    RunState,
    run_search_attributes,
    temporal_workflow_id,
)
from protos.loomwork.v1 import workflow_pb2, workflow_pb2_grpc
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from server.temporal import register_search_attributes
from server.transport.grpc_app import build_grpc_app
from server.worker import build_worker
from workflows.dsl_run import DslRunWorkflow

STEPS = 10
DSL_QUEUE = "bench-workflow-steps"
BARE_QUEUE = "bench-workflow-steps-bare"
TENANT = "bench"
AUTH = (("authorization", "Bearer bench"),)


class Count(BaseModel):
    n: int


class Approval(BaseModel):
    approved: bool


# -- the bare baseline ---------------------------------------------------------------------


@activity.defn(name="bench_bare_increment")
async def bare_increment(data: Count) -> Count:
    return Count(n=data.n + 1)


@workflow.defn(name="BenchBareLinear")
class BareLinear:
    @workflow.run
    async def run(self, data: Count) -> Count:
        for _ in range(STEPS):
            data = await workflow.execute_activity(
                bare_increment, data, start_to_close_timeout=timedelta(seconds=30)
            )
        return data


@workflow.defn(name="BenchBareSuspend")
class BareSuspend:
    def __init__(self) -> None:
        self.approval: Approval | None = None

    @workflow.run
    async def run(self, data: Count) -> Count:
        data = await workflow.execute_activity(
            bare_increment, data, start_to_close_timeout=timedelta(seconds=30)
        )
        await workflow.wait_condition(lambda: self.approval is not None)
        return await workflow.execute_activity(
            bare_increment, data, start_to_close_timeout=timedelta(seconds=30)
        )

    @workflow.query(name="waiting")
    def waiting(self) -> bool:
        return self.approval is None

    @workflow.update(name="resume")
    async def resume(self, approval: Approval) -> bool:
        self.approval = approval
        return True


# -- the DSL definitions -------------------------------------------------------------------


def _definitions() -> tuple[Workflow, Workflow]:
    def increment(i: int) -> Step:
        @step(f"s{i}", input=Count, output=Count, description=f"increment {i}")
        async def fn(data: Count, ctx: StepContext) -> Count:
            return Count(n=data.n + 1)

        return fn

    linear = Workflow("bench-linear", input=Count, output=Count)
    for i in range(STEPS):
        linear.then(increment(i))

    @step("hold", input=Count, output=Count, suspend=Count, resume=Approval)
    async def hold(data: Count, ctx: StepContext) -> Count:
        if ctx.resume_data is None:
            ctx.suspend(data)
        return Count(n=data.n + 1)

    suspend = Workflow("bench-suspend", input=Count, output=Count).then(hold)
    return linear, suspend


# -- measuring -----------------------------------------------------------------------------


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


Timed = Callable[[], Awaitable[float | None]]


async def _alternating(n: int, *fns: Timed) -> list[list[float]]:
    """`n` timings in ms of each `fn`, taken in turn (a b c a b c ...) so that load from
    elsewhere on the machine falls on all of them alike; `fn` may return its own timing."""
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(n):
        for fn, samples in zip(fns, out, strict=True):
            started = time.perf_counter()
            own = await fn()
            samples.append(own if own is not None else (time.perf_counter() - started) * 1000)
    return out


async def _throughput(
    fns: tuple[Timed, Timed], total: int, concurrency: int, rounds: int = 2
) -> tuple[float, float]:
    """Runs/s of each of two `fn`s with `concurrency` in flight, `total` runs each, taken in
    `rounds` alternating slices."""
    spent = [0.0, 0.0]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            spent[i] += await _concurrently(fn, total // rounds, concurrency)
    done = total // rounds * rounds
    return done / spent[0], done / spent[1]


async def _concurrently(fn: Timed, n: int, concurrency: int) -> float:
    """Seconds to run `fn` `n` times, at most `concurrency` at once."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await fn()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - started


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.perf_counter() + 30
    while not await check():
        if time.perf_counter() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


async def run(settings: Settings, args: argparse.Namespace) -> None:
    linear, suspend = _definitions()
    default_registry.register(linear, suspend)
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    client = runtime.temporal
    worker = build_worker(runtime)
    bare_worker = Worker(
        client,
        task_queue=BARE_QUEUE,
        workflows=[BareLinear, BareSuspend],
        activities=[bare_increment],
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_all_modules()
        ),
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
    )
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    async with worker, bare_worker, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        service = workflow_pb2_grpc.WorkflowServiceStub(ch)

        async def dsl_start(definition: Workflow) -> WorkflowHandle[DslRunWorkflow, RunState]:
            run_id = f"wfr_{uuid.uuid4().hex}"
            workflow_id = temporal_workflow_id(definition.id, TENANT, run_id)
            return await client.start_workflow(
                DslRunWorkflow.run,
                DslRunInput(
                    tenant=TENANT,
                    run_id=run_id,
                    workflow_id=definition.id,
                    workflow_version=definition.version,
                    input={"n": 0},
                ),
                id=workflow_id,
                task_queue=DSL_QUEUE,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(SearchAttributeKey.for_keyword(name), value)
                        for name, value in run_search_attributes(
                            TENANT, definition.id, run_id
                        ).items()
                    ]
                ),
            )

        async def dsl_linear() -> None:
            state = await (await dsl_start(linear)).result()
            assert state.output == {"n": STEPS}, state.output

        async def bare_linear() -> None:
            out = await client.execute_workflow(
                BareLinear.run, Count(n=0), id=f"bare-{uuid.uuid4()}", task_queue=BARE_QUEUE
            )
            assert out.n == STEPS, out

        def _input() -> struct_pb2.Struct:
            data = struct_pb2.Struct()
            data.update({"n": 0})
            return data

        async def grpc_linear() -> None:
            started = await service.StartRun(
                workflow_pb2.WorkflowServiceStartRunRequest(workflow_id=linear.id, input=_input()),
                metadata=AUTH,
            )
            kinds = [
                r.event.WhichOneof("event")
                async for r in service.WatchRun(
                    workflow_pb2.WorkflowServiceWatchRunRequest(run_id=started.run.id),
                    metadata=AUTH,
                    timeout=60,
                )
            ]
            assert len(kinds) == 2 + 2 * STEPS, kinds

        async def dsl_resume() -> float:
            handle = await dsl_start(suspend)

            async def suspended() -> bool:
                state: RunState = await handle.query(DslRunWorkflow.state)
                return state.status == "suspended"

            await _until(suspended, "DSL run never suspended")
            started = time.perf_counter()
            _ = await handle.execute_update(
                DslRunWorkflow.resume_run,
                ResumeRequest(step_id="hold", resume_data={"approved": True}),
            )
            took = (time.perf_counter() - started) * 1000
            assert (await handle.result()).output == {"n": 1}
            return took

        async def bare_resume() -> float:
            handle = await client.start_workflow(
                BareSuspend.run, Count(n=0), id=f"bare-{uuid.uuid4()}", task_queue=BARE_QUEUE
            )

            async def waiting() -> bool:
                return await handle.query(BareSuspend.waiting)

            await _until(waiting, "bare run never waited")
            started = time.perf_counter()
            _ = await handle.execute_update(BareSuspend.resume, Approval(approved=True))
            took = (time.perf_counter() - started) * 1000
            assert (await handle.result()).n == 2
            return took

        async def grpc_resume() -> float:
            started_run = await service.StartRun(
                workflow_pb2.WorkflowServiceStartRunRequest(workflow_id=suspend.id, input=_input()),
                metadata=AUTH,
            )
            run_id = started_run.run.id

            async def suspended() -> bool:
                got = await service.GetRun(
                    workflow_pb2.WorkflowServiceGetRunRequest(run_id=run_id), metadata=AUTH
                )
                return got.run.status == workflow_pb2.WORKFLOW_RUN_STATUS_SUSPENDED

            await _until(suspended, "gRPC run never suspended")
            data = struct_pb2.Struct()
            data.update({"approved": True})
            started = time.perf_counter()
            await service.ResumeRun(
                workflow_pb2.WorkflowServiceResumeRunRequest(
                    run_id=run_id, step_id="hold", resume_data=data
                ),
                metadata=AUTH,
            )
            return (time.perf_counter() - started) * 1000

        # warm up every path once
        for fn in (dsl_linear, bare_linear, grpc_linear, dsl_resume, bare_resume, grpc_resume):
            await fn()

        began = time.perf_counter()
        dsl, bare, via_grpc = await _alternating(args.runs, dsl_linear, bare_linear, grpc_linear)
        linear_s = time.perf_counter() - began

        began = time.perf_counter()
        dsl_up, bare_up, grpc_up = await _alternating(
            args.resumes, dsl_resume, bare_resume, grpc_resume
        )
        resume_s = time.perf_counter() - began

        began = time.perf_counter()
        dsl_rate, bare_rate = await _throughput(
            (dsl_linear, bare_linear), args.total, args.concurrency
        )
        rate_s = time.perf_counter() - began

    await app.stop(0)
    await runtime.close()

    print(
        f"workflow DSL vs bare Temporal, same dev server and process; {STEPS}-step linear run "
        f"({len(dsl)} runs, {linear_s:.0f} s), resume ({len(dsl_up)}, {resume_s:.0f} s), "
        f"throughput ({args.total} runs, {args.concurrency} in flight, {rate_s:.0f} s)"
    )
    rows = [
        ("10-step run, Temporal client", dsl, bare, "≤ 1.2×"),
        ("10-step run, StartRun+WatchRun", via_grpc, bare, "(info)"),
        ("suspend → resume Update", dsl_up, bare_up, "≤ 1.5×"),
        ("suspend → ResumeRun (gRPC)", grpc_up, bare_up, "(info)"),
    ]
    print(
        f"  {'':34} {'DSL p50/p99 ms':>17}   {'bare p50/p99 ms':>17}   ratio p50/p99   goal (p50)"
    )
    for name, ours, base, goal in rows:
        p50, p99 = _pct(ours, 0.5) / _pct(base, 0.5), _pct(ours, 0.99) / _pct(base, 0.99)
        print(
            f"  {name:34} {_pct(ours, 0.5):7.1f} / {_pct(ours, 0.99):7.1f}   "
            f"{_pct(base, 0.5):7.1f} / {_pct(base, 0.99):7.1f}   {p50:5.2f}× / {p99:5.2f}×   {goal}"
        )
    print(
        f"  {'throughput, runs/s':34} {dsl_rate:17.2f}   {bare_rate:17.2f}   "
        f"{dsl_rate / bare_rate:5.2f}×           ≥ 0.8×"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed 10-step runs per path")
    parser.add_argument("--resumes", type=int, default=30, help="timed resumes per path")
    parser.add_argument("--total", type=int, default=80, help="runs per throughput figure")
    parser.add_argument("--concurrency", type=int, default=20, help="runs in flight")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        stack = EmbeddedStack(Path(tmp), temporal_ui=False)
        endpoints = stack.start()
        try:
            settings = Settings(
                DATABASE_URL=endpoints.database_url,
                REDIS_URL=endpoints.redis_url,
                TEMPORAL_ADDRESS=endpoints.temporal_address,
                LOOMWORK_TOKENS=f"bench={TENANT}:admin",
                LOOMWORK_TASK_QUEUE=DSL_QUEUE,
                OPENAI_BASE_URL="http://127.0.0.1:9/v1",
                OPENAI_API_KEY="x",
            )
            asyncio.run(run(settings, args))
        finally:
            stack.stop()


if __name__ == "__main__":
    # Run as module `workflow_steps` (this script's folder is on sys.path): the sandbox
    # passes a named module through, but never `__main__`.
    import workflow_steps

    workflow_steps.main()
