"""WatchRun on workflow runs: resuming after the last event seen, after the events expired,
and past an event kind this server does not know."""

from __future__ import annotations

import asyncio

from protos.loomwork.v1 import workflow_pb2
from tests.support import unique
from tests.workflow_support import ORDER, get_run, start_run, watch_events

S = workflow_pb2


async def test_watch_run_resumes_after_the_last_event_seen(workflows, token) -> None:
    run = await start_run(workflows, token, "order-pipeline", ORDER)
    every = await watch_events(workflows, token, run.id)
    for cut in (1, 3, len(every) - 1):
        rest = await watch_events(workflows, token, run.id, after=cut)
        assert [e.event_id for e in rest] == [e.event_id for e in every[cut:]]
        assert rest == every[cut:]
    assert await watch_events(workflows, token, run.id, after=len(every)) == []


async def test_watch_after_events_expired_sends_the_terminal_event(
    workflows, token, runtime
) -> None:
    from loomwork.flows.state import event_log_key

    run = await start_run(workflows, token, "ticket-triage", {"subject": "Wrong invoice"})
    every = await watch_events(workflows, token, run.id)
    terminal = every[-1]
    assert terminal.HasField("run_finished")
    # What the retention TTL does a day after the run ended (the run notes its terminal id
    # once the event is out, a moment after the stream saw it).
    await runtime.temporal.get_workflow_handle(run.temporal_workflow_id).result()
    key = event_log_key("alpha", run.id)
    await runtime.redis.delete(runtime.events.meta_key(key), runtime.events.stream_key(key))

    rebuilt = await watch_events(workflows, token, run.id)
    assert [e.event_id for e in rebuilt] == [terminal.event_id]
    assert rebuilt[0].run_finished == terminal.run_finished
    assert await watch_events(workflows, token, run.id, after=terminal.event_id) == []
    assert (await get_run(workflows, token, run.id)).last_event_id == terminal.event_id


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
    watched = await asyncio.wait_for(watch_events(workflows, token, run_id), 30)
    assert [(e.event_id, e.WhichOneof("event")) for e in watched] == [
        (1, "run_started"),
        (3, "run_finished"),
    ]
