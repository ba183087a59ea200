"""Agents that work together: an agent called as another's tool (a sub-agent run, a child
workflow whose events reach the caller's stream, marked with their run path) and handoffs;
cycles refused at creation, the depth limit, approvals and client tool calls of a sub-agent
answered with the top-level run's id."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from loomwork.testing import ChatRequest, ScriptedToolCall, Turn, Usage
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, memory_pb2, run_pb2
from tests.processes import listed_tools
from tests.support import auth, collect_events, field_violations, message_text, unique

Script = Callable[[ChatRequest], Turn]


async def _create(
    agents: agent_pb2_grpc.AgentServiceStub, token: str, name: str, **fields: object
) -> agent_pb2.Agent:
    agent = agent_pb2.Agent(name=name, instructions=f"You are {name}.", **fields)
    response = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(agent=agent), metadata=auth(token)
    )
    return response.agent


def _by_agent(turns: dict[str, Script]) -> Script:
    """A script that answers each request as the agent whose instructions it carries."""

    def answer(request: ChatRequest) -> Turn:
        system = str(request.messages[0].get("content", ""))
        for name, script in turns.items():
            if system == f"You are {name}.":
                return script(request)
        raise AssertionError(f"no script for {system!r}")

    return answer


def _kinds(events: list[agent_pb2.AgentRunEvent], path: str = "") -> list[str]:
    return [str(e.WhichOneof("event")) for e in events if e.run_path == path]


def _sub_path(events: list[agent_pb2.AgentRunEvent]) -> str:
    return next(e.run_path for e in events if e.run_path and e.HasField("run_started"))


async def test_a_sub_agent_call_then_a_handoff(agents, token, model, runtime, memory_stub) -> None:
    researcher, closer, lead = unique("researcher"), unique("closer"), unique("lead")
    await _create(agents, token, researcher, description="Finds facts.")
    await _create(agents, token, closer)
    await _create(agents, token, lead, tool_names=[f"agent:{researcher}"], handoffs=[closer])

    def as_lead(request: ChatRequest) -> Turn:
        if not request.tool_results:
            ask = ScriptedToolCall(researcher, {"prompt": "the answer?"}, id="call_ask")
            return Turn(tool_calls=[ask], usage=Usage(10, 1))
        return Turn(
            tool_calls=[ScriptedToolCall(f"transfer_to_{closer}", {}, id="call_hand")],
            usage=Usage(30, 3),
        )

    model.set_script(
        _by_agent(
            {
                lead: as_lead,
                researcher: lambda r: Turn(text="It is 42.", usage=Usage(20, 2)),
                closer: lambda r: Turn(text="Closing: 42.", usage=Usage(40, 4)),
            }
        )
    )
    run_id, thread = unique("team"), unique("thread")
    events = await collect_events(
        agents.Stream(
            agent_pb2.StreamRequest(
                agent_name=lead, prompt="go", client_run_id=run_id, thread_id=thread
            ),
            metadata=auth(token),
        )
    )
    # One numbered log: dense ids, each once; the sub-run's events marked with its path.
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    assert {e.run_id for e in events} == {run_id}
    path = _sub_path(events)
    parent, child = path.split("/")
    assert parent == run_id and child != run_id
    sub = [e for e in events if e.run_path == path]
    assert _kinds(sub, path)[0] == "run_started" and _kinds(sub, path)[-1] == "run_finished"
    assert sub[0].run_started.agent_name == researcher
    assert "".join(e.text_delta.text for e in sub if e.HasField("text_delta")) == "It is 42."
    # Its events came while the lead waited on the call: between the call and its result.
    kinds = [(e.WhichOneof("event"), e.run_path) for e in events]
    assert kinds.index(("tool_call", "")) < kinds.index(("run_started", path))
    assert kinds.index(("run_finished", path)) < kinds.index(("tool_result", ""))
    own = [e for e in events if not e.run_path]
    result = next(e.tool_result for e in own if e.HasField("tool_result"))
    assert (result.tool_call_id, result.result.string_value) == ("call_ask", "It is 42.")
    # The handoff: an event after the transfer call's result; the closer answers the rest.
    handoff = next(e for e in own if e.HasField("handoff"))
    assert (handoff.handoff.from_agent, handoff.handoff.to_agent) == (lead, closer)
    assert handoff.handoff.tool_call_id == "call_hand" and handoff.step == 2
    assert _kinds(own)[-1] == "run_finished" and events[-1] is own[-1]
    output = own[-1].run_finished.output
    assert output.text == "Closing: 42." and output.steps == 3
    # The sub-run's usage adds to the run's: every model call's.
    assert (output.usage.input_tokens, output.usage.output_tokens) == (100, 10)

    # What the model was told: the lead sees the researcher as a tool taking a prompt and
    # a handoff tool; after the handoff, the closer's instructions over the same thread.
    first, _, second, third = model.requests
    assert set(first.tool_names) == {researcher, f"transfer_to_{closer}"}
    ask_tool = next(t for t in first.tools if t["function"]["name"] == researcher)
    assert ask_tool["function"]["parameters"]["required"] == ["prompt"]
    assert "Finds facts." in ask_tool["function"]["description"]
    assert model.requests[1].last_user_text == "the answer?"
    assert third.messages[0]["content"] == f"You are {closer}."
    assert third.tool_names == []
    assert [m["role"] for m in third.messages[1:]] == [
        "user",
        *["assistant", "tool"] * 2,
    ]
    assert second.tool_results[0]["content"] == "It is 42."
    # One thread: the input, both agents' steps and the closer's answer (not the sub-run's).
    saved = await memory_stub.ListMessages(
        memory_pb2.ListMessagesRequest(thread_id=thread), metadata=auth(token)
    )
    assert [message_text(m) for m in saved.messages] == ["go", "", "", "", "", "Closing: 42."]

    # The sub-run is a Temporal child of the run, with its own run id.
    child_workflow = f"agent/{researcher}/alpha/{child}"
    description = await runtime.temporal.get_workflow_handle(child_workflow).describe()
    assert description.parent_id == f"agent/{lead}/alpha/{run_id}"
    found = (
        await agents.GetRun(agent_pb2.AgentServiceGetRunRequest(run_id=child), metadata=auth(token))
    ).run
    assert found.status == run_pb2.RUN_STATUS_SUCCEEDED and found.output.text == "It is 42."
    with pytest.raises(grpc.aio.AioRpcError) as err:  # its events are in the lead's stream
        await collect_events(
            agents.WatchRun(
                agent_pb2.AgentServiceWatchRunRequest(run_id=child), metadata=auth(token)
            )
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert repr(run_id) in (err.value.details() or "")


async def test_watch_from_the_middle_of_a_sub_run(agents, token, model) -> None:
    """A reconnect in the middle of the sub-agent's stream: the rest, no gap, no repeat."""
    helper, lead = unique("helper"), unique("lead")
    await _create(agents, token, helper)
    await _create(agents, token, lead, tool_names=[f"agent:{helper}"])

    def as_lead(request: ChatRequest) -> Turn:
        if not request.tool_results:
            return Turn(tool_calls=[ScriptedToolCall(helper, {"prompt": "count"}, id="call_c")])
        return Turn(text="Counted.")

    slow = Turn(text="one two three four five six", chunk_size=1, chunk_delay=0.02)
    model.set_script(_by_agent({lead: as_lead, helper: lambda r: slow}))
    run_id = unique("watch")
    stream = agents.Stream(
        agent_pb2.StreamRequest(agent_name=lead, prompt="go", client_run_id=run_id),
        metadata=auth(token),
    )
    seen: list[agent_pb2.AgentRunEvent] = []
    async for response in stream:
        seen.append(response.event)
        if response.event.run_path and response.event.HasField("text_delta"):
            break  # the connection drops while the sub-agent streams
    stream.cancel()
    last_seen = seen[-1].event_id

    rest = await collect_events(
        agents.WatchRun(
            agent_pb2.AgentServiceWatchRunRequest(run_id=run_id, after_event_id=last_seen),
            metadata=auth(token),
        )
    )
    everything = await collect_events(
        agents.WatchRun(agent_pb2.AgentServiceWatchRunRequest(run_id=run_id), metadata=auth(token))
    )
    assert [e.event_id for e in seen + rest] == list(range(1, len(everything) + 1))
    assert [e.event_id for e in everything] == list(range(1, len(everything) + 1))
    assert rest == everything[last_seen:]
    streamed = [e for e in seen + rest if e.run_path and e.HasField("text_delta")]
    assert "".join(e.text_delta.text for e in streamed) == "one two three four five six"
    assert rest[-1].run_finished.output.text == "Counted."


