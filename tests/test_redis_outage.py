"""An outage of Redis delays an agent run, never fails it.

A server and a worker of their own use a Valkey of their own (the session's is untouched).
It is killed (SIGKILL) while a run streams its answer and started again ~10 s later on the
same port and data: meanwhile Stream, WatchRun and a workflow's StartRun answer UNAVAILABLE
(GetRun the run, or UNAVAILABLE; the refused start leaves nothing to be published later) and
memory reads still answer (from Postgres); afterwards the run has
completed, and WatchRun from where the broken stream stopped, or from the start, ends with
its terminal event, with every event once and none missing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from loomwork.config import Settings
from loomwork.flows.state import event_log_key
from loomwork.testing import ScriptedToolCall, Turn
from protos.loomwork.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    run_pb2,
    workflow_pb2,
    workflow_pb2_grpc,
)
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from tests.support import RunningWorker, another_server, auth, own_runtime, unique

OUTAGE = 10.0  # seconds Valkey stays down
ANSWER = " ".join(f"word{i}" for i in range(150))


@dataclass
class OwnRedisServer:
    """A server + worker whose Redis is `valkey`, a stack of that one server."""

    valkey: EmbeddedStack
    runtime: Runtime
    agents: agent_pb2_grpc.AgentServiceStub
    memory: memory_pb2_grpc.MemoryServiceStub
    workflows: workflow_pb2_grpc.WorkflowServiceStub

    def kill_valkey(self) -> None:
        pid = int((self.valkey.home / "valkey" / "valkey.pid").read_text())
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def own_redis(
    settings: Settings, runtime: Runtime, tmp_path: Path
) -> AsyncIterator[OwnRedisServer]:
    valkey = EmbeddedStack(tmp_path / "valkey-home", postgres=False, temporal=False)
    endpoints = await asyncio.to_thread(valkey.start)
    try:
        async with own_runtime(settings, redis_url=endpoints.redis_url) as own:
            worker = RunningWorker(own)
            try:
                async with another_server(own) as channel:
                    yield OwnRedisServer(
                        valkey,
                        own,
                        agent_pb2_grpc.AgentServiceStub(channel),
                        memory_pb2_grpc.MemoryServiceStub(channel),
                        workflow_pb2_grpc.WorkflowServiceStub(channel),
                    )
            finally:
                await worker.stop()
    finally:
        await asyncio.to_thread(valkey.stop)


def _text(events: list[agent_pb2.AgentRunEvent]) -> str:
    """The answer the events stream, as a client rebuilds it (a step_retrying drops what its
    step streamed before)."""
    by_step: dict[int, list[str]] = {}
    for event in events:
        if event.HasField("step_retrying"):
            by_step[event.step] = []
        elif event.HasField("text_delta"):
            by_step.setdefault(event.step, []).append(event.text_delta.text)
    return "".join("".join(parts) for _, parts in sorted(by_step.items()))


async def _watch(
    agents: agent_pb2_grpc.AgentServiceStub, token: str, run_id: str, after: int
) -> list[agent_pb2.AgentRunEvent]:
    request = agent_pb2.AgentServiceWatchRunRequest(run_id=run_id, after_event_id=after)
    return [
        response.event
        async for response in agents.WatchRun(request, metadata=auth(token), timeout=120)
    ]


async def _status(call: object) -> grpc.StatusCode:
    """How a unary or streaming call ended."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:  # type: ignore[attr-defined]
                pass
        else:
            await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_run_outlives_a_redis_outage(own_redis: OwnRedisServer, token, model) -> None:
    agents, memory = own_redis.agents, own_redis.memory
    thread_id = unique("outage")
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("save_note", {"title": "milk", "body": "buy 2"})]),
            # The answer streams for ~8 s: Valkey dies while it does.
            Turn(text=ANSWER, chunk_size=8, chunk_delay=0.05),
        ]
    )
    stream = agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="note: milk", thread_id=thread_id),
        metadata=auth(token),
        timeout=120,
    )
    seen: list[agent_pb2.AgentRunEvent] = []
    with pytest.raises(grpc.aio.AioRpcError) as broken:
        async for response in stream:
            seen.append(response.event)
            if len([e for e in seen if e.HasField("text_delta")]) == 3:
                own_redis.kill_valkey()
                down_since = time.monotonic()
    assert broken.value.code() == grpc.StatusCode.UNAVAILABLE, broken.value.details()
    run_id = seen[0].run_id
    last_seen = seen[-1].event_id
    assert [e.event_id for e in seen] == list(range(1, last_seen + 1))

    # While Valkey is down: UNAVAILABLE (retryable), never INTERNAL; memory still reads.
    await asyncio.to_thread(own_redis.valkey.stop)  # forget the dead child (no restart)
    watch = agents.WatchRun(
        agent_pb2.AgentServiceWatchRunRequest(run_id=run_id, after_event_id=last_seen),
        metadata=auth(token),
        timeout=30,
    )
    assert await _status(watch) == grpc.StatusCode.UNAVAILABLE
    another = agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="hi"), metadata=auth(token)
    )
    assert await _status(another) == grpc.StatusCode.UNAVAILABLE
    get = agents.GetRun(agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token))
    assert await _status(get) in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    stored = await memory.ListMessages(
        memory_pb2.ListMessagesRequest(thread_id=thread_id), metadata=auth(token), timeout=30
    )
    assert stored.messages  # the prompt, saved as the run started
    order = struct_pb2.Struct()
    order.update({"customer": "Ada", "lines": [{"sku": "loom", "quantity": 1, "unit_price": 5}]})
    refused_run = unique("refused")
    asked = time.monotonic()
    start = own_redis.workflows.StartRun(
        workflow_pb2.WorkflowServiceStartRunRequest(
            workflow_id="order-pipeline", input=order, client_run_id=refused_run
        ),
        metadata=auth(token),
    )
    assert await _status(start) == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - asked < 10  # at once, not after the steps' patience
    await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - down_since)))

    await asyncio.to_thread(own_redis.valkey.start)  # same port, same data (AOF)
    # The refused start left nothing behind to be written later.
    events = own_redis.runtime.events
    assert await events.last_id(event_log_key("alpha", refused_run)) == 0
    rest = await _watch(agents, token, run_id, last_seen)
    assert rest[-1].HasField("run_finished")
    assert rest[-1].run_finished.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert [e.event_id for e in rest] == list(range(last_seen + 1, rest[-1].event_id + 1))

    everything = await _watch(agents, token, run_id, 0)
    assert [e.event_id for e in everything] == list(range(1, len(everything) + 1))
    assert everything[: len(seen)] == seen and everything[len(seen) :] == rest
    kinds = [e.WhichOneof("event") for e in everything]
    assert kinds.count("run_started") == 1 and kinds.count("run_finished") == 1
    assert kinds.count("tool_call") == 1 and kinds.count("tool_result") == 1
    assert kinds.count("step_finished") == 2 and kinds.count("usage") == 2
    assert _text(everything) == ANSWER  # every delta once, none lost
    # The outage was waited out inside the step: the model was not called again.
    assert "step_retrying" not in kinds
    assert len(model.requests) == 2
    run = (
        await agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token)
        )
    ).run
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert run.last_event_id == everything[-1].event_id
