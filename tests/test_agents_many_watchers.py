"""Many streams of one run at once: every watcher gets every event and no error, however
many hold a blocking read of Redis while the run goes on (more than the pool of short
commands holds)."""

from __future__ import annotations

import asyncio
import threading

from loomwork.testing import ChatRequest, ScriptItem, Turn
from protos.loomwork.v1 import agent_pb2
from tests.support import auth

# More than the 100 connections of a Redis client's default pool.
WATCHERS = 120
ANSWER = "Every watcher reads this answer, chunk by chunk, to the end."


async def test_many_watchers_of_one_run_all_get_every_event(agents, token, model) -> None:
    watching = threading.Event()  # set once every watcher has seen run_started

    async def answer_once_all_watch(request: ChatRequest) -> ScriptItem:
        await asyncio.to_thread(watching.wait, 120)  # the model server's own loop
        return Turn(text=ANSWER, chunk_size=6, chunk_delay=0.05)

    model.set_script(answer_once_all_watch)
    stream = agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="Tell everyone"),
        metadata=auth(token),
    )
    first = await anext(aiter(stream))
    assert first.event.HasField("run_started")
    run_id = first.event.run_id

    seen_start = 0

    async def watch() -> list[agent_pb2.AgentRunEvent]:
        nonlocal seen_start
        events = []
        async for response in agents.WatchRun(
            agent_pb2.AgentServiceWatchRunRequest(run_id=run_id), metadata=auth(token)
        ):
            events.append(response.event)
            if len(events) == 1:
                seen_start += 1
                if seen_start == WATCHERS:
                    watching.set()
        return events

    watched = await asyncio.wait_for(
        asyncio.gather(*(watch() for _ in range(WATCHERS)), return_exceptions=True), 180
    )
    streamed = [first.event] + [r.event async for r in stream]

    errors = [w for w in watched if isinstance(w, BaseException)]
    assert errors == []
    kinds = [e.WhichOneof("event") for e in streamed]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    text = "".join(e.text_delta.text for e in streamed if e.HasField("text_delta"))
    assert text == ANSWER
    for events in watched:
        assert events == streamed
