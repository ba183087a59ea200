"""Agent run events streamed live through Redis: numbered, resumable by WatchRun, rebuilt
after they expired, past unknown kinds, each step's messages in its step_finished, and ended
by CancelRun with its reason."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from google.protobuf import json_format

from loomwork.testing import Delay, ScriptedToolCall, Turn
from protos.loomwork.v1 import agent_pb2, message_pb2, run_pb2
from tests.support import auth, collect_events, unique


async def test_stream_sends_numbered_events_live_and_watch_resumes(
    agents, token, other_token, model
) -> None:
    # Chunks that arrive apart are published apart (ones that arrive together may be merged).
    model.set_script(
        # 0.1 s apart: 20 ms gaps were merged on a loaded machine (3 deltas of 9 chunks).
        [Turn(text="Streaming is fun to watch, token by token.", chunk_size=5, chunk_delay=0.1)]
    )
    events = []
    async for response in agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="Say something"),
        metadata=auth(token),
    ):
        events.append(response.event)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("text_delta") >= 5
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    streamed = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    assert streamed == "Streaming is fun to watch, token by token."
    assert events[-1].run_finished.output.text == streamed

    run_id = events[0].run_id
    watched = [
        r.event
        async for r in agents.WatchRun(
            agent_pb2.AgentServiceWatchRunRequest(run_id=run_id, after_event_id=3),
            metadata=auth(token),
        )
    ]
    assert [e.event_id for e in watched] == [e.event_id for e in events[3:]]
    assert watched == events[3:]

    for bad_token, bad_run in ((other_token, run_id), (token, "run_unknown")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in agents.WatchRun(
                agent_pb2.AgentServiceWatchRunRequest(run_id=bad_run), metadata=auth(bad_token)
            ):
                pass
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_step_finished_carries_the_steps_messages(agents, token, model) -> None:
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("add", {"numbers": [40, 2]}, id="call_1")]),
            Turn(text="The sum is 42."),
        ]
    )
    events = await collect_events(
        agents.Stream(
            agent_pb2.StreamRequest(agent_name="assistant", prompt="40 + 2?"), metadata=auth(token)
        )
    )
    finished = [e for e in events if e.HasField("step_finished")]
    assert [e.step for e in finished] == [1, 2]
    first = [json_format.MessageToDict(m) for m in finished[0].step_finished.messages]
    # The model's call (as it made it), then the tool's result (what the demo `add` returns).
    assert [m["role"] for m in first] == ["ROLE_ASSISTANT", "ROLE_TOOL"]
    [call] = first[0]["parts"]
    assert call["toolCall"] == {
        "toolCallId": "call_1",
        "toolName": "add",
        "arguments": {"numbers": [40, 2]},
    }
    [result] = first[1]["parts"]
    assert result["toolResult"]["toolCallId"] == "call_1"
    assert result["toolResult"]["result"] == {"sum": 42}
    [answer] = finished[1].step_finished.messages
    assert answer.role == message_pb2.ROLE_ASSISTANT
    assert [p.text.text for p in answer.parts] == ["The sum is 42."]
    # Together, the steps' messages are the run's output.
    said = [m for e in finished for m in e.step_finished.messages]
    assert said == list(events[-1].run_finished.output.messages)


async def test_watch_after_events_expired_sends_the_terminal_event(
    agents, token, model, runtime
) -> None:
    from loomwork.agents.run_start import event_log_key

    model.set_script([Turn(text="Short answer.")])
    run = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="hi"), metadata=auth(token)
        )
    ).run
    every = await collect_events(
        agents.WatchRun(agent_pb2.AgentServiceWatchRunRequest(run_id=run.id), metadata=auth(token))
    )
    terminal = every[-1]
    assert terminal.HasField("run_finished")
    # What the retention TTL does a day after the run ended (Generate answers at its terminal
    # event, a moment before its workflow closes: by then it has).
    await runtime.temporal.get_workflow_handle(run.temporal_workflow_id).result()
    key = event_log_key("alpha", run.id)
    await runtime.redis.delete(runtime.events.meta_key(key), runtime.events.stream_key(key))
    rebuilt = await asyncio.wait_for(
        collect_events(
            agents.WatchRun(
                agent_pb2.AgentServiceWatchRunRequest(run_id=run.id), metadata=auth(token)
            )
        ),
        30,
    )
    assert [e.event_id for e in rebuilt] == [terminal.event_id]
    assert rebuilt[0].run_finished == terminal.run_finished
    after = agent_pb2.AgentServiceWatchRunRequest(run_id=run.id, after_event_id=terminal.event_id)
    assert await collect_events(agents.WatchRun(after, metadata=auth(token))) == []
    got = await agents.GetRun(
        agent_pb2.AgentServiceGetRunRequest(run_id=run.id), metadata=auth(token)
    )
    assert got.run.last_event_id == terminal.event_id == run.last_event_id


async def test_watch_skips_an_event_kind_this_server_does_not_know(agents, token, runtime) -> None:
    """During a rolling upgrade a newer server may publish a kind of event an older one cannot
    read: it is left out (with a warning), and the rest of the run still arrives."""
    from loomwork.agents.directory import RunDirectory
    from loomwork.agents.events import RunFinished, RunStarted, encode_event
    from loomwork.agents.run_models import RunOutcome
    from loomwork.agents.run_start import event_log_key

    run_id = f"run_future_{uuid.uuid4().hex[:8]}"
    key = event_log_key("alpha", run_id)
    await RunDirectory(runtime.redis).record("alpha", run_id, f"agent/assistant/alpha/{run_id}")
    started = RunStarted(agent_name="assistant", model="scripted", max_steps=1)
    await runtime.events.append(key, encode_event(started))
    await runtime.events.append(key, b'{"type": "from_the_future", "step": 0}')
    outcome = RunOutcome(
        run_id=run_id, agent_name="assistant", status="succeeded", finish_reason="stop"
    )
    await runtime.events.append(key, encode_event(RunFinished(outcome=outcome)), terminal=True)

    watched = await asyncio.wait_for(
        collect_events(
            agents.WatchRun(
                agent_pb2.AgentServiceWatchRunRequest(run_id=run_id), metadata=auth(token)
            )
        ),
        30,
    )
    assert [(e.event_id, e.WhichOneof("event")) for e in watched] == [
        (1, "run_started"),
        (3, "run_finished"),
    ]


async def test_cancel_run_stops_the_model_call(agents, token, model) -> None:
    model.set_script([Delay(30, then=Turn(text="too late"))])
    run_id = unique("long")
    stream = agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="think", client_run_id=run_id),
        metadata=auth(token),
    )
    collected = asyncio.ensure_future(collect_events(stream))
    for _ in range(200):
        if model.requests:
            break
        await asyncio.sleep(0.05)
    cancelled = await agents.CancelRun(
        agent_pb2.AgentServiceCancelRunRequest(run_id=run_id, reason="user left"),
        metadata=auth(token),
    )
    assert cancelled.run.id == run_id
    events = await asyncio.wait_for(collected, 20)
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_CANCELED
    final = (
        await agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token)
        )
    ).run
    assert final.status == run_pb2.RUN_STATUS_CANCELED
    assert final.output.finish_reason == agent_pb2.AGENT_FINISH_REASON_CANCELED
    # The reason given reaches the run, and its stream: the error's message.
    canceled = run_pb2.RunError(
        code=grpc.StatusCode.CANCELLED.value[0], reason="CANCELED", message="user left"
    )
    assert final.error == canceled
    assert events[-1].run_finished.error == canceled
    for _ in range(100):  # the in-flight HTTP call was aborted, not left to finish
        if model.requests[0].disconnected:
            break
        await asyncio.sleep(0.05)
    assert model.requests[0].disconnected
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agents.CancelRun(
            agent_pb2.AgentServiceCancelRunRequest(run_id=run_id), metadata=auth(token)
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