_EMAIL = {"to": "ada@example.com", "subject": "Hi", "body": "Hello Ada"}


async def test_a_sub_agents_approval_is_decided_with_the_top_level_run_id(
    agents, token, model
) -> None:
    mailer, lead = unique("mailer"), unique("lead")
    await _create(agents, token, mailer, tool_names=["send_email"])
    await _create(agents, token, lead, tool_names=[f"agent:{mailer}"])

    def as_lead(request: ChatRequest) -> Turn:
        if not request.tool_results:
            return Turn(tool_calls=[ScriptedToolCall(mailer, {"prompt": "mail Ada"}, id="call_m")])
        return Turn(text=f"Done: {request.tool_results[0]['content']}")

    def as_mailer(request: ChatRequest) -> Turn:
        if not request.tool_results:
            return Turn(tool_calls=[ScriptedToolCall("send_email", _EMAIL, id="call_mail")])
        return Turn(text="Mail sent.")

    model.set_script(_by_agent({lead: as_lead, mailer: as_mailer}))
    run_id = unique("approve")
    waiting = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name=lead, prompt="go", client_run_id=run_id),
            metadata=auth(token),
        )
    ).run
    # The sub-run's call waits on the run the caller started, marked with the sub-run.
    assert waiting.status == run_pb2.RUN_STATUS_WAITING
    [pending] = waiting.pending_approvals
    assert (pending.tool_call_id, pending.tool_name) == ("call_mail", "send_email")
    assert pending.run_path.startswith(f"{run_id}/") and pending.arguments["to"] == _EMAIL["to"]
    listed = await agents.ListRuns(
        agent_pb2.AgentServiceListRunsRequest(agent_name=lead), metadata=auth(token)
    )
    assert [p.tool_call_id for p in listed.runs[0].pending_approvals] == ["call_mail"]

    edited = struct_pb2.Struct()
    edited.update({**_EMAIL, "to": "bob@example.com"})
    decided = await agents.ResumeRun(
        agent_pb2.AgentServiceResumeRunRequest(
            run_id=run_id,
            decisions=[
                agent_pb2.ApprovalDecision(
                    tool_call_id="call_mail",
                    approve=agent_pb2.ToolCallApproval(edited_arguments=edited),
                )
            ],
        ),
        metadata=auth(token),
    )
    assert not decided.run.pending_approvals
    events = await collect_events(
        agents.WatchRun(agent_pb2.AgentServiceWatchRunRequest(run_id=run_id), metadata=auth(token))
    )
    sub = [e for e in events if e.run_path == pending.run_path]
    resolved = next(e.approval_resolved for e in sub if e.HasField("approval_resolved"))
    assert resolved.approved and resolved.arguments["to"] == "bob@example.com"
    sent = next(e.tool_result for e in sub if e.HasField("tool_result"))
    assert json_format.MessageToDict(sent.result)["to"] == "bob@example.com"
    assert events[-1].run_finished.output.text == "Done: Mail sent."
    # Decided once: a second decision finds nothing waiting.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agents.ResumeRun(
            agent_pb2.AgentServiceResumeRunRequest(
                run_id=run_id,
                decisions=[agent_pb2.ApprovalDecision(tool_call_id="call_mail", approve={})],
            ),
            metadata=auth(token),
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_sub_agents_client_tool_call_is_answered_with_the_top_level_run_id(
    agents, token, model
) -> None:
    forecaster, lead = unique("forecaster"), unique("lead")
    await _create(agents, token, forecaster)
    await _create(agents, token, lead, tool_names=[f"agent:{forecaster}"])

    def as_lead(request: ChatRequest) -> Turn:
        if not request.tool_results:
            call = ScriptedToolCall(forecaster, {"prompt": "Paris?"}, id="call_f")
            return Turn(tool_calls=[call])
        return Turn(text=f"Lead: {request.tool_results[0]['content']}")

    def as_forecaster(request: ChatRequest) -> Turn:
        if not request.tool_results:
            call = ScriptedToolCall("get_weather", {"city": "Paris"}, id="call_w")
            return Turn(tool_calls=[call])
        return Turn(text=f"It is {request.tool_results[0]['content']}.")

    model.set_script(_by_agent({lead: as_lead, forecaster: as_forecaster}))
    weather = agent_pb2.ClientTool(name="get_weather", description="The weather.")
    weather.parameters_schema.update(
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    )
    run_id = unique("client")
    stream = agents.Stream(
        agent_pb2.StreamRequest(
            agent_name=lead, prompt="go", client_run_id=run_id, client_tools=[weather]
        ),
        metadata=auth(token),
    )
    events = []
    async for response in stream:
        event = response.event
        events.append(event)
        if event.HasField("tool_call_requested"):
            assert event.run_path.startswith(f"{run_id}/") and event.run_id == run_id
            await agents.SubmitToolResults(
                agent_pb2.SubmitToolResultsRequest(
                    run_id=event.run_id,
                    results=[
                        agent_pb2.ClientToolResult(
                            tool_call_id=event.tool_call_requested.tool_call_id,
                            result=struct_pb2.Value(string_value="sunny"),
                        )
                    ],
                ),
                metadata=auth(token),
            )
    assert events[-1].run_finished.output.text == "Lead: It is sunny."


