"""Keep-alives of quiet streams: a watcher tells a slow run from a dead stream. They carry
the last event id sent and whether the run's workflow is open, are never stored, and move
no cursor; when Temporal cannot be reached the stream stays open and says UNKNOWN."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import typer
from typer.testing import CliRunner

from clients import LoomworkClient
from clients.cli import register
from loomwork.config import Settings
from loomwork.testing import Delay, Turn
from protos.loomwork.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    rag_pb2,
    rag_pb2_grpc,
    run_pb2,
    workflow_pb2,
    workflow_pb2_grpc,
)
from server.transport.grpc_app import build_grpc_app
from tests.rag_support import ANIMALS, create_index, ingest
from tests.redis_proxy import redis_proxy
from tests.support import another_server, auth, own_runtime, unique
from tests.workflow_support import (
    EXPENSE,
    as_struct,
    has_status,
    start_run,
    wait_run,
    watch_events,
)

KEEPALIVE = 0.5  # seconds: the servers of these tests send a keep-alive after this long quiet
OPEN, CLOSED, UNKNOWN = (
    run_pb2.RUN_LIVENESS_OPEN,
    run_pb2.RUN_LIVENESS_CLOSED,
    run_pb2.RUN_LIVENESS_UNKNOWN,
)


def split(events: list[Any]) -> tuple[list[Any], list[tuple[int, Any]]]:
    """The real events, and each keep-alive with the id of the real event before it."""
    real: list[Any] = []
    alive: list[tuple[int, Any]] = []
    for event in events:
        if event.HasField("keep_alive"):
            alive.append((real[-1].event_id if real else 0, event))
        else:
            real.append(event)
    return real, alive


def assert_cursor_kept(alive: list[tuple[int, Any]], after: int = 0) -> None:
    """Each keep-alive names the last event its stream sent (`after` before any)."""
    for before, event in alive:
        assert event.keep_alive.last_event_id == (before or after)
        assert event.event_id == (before or after)  # a cursor kept from event_id stays put
        assert event.keep_alive.HasField("time")


async def test_a_stalled_model_gets_keep_alives_then_the_run_ends(
    settings: Settings, worker: None, model, token
) -> None:
    async with (
        own_runtime(
            settings, stream_keepalive_seconds=KEEPALIVE, task_queue=settings.task_queue
        ) as own,
        another_server(own) as channel,
    ):
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        model.set_script([Delay(3.0, then=Turn(text="Slow, but here."))])
        events = [
            r.event
            async for r in agents.Stream(
                agent_pb2.StreamRequest(agent_name="assistant", prompt="take your time"),
                metadata=auth(token),
                timeout=60,
            )
        ]
        real, alive = split(events)
        assert alive, "a 3 s stall with keep-alives every 0.5 s sent none"
        assert {e.keep_alive.liveness for _, e in alive} == {OPEN}
        assert_cursor_kept(alive)
        assert all(e.run_id == real[0].run_id for _, e in alive)
        # The run is whole: dense ids counting no keep-alive, its text, its end.
        assert [e.event_id for e in real] == list(range(1, len(real) + 1))
        assert real[0].HasField("run_started") and real[-1].HasField("run_finished")
        assert "".join(e.text_delta.text for e in real) == "Slow, but here."
        # Keep-alives are not in the log: a replay has the real events only.
        replayed = [
            r.event
            async for r in agents.WatchRun(
                agent_pb2.AgentServiceWatchRunRequest(run_id=real[0].run_id),
                metadata=auth(token),
            )
        ]
        assert replayed == real


async def test_watch_resumed_from_a_keep_alive_has_no_gap_and_no_duplicate(
    settings: Settings, worker: None, model, token
) -> None:
    async with (
        own_runtime(
            settings, stream_keepalive_seconds=KEEPALIVE, task_queue=settings.task_queue
        ) as own,
        another_server(own) as channel,
    ):
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        model.set_script([Delay(4.0, then=Turn(text="After the reconnect."))])
        stream = agents.Stream(
            agent_pb2.StreamRequest(agent_name="assistant", prompt="slowly"),
            metadata=auth(token),
            timeout=60,
        )
        before: list[Any] = []
        async for response in stream:  # until the first keep-alive: the stream then drops
            before.append(response.event)
            if response.event.HasField("keep_alive"):
                break
        stream.cancel()
        real_before, alive = split(before)
        [(_, keep_alive)] = alive
        assert keep_alive.keep_alive.liveness == OPEN
        cursor = keep_alive.keep_alive.last_event_id
        assert cursor == real_before[-1].event_id

        after = [
            r.event
            async for r in agents.WatchRun(
                agent_pb2.AgentServiceWatchRunRequest(
                    run_id=real_before[0].run_id, after_event_id=cursor
                ),
                metadata=auth(token),
                timeout=60,
            )
        ]
        real_after, alive_after = split(after)
        assert_cursor_kept(alive_after, after=cursor)
        whole = real_before + real_after
        assert [e.event_id for e in whole] == list(range(1, len(whole) + 1))
        assert whole[-1].HasField("run_finished")
        assert "".join(e.text_delta.text for e in whole) == "After the reconnect."


async def test_a_slow_answer_gets_keep_alives_saying_its_workflow_is_open(
    settings: Settings, worker: None, rag, model, token
) -> None:
    index = await create_index(rag, token)
    await ingest(rag, token, index, [rag_pb2.DocumentInput(document_id="a0", text=ANIMALS[0])])
    async with (
        own_runtime(
            settings, stream_keepalive_seconds=KEEPALIVE, task_queue=settings.task_queue
        ) as own,
        another_server(own) as channel,
    ):
        answers = rag_pb2_grpc.RagServiceStub(channel)
        model.set_script([Delay(2.5, then=Turn(text="Slowly [1]."))])
        events = [
            r.event
            async for r in answers.Answer(
                rag_pb2.AnswerRequest(
                    index_name=index, query="Which animal?", client_answer_id=unique("ans")
                ),
                metadata=auth(token),
                timeout=60,
            )
        ]
    real, alive = split(events)
    assert alive and {e.keep_alive.liveness for _, e in alive} == {OPEN}
    assert_cursor_kept(alive)
    assert [e.event_id for e in real] == list(range(1, len(real) + 1))
    assert real[-1].HasField("finished")
    assert "".join(e.text_delta.text for e in real) == "Slowly [1]."


async def _events_until(
    events: AsyncIterator[Any], done: Any, into: list[Any], limit: float = 30
) -> Any:
    """Read `events` into `into` until `done(event)`; that event."""

    async def read() -> Any:
        async for response in events:
            into.append(response.event)
            if done(response.event):
                return response.event
        raise AssertionError(f"the stream ended first: {into}")

    return await asyncio.wait_for(read(), limit)


def _keep_alive_saying(liveness: int) -> Any:
    return lambda e: e.HasField("keep_alive") and e.keep_alive.liveness == liveness


async def test_a_suspended_workflow_run_gets_keep_alives_until_it_resumes(
    settings: Settings, worker: None, workflows, token
) -> None:
    async with (
        own_runtime(
            settings, stream_keepalive_seconds=KEEPALIVE, task_queue=settings.task_queue
        ) as own,
        another_server(own) as channel,
    ):
        watching = workflow_pb2_grpc.WorkflowServiceStub(channel)
        run = await start_run(workflows, token, "expense-approval", EXPENSE)
        await wait_run(
            workflows, token, run.id, has_status(workflow_pb2.WORKFLOW_RUN_STATUS_SUSPENDED)
        )
        stream = aiter(
            watching.WatchRun(
                workflow_pb2.WorkflowServiceWatchRunRequest(run_id=run.id),
                metadata=auth(token),
                timeout=60,
            )
        )
        seen: list[Any] = []
        await _events_until(stream, _keep_alive_saying(OPEN), seen)
        real, alive = split(seen)
        assert any(e.HasField("step_suspended") for e in real)
        assert_cursor_kept(alive)

        decision = {"approved": True, "approver": "Ada", "comment": "fine"}
        await workflows.ResumeRun(
            workflow_pb2.WorkflowServiceResumeRunRequest(
                run_id=run.id, step_id="approve", resume_data=as_struct(decision)
            ),
            metadata=auth(token),
        )
        seen += [r.event async for r in stream]
        real, alive = split(seen)
        assert_cursor_kept(alive)
        assert real[-1].HasField("run_finished")
        assert [e.event_id for e in real] == list(range(1, len(real) + 1))
        assert await watch_events(workflows, token, run.id) == real


async def test_a_stream_stays_open_and_says_unknown_while_temporal_cannot_be_reached(
    settings: Settings, worker: None, workflows, token
) -> None:
    assert settings.temporal_address is not None
    async with (
        redis_proxy(f"tcp://{settings.temporal_address}") as temporal,  # any TCP will do
        own_runtime(
            settings,
            stream_keepalive_seconds=KEEPALIVE,
            task_queue=settings.task_queue,
            temporal_address=f"127.0.0.1:{temporal.port}",
        ) as own,
        another_server(own) as channel,
    ):
        watching = workflow_pb2_grpc.WorkflowServiceStub(channel)
        run = await start_run(workflows, token, "expense-approval", EXPENSE)
        suspended = has_status(workflow_pb2.WORKFLOW_RUN_STATUS_SUSPENDED)
        await wait_run(workflows, token, run.id, suspended)
        stream = aiter(
            watching.WatchRun(
                workflow_pb2.WorkflowServiceWatchRunRequest(run_id=run.id),
                metadata=auth(token),
                timeout=120,
            )
        )
        seen: list[Any] = []
        await _events_until(stream, _keep_alive_saying(OPEN), seen)

        await temporal.down()  # this server's Temporal is gone; the run waits on
        await _events_until(stream, _keep_alive_saying(UNKNOWN), seen)
        await temporal.up()
        await _events_until(stream, _keep_alive_saying(OPEN), seen, limit=60)

        decision = {"approved": False, "approver": "Ada", "comment": "no"}
        await workflows.ResumeRun(
            workflow_pb2.WorkflowServiceResumeRunRequest(
                run_id=run.id, step_id="approve", resume_data=as_struct(decision)
            ),
            metadata=auth(token),
        )
        seen += [r.event async for r in stream]
    real, alive = split(seen)
    assert_cursor_kept(alive)
    assert CLOSED not in {e.keep_alive.liveness for _, e in alive}
    assert real[-1].HasField("run_finished")
    assert [e.event_id for e in real] == list(range(1, len(real) + 1))


async def test_the_client_leaves_keep_alives_out_unless_asked_and_the_cli_says_still_running(
    settings: Settings, worker: None, model, token
) -> None:
    async with own_runtime(
        settings, stream_keepalive_seconds=KEEPALIVE, task_queue=settings.task_queue
    ) as own:
        app = build_grpc_app(own, "127.0.0.1:0", health_interval=0.3)
        await app.start()
        try:
            address = f"127.0.0.1:{app.port}"
            async with LoomworkClient(address, token) as client:
                model.set_script([Delay(2.0, then=Turn(text="Plain."))])
                plain = [e async for e in client.agents.stream("assistant", "quietly")]
                assert not any(e.HasField("keep_alive") for e in plain)
                assert [e.event_id for e in plain] == list(range(1, len(plain) + 1))

                model.set_script([Delay(2.0, then=Turn(text="With signs of life."))])
                asked = [
                    e async for e in client.agents.stream("assistant", "quietly", keep_alives=True)
                ]
                real, alive = split(asked)
                assert alive and {e.keep_alive.liveness for _, e in alive} == {OPEN}
                assert [e.event_id for e in real] == list(range(1, len(real) + 1))

            model.set_script([Delay(2.0, then=Turn(text="Watched."))])
            cli = typer.Typer()
            register(cli)
            runner = CliRunner(env={"LOOMWORK_GRPC_ADDRESS": address, "LOOMWORK_TOKEN": token})
            result = await asyncio.to_thread(
                runner.invoke, cli, ["agents", "run", "assistant", "slowly"]
            )
            assert result.exit_code == 0, result.output
            assert "still running" in result.stdout and "Watched." in result.stdout
        finally:
            await app.stop(grace=1.0)
