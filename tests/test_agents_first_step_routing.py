"""A split deployment (a server with no worker, a worker beside it): the server has the
worker begin a run's first step as it starts the run, and the run's first activity, sent to
that worker's own queue, takes the step over — the model is asked once and nothing is
streamed twice. A chosen worker that never takes the activity costs a short wait, not the
run (loomwork.agents.first_step_routing)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from redis.asyncio import Redis
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.api.history.v1 import HistoryEvent

from loomwork.agents.first_step_routing import FirstStepWorkers
from loomwork.config import Settings
from loomwork.testing import ChatRequest, ScriptedModelServer, Turn
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, memory_pb2, memory_pb2_grpc, run_pb2
from server.first_step_worker import FirstStepWorker
from server.runtime import Runtime
from tests.support import (
    RunningWorker,
    another_server,
    auth,
    own_runtime,
    unique,
    worker_process,
)


@dataclass
class Split:
    server: Runtime  # no worker in its process
    worker: Runtime
    first_steps: FirstStepWorker | None
    channel: grpc.aio.Channel


@asynccontextmanager
async def split_deployment(settings: Settings, *, first_steps: bool = True) -> AsyncIterator[Split]:
    """A server runtime and a worker runtime on one task queue of their own (two processes'
    clients and pools), the worker with its first-step queue unless `first_steps` is False;
    a channel to the server's gRPC endpoint."""
    queue = unique("split")
    async with (
        own_runtime(settings, task_queue=queue) as server,
        own_runtime(settings, task_queue=queue) as worker,
    ):
        running = RunningWorker(worker)
        routed = FirstStepWorker(worker) if first_steps else None
        task = asyncio.create_task(routed.run()) if routed else None
        try:
            if routed is not None:
                await _listed(server.first_steps, routed.queue)
            async with another_server(server) as channel:
                yield Split(server, worker, routed, channel)
        finally:
            if routed is not None and task is not None:
                await routed.shutdown()
                await task
            await running.stop()


async def _listed(workers: FirstStepWorkers, queue: str) -> None:
    for _ in range(200):
        if await workers.redis.zscore(workers.registry, queue) is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{queue} was never listed")


async def _stream(
    channel: grpc.aio.Channel, token: str, thread_id: str
) -> list[agent_pb2.AgentEvent]:
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    request = agent_pb2.StreamRequest(
        agent_name="assistant", prompt="I am Ada", thread_id=thread_id
    )
    return [r.event async for r in agents.Stream(request, metadata=auth(token))]


async def _history(runtime: Runtime, run_id: str) -> list[HistoryEvent]:
    handle = runtime.temporal.get_workflow_handle(f"agent/assistant/alpha/{run_id}")
    return [e async for e in handle.fetch_history_events()]


def _first_activities(history: list[HistoryEvent]) -> list[str]:
    """The task queue each `agent_start_and_step` was scheduled on, in order."""
    return [
        e.activity_task_scheduled_event_attributes.task_queue.name
        for e in history
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "agent_start_and_step"
    ]


async def test_the_worker_a_server_chose_begins_the_first_step_and_its_activity_takes_it_over(
    settings: Settings, runtime: Runtime, model, token: str
) -> None:
    model.set_script([Turn(text="Hello, Ada.")])
    async with split_deployment(settings) as split:
        assert split.server.agent_steps is None  # no worker in the server's process
        assert split.first_steps is not None
        thread_id = unique("chat")
        events = await _stream(split.channel, token, thread_id)
        # Begun on the worker as the run started, then taken over by the run's first
        # activity there: the model was asked once and the text came once.
        assert split.worker.speculation.adopted == 1
        assert len(model.requests) == 1
        assert events[0].HasField("run_started")
        assert "".join(e.text_delta.text for e in events) == "Hello, Ada."
        assert not any(e.HasField("step_retrying") for e in events)
        assert events[-1].run_finished.status == run_pb2.RUN_STATUS_SUCCEEDED
        # The thread holds the input and the answer once each.
        memory = memory_pb2_grpc.MemoryServiceStub(split.channel)
        stored = await memory.ListMessages(
            memory_pb2.ListMessagesRequest(thread_id=thread_id), metadata=auth(token)
        )
        assert [m.parts[0].text.text for m in stored.messages] == ["I am Ada", "Hello, Ada."]
        # Temporal shows the first activity, run once, on the chosen worker's queue.
        history = await _history(split.server, events[0].run_id)
        assert _first_activities(history) == [split.first_steps.queue]