async def test_cycles_of_agents_calling_each_other_are_refused(agents, token, grpc_address) -> None:
    a, b, c = unique("a"), unique("b"), unique("c")
    await _create(agents, token, a)
    await _create(agents, token, b, tool_names=[f"agent:{a}"])

    async def refused(call: Callable[[], object]) -> dict[str, str]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call()  # type: ignore[misc]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return field_violations(err.value)

    # a -> b -> a
    update = agent_pb2.UpdateAgentRequest(
        agent=agent_pb2.Agent(name=a, tool_names=[f"agent:{b}"]),
        update_mask={"paths": ["tool_names"]},
    )
    violations = await refused(lambda: agents.UpdateAgent(update, metadata=auth(token)))
    assert f"{a} → {b} → {a}" in violations["agent.tool_names[0]"]
    # An agent calling itself; an agent that does not exist.
    violations = await refused(lambda: _create(agents, token, c, tool_names=[f"agent:{c}"]))
    assert "cycle" in violations["agent.tool_names[0]"]
    violations = await refused(lambda: _create(agents, token, c, tool_names=["agent:nobody"]))
    assert "nobody" in violations["agent.tool_names[0]"]
    # Through a handoff: b hands off to c, which calls b as a tool.
    await _create(agents, token, c, tool_names=[f"agent:{b}"])
    update = agent_pb2.UpdateAgentRequest(
        agent=agent_pb2.Agent(name=b, handoffs=[c]), update_mask={"paths": ["handoffs"]}
    )
    violations = await refused(lambda: agents.UpdateAgent(update, metadata=auth(token)))
    assert f"{b} → {c} → {b}" in violations["agent.handoffs[0]"]
    # Handoffs alone may go back and forth.
    d, e = unique("d"), unique("e")
    await _create(agents, token, d)
    await _create(agents, token, e, handoffs=[d])
    update = agent_pb2.UpdateAgentRequest(
        agent=agent_pb2.Agent(name=d, handoffs=[e]), update_mask={"paths": ["handoffs"]}
    )
    updated = (await agents.UpdateAgent(update, metadata=auth(token))).agent
    assert list(updated.handoffs) == [e]

    # ListTools lists the agents as tools taking a prompt.
    tools = await asyncio.to_thread(_listed_tools, grpc_address, token)
    assert tools[f"agent:{a}"].parameters_schema["required"] == ["prompt"]


