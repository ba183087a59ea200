"""Workflow runs and their workers: a run no worker took is pending (and its watchers are
told), and a worker killed mid-step leaves the run to the next worker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import grpc
import pytest

from loomwork.flows.state import DslRunInput
from protos.loomwork.v1 import workflow_pb2, workflow_pb2_grpc
from tests.support import RunningWorker, another_server, auth, own_runtime, unique, worker_process
from tests.workflow_support import (
    EXPENSE,
    ORDER,
    as_dict,
    as_struct,
    get_run,
    has_status,
    start_run,
    wait_run,
)
from workflows.dsl_run import DslRunWorkflow

S = workflow_pb2


async def test_watch_says_when_no_worker_takes_a_run(settings, runtime, token) -> None:
    """A run no worker takes: its watchers get run_started at once (the server announces
    the run), then run_pending once (however many watch), and the rest when a worker comes.
    A run a worker took, however long it waits for a person, is not "pending"."""
    async with (
        own_runtime(settings, pending_notice_seconds=0.5) as own,
        another_server(own) as channel,
    ):
        stub = workflow_pb2_grpc.WorkflowServiceStub(channel)
        run = await start_run(stub, token, "order-pipeline", ORDER)
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
            suspended = await start_run(stub, token, "expense-approval", EXPENSE)
            await wait_run(stub, token, suspended.id, has_status(S.WORKFLOW_RUN_STATUS_SUSPENDED))
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


async def test_a_run_no_worker_took_is_pending_until_one_comes(settings, runtime, token) -> None:
    """A run accepted by a server whose workers are down is PENDING (read from its start
    input, without waiting on a worker); once its worker is gone again, GetRun says so
    (UNAVAILABLE) instead of hanging; it finishes when a worker is back."""
    async with own_runtime(settings) as own, another_server(own) as channel:
        stub = workflow_pb2_grpc.WorkflowServiceStub(channel)
        run = await start_run(stub, token, "expense-approval", EXPENSE)
        pending = (
            await stub.GetRun(
                S.WorkflowServiceGetRunRequest(run_id=run.id), metadata=auth(token), timeout=3
            )
        ).run
        assert pending.status == S.WORKFLOW_RUN_STATUS_PENDING
        assert as_dict(pending.input) == EXPENSE

        worker = RunningWorker(own)
        try:
            await wait_run(stub, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUSPENDED))
        finally:
            await worker.stop()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await get_run(stub, token, run.id)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no worker answered" in (err.value.details() or "")

        worker = RunningWorker(own)
        try:
            await stub.ResumeRun(
                S.WorkflowServiceResumeRunRequest(
                    run_id=run.id,
                    step_id="approve",
                    resume_data=as_struct({"approved": True, "approver": "Linus"}),
                ),
                metadata=auth(token),
            )
            done = await wait_run(stub, token, run.id, has_status(S.WORKFLOW_RUN_STATUS_SUCCEEDED))
        finally:
            await worker.stop()
        assert as_dict(done.output)["paid"] == 250.0


# Worker processes that also load the workflow defined for them (`killable`).
WORKFLOW_MODULES = "tests.workflow_fixtures"


async def test_worker_killed_mid_step_and_the_run_completes(
    embedded, runtime, tmp_path: Path
) -> None:
    from tests.workflow_fixtures import KILLABLE

    queue = unique("wf-kill")
    run_id = unique("kill")
    log = tmp_path / "workers.log"
    first = worker_process(embedded, queue, log, LOOMWORK_WORKFLOW_MODULES=WORKFLOW_MODULES)
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
        second = worker_process(embedded, queue, log, LOOMWORK_WORKFLOW_MODULES=WORKFLOW_MODULES)
        state = await asyncio.wait_for(handle.result(), 60)
        assert state.status == "succeeded"
        assert state.output == {"name": "rebuild", "attempt": 2}
        assert state.step("work").attempts == 2
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