async def test_a_chosen_worker_that_never_takes_the_first_step_costs_the_run_a_wait(
    settings: Settings, runtime: Runtime, model, token: str
) -> None:
    """A worker is listed and hears the notice but takes nothing (as one that hangs would):
    the run's first activity leaves its queue after the wait and runs on the run's own."""
    model.set_script([Turn(text="Hello, Ada.")])
    async with split_deployment(settings, first_steps=False) as split:
        workers = split.server.first_steps
        silent = unique("silent-worker")
        listener = Redis.from_url(settings.redis_url or "")
        pubsub = listener.pubsub()
        await pubsub.subscribe(workers.channel(silent))
        await workers.redis.zadd(workers.registry, {silent: 1e12})
        try:
            events = await _stream(split.channel, token, unique("chat"))
        finally:
            await workers.redis.zrem(workers.registry, silent)
            await pubsub.aclose()
            await listener.aclose()
        assert events[-1].run_finished.status == run_pb2.RUN_STATUS_SUCCEEDED
        assert "".join(e.text_delta.text for e in events) == "Hello, Ada."
        assert len(model.requests) == 1
        # The step is marked as started over (had the chosen worker streamed some of it
        # before it was lost, a reader would discard that), then streams once.
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds.count("step_retrying") == 1
        assert kinds.index("step_retrying") < kinds.index("text_delta")
        history = await _history(split.server, events[0].run_id)
        assert _first_activities(history) == [silent, split.server.settings.task_queue]
        [timed_out] = [
            e.activity_task_timed_out_event_attributes.failure.timeout_failure_info
            for e in history
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT
        ]
        assert timed_out.timeout_type == TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START


async def test_with_no_worker_hearing_a_server_starts_its_runs_as_before(
    settings: Settings, runtime: Runtime, model, token: str
) -> None:
    """A worker listed but no longer subscribed (it died a moment ago): no step is begun and
    the run's first activity goes to the run's own queue at once."""
    model.set_script([Turn(text="Hello, Ada.")])
    async with split_deployment(settings, first_steps=False) as split:
        workers = split.server.first_steps
        gone = unique("gone-worker")
        await workers.redis.zadd(workers.registry, {gone: 1e12})
        try:
            events = await _stream(split.channel, token, unique("chat"))
        finally:
            await workers.redis.zrem(workers.registry, gone)
        assert events[-1].run_finished.status == run_pb2.RUN_STATUS_SUCCEEDED
        history = await _history(split.server, events[0].run_id)
        assert _first_activities(history) == [split.server.settings.task_queue]


SLOW = "slowly " * 200  # ~20 s as streamed below: the worker is lost long before its end


def _slow_then_recovered(request: ChatRequest) -> Turn:
    if request.index == 0:  # the first attempt streams slowly (requests are cleared first)
        return Turn(text=SLOW, chunk_size=7, chunk_delay=0.1)
    return Turn(text="Recovered.")


async def test_a_chosen_worker_killed_mid_first_step_leaves_the_step_to_another(
    settings: Settings,
    runtime: Runtime,
    embedded: Mapping[str, str],
    model: ScriptedModelServer,
    token: str,
    tmp_path: Path,
) -> None:
    """`loomwork worker` processes: the server chose the first one, which took the step
    over and streams it when it is killed (SIGKILL); the step leaves its queue for the run's
    own, where the second worker runs it again. The stream says the step started over."""
    queue, log = unique("split"), tmp_path / "workers.log"
    model.set_script(_slow_then_recovered)
    env = {
        "OPENAI_BASE_URL": model.base_url,
        "OPENAI_API_KEY": "test-key",
        "LOOMWORK_CHAT_MODEL": "scripted",
        "LOOMWORK_DEMO": "true",
    }
    first = worker_process(embedded, queue, log, **env)
    second: subprocess.Popen[bytes] | None = None
    try:
        async with own_runtime(settings, task_queue=queue) as server:
            workers = server.first_steps
            for _ in range(600):  # the first worker lists itself
                assert first.poll() is None, log.read_text()
                if await workers.redis.zcard(workers.registry):
                    break
                await asyncio.sleep(0.05)
            async with another_server(server) as channel:
                agents = agent_pb2_grpc.AgentServiceStub(channel)
                stream = agents.Stream(
                    agent_pb2.StreamRequest(agent_name="assistant", prompt="go slowly"),
                    metadata=auth(token),
                    timeout=90,
                )
                events = []
                async for response in stream:  # until the chosen worker streams the step
                    events.append(response.event)
                    if response.event.HasField("text_delta"):
                        break
                second = worker_process(embedded, queue, log, **env)
                first.send_signal(signal.SIGKILL)
                events += [response.event async for response in stream]
            history = await _history(server, events[0].run_id)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.to_thread(process.wait, 30)
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_SUCCEEDED, log.read_text()
    kinds = [e.WhichOneof("event") for e in events]
    retry = len(kinds) - 1 - kinds[::-1].index("step_retrying")
    assert "text_delta" in kinds[:retry]  # the lost worker's text, then the mark
    assert "".join(e.text_delta.text for e in events[retry:]) == "Recovered."
    assert len(model.requests) == 2
    chosen, own = _first_activities(history)
    assert chosen.startswith(f"{queue}-first-step-") and own == queue