def _listed_tools(address: str, token: str) -> dict[str, agent_pb2.Tool]:
    with grpc.insecure_channel(address) as channel:
        return listed_tools(channel, token)


async def test_sub_agents_nest_at_most_three_deep(agents, token, model) -> None:
    names = [unique(f"level{i}") for i in range(5)]
    await _create(agents, token, names[4])
    for i in (3, 2, 1, 0):
        await _create(agents, token, names[i], tool_names=[f"agent:{names[i + 1]}"])

    def level(i: int) -> Script:
        def answer(request: ChatRequest) -> Turn:
            if not request.tool_results:
                call = ScriptedToolCall(names[i + 1], {"prompt": "deeper"}, id=f"call_{i}")
                return Turn(tool_calls=[call])
            return Turn(text=f"{i}<{request.tool_results[0]['content']}>")

        return answer

    model.set_script(_by_agent({names[i]: level(i) for i in range(4)}))
    events = await collect_events(
        agents.Stream(
            agent_pb2.StreamRequest(agent_name=names[0], prompt="go"), metadata=auth(token)
        )
    )
    started = [e for e in events if e.HasField("run_started")]
    assert [e.run_path.count("/") for e in started] == [0, 1, 2, 3]
    assert [e.run_started.agent_name for e in started] == names[:4]
    deepest = next(e for e in events if e.run_path.count("/") == 3 and e.HasField("tool_result"))
    assert deepest.tool_result.is_error
    assert "at most 3 deep" in deepest.tool_result.result.string_value
    text = events[-1].run_finished.output.text
    assert text.startswith("0<1<2<3<") and "at most 3 deep" in text


