"""The clients of bench/faults.py: each run followed to its end by a client that reconnects
with WatchRun(after_event_id=<last seen>) whenever its stream breaks, trying the next server,
and checks what it got: event ids dense from 1 with no gap and no duplicate, the terminal
event last."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import StreamedText
from protos.loomwork.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    run_pb2,
    workflow_pb2,
    workflow_pb2_grpc,
)

AUTH = (("authorization", "Bearer bench"),)
SERVING = health_pb2.HealthCheckResponse.SERVING
#: How a client waits between reconnects (doubling up to the second value).
RECONNECT_PAUSE = (0.2, 2.0)
CHANNEL_OPTIONS = [
    # A server that was killed and restarted is reached again soon, not after gRPC's default
    # reconnect backoff (up to 2 minutes).
    ("grpc.initial_reconnect_backoff_ms", 300),
    ("grpc.min_reconnect_backoff_ms", 300),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class Event(Protocol):
    event_id: int

    @property
    def keep_alive(self) -> run_pb2.StreamKeepAlive: ...

    def HasField(self, name: str) -> bool: ...

    def WhichOneof(self, name: str) -> str | None: ...


@dataclass
class Server:
    """One Loomwork server as the clients reach it."""

    address: str
    channel: grpc.aio.Channel
    agents: agent_pb2_grpc.AgentServiceStub
    workflows: workflow_pb2_grpc.WorkflowServiceStub
    health: health_pb2_grpc.HealthStub

    @classmethod
    def open(cls, address: str) -> Server:
        channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return cls(
            address,
            channel,
            agent_pb2_grpc.AgentServiceStub(channel),
            workflow_pb2_grpc.WorkflowServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
        )


@dataclass
class Followed:
    """One run as its client saw it."""

    kind: str  # "agent" or "workflow"
    run_id: str
    events: list[Any] = field(default_factory=list)
    reconnects: int = 0
    duplicates: int = 0
    gaps: int = 0
    stalls: int = 0  # streams cut by the client after `stall` seconds without an event
    codes: Counter[str] = field(default_factory=Counter)  # why streams ended early
    keep_alives: Counter[str] = field(default_factory=Counter)  # by the liveness they said
    details: list[str] = field(default_factory=list)  # statuses other than UNAVAILABLE
    longest_silence: float = 0.0
    done_at: float | None = None
    last_event_at: float = field(default_factory=time.monotonic)
    progressed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last_id(self) -> int:
        return self.events[-1].event_id if self.events else 0

    def take(self, event: Event) -> bool:
        """Record an event as it arrives; True when it is the terminal one. A keep-alive (a
        quiet stream's sign of life: no event of the run, its id the last one's) is counted
        apart, by what it says of the run."""
        if event.HasField("keep_alive"):
            self.keep_alives[run_pb2.RunLiveness.Name(event.keep_alive.liveness)] += 1
            return False
        now = time.monotonic()
        self.longest_silence = max(self.longest_silence, now - self.last_event_at)
        self.last_event_at = now
        if event.event_id <= self.last_id:
            self.duplicates += 1
            return False
        if event.event_id != self.last_id + 1:
            self.gaps += 1
        self.events.append(event)
        kind = event.WhichOneof("event")
        if kind in ("text_delta", "step_started"):
            self.progressed.set()
        if kind in ("run_finished", "run_failed"):
            self.done_at = now
            return True
        return False

    def broke(self, error: grpc.aio.AioRpcError | str) -> None:
        """A stream ended early: UNAVAILABLE is what a client is told to retry; anything else
        (another status, or a stream that ended without the terminal event) is kept."""
        code = error if isinstance(error, str) else error.code().name
        self.codes[code] += 1
        if code != "UNAVAILABLE" and len(self.details) < 3:
            self.details.append(code if isinstance(error, str) else f"{code}: {error.details()}")

    def succeeded(self) -> bool:
        if self.done_at is None or not self.events:
            return False
        last = self.events[-1]
        if not last.HasField("run_finished"):
            return False
        wanted = (
            run_pb2.RUN_STATUS_SUCCEEDED
            if self.kind == "agent"
            else workflow_pb2.WORKFLOW_RUN_STATUS_SUCCEEDED
        )
        return bool(last.run_finished.status == wanted)

    def dense(self) -> bool:
        return [e.event_id for e in self.events] == list(range(1, len(self.events) + 1))


OpenStream = Callable[[Server, int], AsyncIterator[Any]]


async def follow(
    run: Followed,
    servers: list[Server],
    first: int,
    open_stream: OpenStream,
    *,
    deadline: float,
    stall: float,
) -> None:
    """Read the run's stream to its terminal event, reconnecting (next server, after the last
    event seen) whenever it breaks or stays silent `stall` seconds, until `deadline`."""
    index = first
    pause = RECONNECT_PAUSE[0]
    while time.monotonic() < deadline:
        call = open_stream(servers[index % len(servers)], run.last_id)
        iterator = aiter(call)
        try:
            while True:
                try:
                    response = await asyncio.wait_for(anext(iterator), stall)
                except StopAsyncIteration:
                    run.broke("ended without the terminal event")
                    break
                except TimeoutError:
                    run.stalls += 1
                    break
                if run.take(response.event):
                    return
                pause = RECONNECT_PAUSE[0]
        except grpc.aio.AioRpcError as error:
            run.broke(error)
        finally:
            cancel = getattr(call, "cancel", None)
            if cancel is not None:
                cancel()
        run.reconnects += 1
        index += 1
        await asyncio.sleep(pause)
        pause = min(pause * 2, RECONNECT_PAUSE[1])


def agent_stream(agent: str, run_id: str) -> OpenStream:
    """Stream with `run_id` as client_run_id until an event arrived (a repeat answers the same
    run from its first event), then WatchRun after the last event seen."""

    def open_stream(server: Server, after: int) -> AsyncIterator[Any]:
        if after == 0:
            request = agent_pb2.StreamRequest(agent_name=agent, prompt=run_id, client_run_id=run_id)
            return server.agents.Stream(request, metadata=AUTH)
        watch = agent_pb2.AgentServiceWatchRunRequest(run_id=run_id, after_event_id=after)
        return server.agents.WatchRun(watch, metadata=AUTH)

    return open_stream


def workflow_stream(run_id: str) -> OpenStream:
    """WatchRun of a started workflow run after the last event seen."""

    def open_stream(server: Server, after: int) -> AsyncIterator[Any]:
        request = workflow_pb2.WorkflowServiceWatchRunRequest(run_id=run_id, after_event_id=after)
        return server.workflows.WatchRun(request, metadata=AUTH)

    return open_stream


async def start_workflow(
    run: Followed, servers: list[Server], first: int, workflow: str, deadline: float
) -> bool:
    """StartRun with `run.run_id` as client_run_id (a repeat finds the same run), trying the
    next server while one fails; False if none answered by `deadline`."""
    index = first
    request = workflow_pb2.WorkflowServiceStartRunRequest(
        workflow_id=workflow, client_run_id=run.run_id
    )
    request.input.update({"marker": run.run_id})
    while time.monotonic() < deadline:
        try:
            server = servers[index % len(servers)]
            await server.workflows.StartRun(request, metadata=AUTH, timeout=30)
            return True
        except grpc.aio.AioRpcError as error:
            run.broke(error)
            index += 1
            await asyncio.sleep(RECONNECT_PAUSE[0])
    return False


def rebuilt_text(run: Followed) -> str:
    """The agent's answer as a reader rebuilds it (a retried step's text replaces its draft)."""
    text = StreamedText()
    for event in run.events:
        text.add(event)
    return str(text)


async def run_status(run: Followed, servers: list[Server], deadline: float) -> str:
    """The run's status as GetRun answers it (any server; retried while UNAVAILABLE)."""
    index = 0
    while True:
        server = servers[index % len(servers)]
        try:
            if run.kind == "agent":
                agent_request = agent_pb2.AgentServiceGetRunRequest(run_id=run.run_id)
                found = await server.agents.GetRun(agent_request, metadata=AUTH, timeout=10)
                return str(run_pb2.RunStatus.Name(found.run.status))
            request = workflow_pb2.WorkflowServiceGetRunRequest(run_id=run.run_id)
            response = await server.workflows.GetRun(request, metadata=AUTH, timeout=10)
            return str(workflow_pb2.WorkflowRunStatus.Name(response.run.status))
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                return f"GetRun: {error.code().name} {error.details()}"
            index += 1
            await asyncio.sleep(0.5)


async def serving(server: Server) -> bool:
    try:
        response = await server.health.Check(health_pb2.HealthCheckRequest(), timeout=2)
    except grpc.aio.AioRpcError:
        return False
    return bool(response.status == SERVING)


async def all_serving(servers: list[Server], since: float, deadline: float) -> float | None:
    """Seconds from `since` until every server said SERVING (None: not by `deadline`)."""
    while time.monotonic() < deadline:
        if all(await asyncio.gather(*(serving(s) for s in servers))):
            return time.monotonic() - since
        await asyncio.sleep(0.25)
    return None