async def test_agents_handing_off_back_and_forth_stop_at_the_step_limit(agents, token, model):
    ping, pong = unique("ping"), unique("pong")
    await _create(agents, token, ping)
    await _create(agents, token, pong, handoffs=[ping])
    update = agent_pb2.UpdateAgentRequest(
        agent=agent_pb2.Agent(name=ping, handoffs=[pong]), update_mask={"paths": ["handoffs"]}
    )
    await agents.UpdateAgent(update, metadata=auth(token))

    def hand_to(other: str) -> Script:
        return lambda request: Turn(tool_calls=[ScriptedToolCall(f"transfer_to_{other}", {})])

    model.set_script(_by_agent({ping: hand_to(pong), pong: hand_to(ping)}))
    events = await collect_events(
        agents.Stream(
            agent_pb2.StreamRequest(agent_name=ping, prompt="go", max_steps=4),
            metadata=auth(token),
        )
    )
    handoffs = [(e.handoff.from_agent, e.handoff.to_agent) for e in events if e.HasField("handoff")]
    assert handoffs == [(ping, pong), (pong, ping)] * 2
    finished = events[-1].run_finished
    assert finished.output.finish_reason == agent_pb2.AGENT_FINISH_REASON_MAX_STEPS
    assert finished.output.steps == 4 and len(model.requests) == 4


async def test_cancel_run_cancels_the_sub_run_too(agents, token, model, runtime) -> None:
    slow, lead = unique("slow"), unique("lead")
    await _create(agents, token, slow)
    await _create(agents, token, lead, tool_names=[f"agent:{slow}"])

    def as_lead(request: ChatRequest) -> Turn:
        return Turn(tool_calls=[ScriptedToolCall(slow, {"prompt": "take your time"})])

    endless = Turn(text="and so on " * 100, chunk_size=2, chunk_delay=0.1)
    model.set_script(_by_agent({lead: as_lead, slow: lambda r: endless}))
    run_id = unique("cancel")
    stream = agents.Stream(
        agent_pb2.StreamRequest(agent_name=lead, prompt="go", client_run_id=run_id),
        metadata=auth(token),
    )
    events = []
    async for response in stream:
        events.append(response.event)
        if response.event.run_path and response.event.HasField("text_delta"):
            await agents.CancelRun(
                agent_pb2.AgentServiceCancelRunRequest(run_id=run_id), metadata=auth(token)
            )
            break
    stream.cancel()
    events = await collect_events(
        agents.WatchRun(agent_pb2.AgentServiceWatchRunRequest(run_id=run_id), metadata=auth(token))
    )
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_CANCELED
    path = _sub_path(events)
    ended = next(
        e.run_finished for e in events if e.run_path == path and e.HasField("run_finished")
    )
    assert ended.status == run_pb2.RUN_STATUS_CANCELED
    assert len(model.requests) == 2  # no step after the cancellation
