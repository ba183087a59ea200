"""Client tools: declared on the request, run by the caller. The run hands each call to the
caller (`tool_call_requested`), waits durably, and takes SubmitToolResults (a Temporal
Update) from any server replica; the scripted model sees the results on its next call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from clients import LoomworkClient, client_tool
from loomwork.testing import ScriptedModelServer, ScriptedToolCall, Turn
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from tests.support import another_server, auth, field_violations, unique

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def weather_tool(**overrides: Any) -> agent_pb2.ClientTool:
    tool = agent_pb2.ClientTool(
        name="get_weather", description="The weather in a city, from the caller's service."
    )
    tool.parameters_schema.update(WEATHER_SCHEMA)
    for name, value in overrides.items():
        if name == "timeout":
            tool.timeout.FromTimedelta(value)
        else:
            setattr(tool, name, value)
    return tool


def result(tool_call_id: str, value: Any) -> agent_pb2.ClientToolResult:
    return agent_pb2.ClientToolResult(
        tool_call_id=tool_call_id, result=json_format.ParseDict(value, struct_pb2.Value())
    )


async def submit(
    agents: agent_pb2_grpc.AgentServiceStub,
    token: str,
    run_id: str,
    *results: agent_pb2.ClientToolResult,
) -> agent_pb2.AgentRun:
    response = await agents.SubmitToolResults(
        agent_pb2.SubmitToolResultsRequest(run_id=run_id, results=results), metadata=auth(token)
    )
    return response.run


async def until(
    events: AsyncIterator[Any], kind: str
) -> tuple[list[agent_pb2.AgentRunEvent], agent_pb2.AgentRunEvent]:
    """Read a stream's events up to the first of `kind`: those before it, and it."""
    seen = []
    async for response in events:
        if response.event.HasField(kind):
            return seen, response.event
        seen.append(response.event)
    raise AssertionError(
        f"the stream ended without {kind}: {[e.WhichOneof('event') for e in seen]}"
    )


async def to_the_end(events: AsyncIterator[Any]) -> list[agent_pb2.AgentRunEvent]:
    return [response.event async for response in events]


def weather_calls(model: ScriptedModelServer, cities: dict[str, str], answer: str) -> None:
    """The model calls get_weather once per city (by tool call id) in one step, then answers."""
    calls = [ScriptedToolCall("get_weather", {"city": c}, id=i) for i, c in cities.items()]
    model.set_script([Turn(tool_calls=calls), Turn(text=answer)])


def stream_request(run_id: str, *tools: agent_pb2.ClientTool) -> agent_pb2.StreamRequest:
    return agent_pb2.StreamRequest(
        agent_name="assistant",
        prompt="What is the weather in Paris?",
        client_run_id=run_id,
        client_tools=tools or (weather_tool(),),
    )


async def test_a_client_tool_is_answered_from_another_replica_after_reconnecting(
    agents, token, model, runtime
) -> None:
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("get_weather", {"city": "Paris"}, id="w1")]),
            Turn(text="It is sunny in Paris."),
        ]
    )
    run_id = unique("weather")
    stream = agents.Stream(stream_request(run_id), metadata=auth(token))
    before, requested = await until(stream, "tool_call_requested")
    stream.cancel()  # the caller goes away; the run waits on
    call = requested.tool_call_requested
    assert (call.tool_call_id, call.tool_name, call.step) == ("w1", "get_weather", 1)
    assert json_format.MessageToDict(call.arguments) == {"city": "Paris"}
    assert not call.HasField("expire_time")  # no timeout declared
    assert before[0].HasField("run_started")
    assert "get_weather" in model.requests[0].tool_names
    assert {"add", "send_email"} <= set(model.requests[0].tool_names)

    # From another replica, with only the run id and the last event seen.
    async with another_server(runtime) as channel:
        other = agent_pb2_grpc.AgentServiceStub(channel)
        waiting = (
            await other.GetRun(
                agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token)
            )
        ).run
        assert waiting.status == run_pb2.RUN_STATUS_WAITING
        [pending] = waiting.pending_tool_calls
        assert (pending.tool_call_id, pending.tool_name) == ("w1", "get_weather")
        assert not waiting.pending_approvals
        watch = other.WatchRun(
            agent_pb2.AgentServiceWatchRunRequest(run_id=run_id, after_event_id=requested.event_id),
            metadata=auth(token),
        )
        rest = asyncio.ensure_future(to_the_end(watch))
        answered = await submit(other, token, run_id, result("w1", {"sky": "sunny", "c": 21}))
        assert not answered.pending_tool_calls
        assert answered.status != run_pb2.RUN_STATUS_WAITING
        events = await rest
    kinds = [e.WhichOneof("event") for e in events]
    assert "tool_call_requested" not in kinds  # each event once: after the one seen
    tool_result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert tool_result.tool_call_id == "w1" and not tool_result.is_error
    assert json_format.MessageToDict(tool_result.result) == {"sky": "sunny", "c": 21}
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert events[-1].run_finished.output.text == "It is sunny in Paris."
    sent = model.requests[1].messages[-1]
    assert sent["role"] == "tool" and sent["tool_call_id"] == "w1"
    assert json.loads(sent["content"]) == {"sky": "sunny", "c": 21}


async def test_two_calls_of_one_step_answered_one_by_one(agents, token, model) -> None:
    weather_calls(model, {"p": "Paris", "o": "Oslo"}, "Paris is sunny; Oslo could not be read.")
    run_id = unique("two")
    events = agents.Stream(stream_request(run_id), metadata=auth(token))
    _, first = await until(events, "tool_call_requested")
    _, second = await until(events, "tool_call_requested")
    assert {first.tool_call_requested.tool_call_id, second.tool_call_requested.tool_call_id} == {
        "p",
        "o",
    }

    still = await submit(agents, token, run_id, result("p", "sunny"))
    assert still.status == run_pb2.RUN_STATUS_WAITING
    assert [c.tool_call_id for c in still.pending_tool_calls] == ["o"]
    error = agent_pb2.ClientToolResult(tool_call_id="o", error="the weather service is down")
    done = await submit(agents, token, run_id, error)
    assert done.status != run_pb2.RUN_STATUS_WAITING and not done.pending_tool_calls

    rest = await to_the_end(events)
    results = {e.tool_result.tool_call_id: e.tool_result for e in rest if e.HasField("tool_result")}
    assert results["p"].result.string_value == "sunny" and not results["p"].is_error
    assert results["o"].is_error
    assert results["o"].result.string_value == "the weather service is down"
    assert rest[-1].run_finished.output.text == "Paris is sunny; Oslo could not be read."
    sent = {
        m["tool_call_id"]: m["content"] for m in model.requests[1].messages if m["role"] == "tool"
    }
    assert set(sent) == {"p", "o"} and "down" in sent["o"]


async def test_an_unknown_or_answered_call_is_a_failed_precondition(agents, token, model) -> None:
    weather_calls(model, {"r": "Rome", "l": "Lima"}, "Done.")
    run_id = unique("answered")
    events = agents.Stream(stream_request(run_id), metadata=auth(token))
    await until(events, "tool_call_requested")
    await until(events, "tool_call_requested")

    async def refused(*results: agent_pb2.ClientToolResult) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await submit(agents, token, run_id, *results)
        return err.value

    unknown = await refused(result("nope", 1))
    assert unknown.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "nope" in unknown.details()
    # All or none: a known call beside an unknown one is not taken either.
    assert (await refused(result("r", 1), result("nope", 2))).code() == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    twice = await refused(result("r", 1), result("r", 2))
    assert twice.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "results[1].tool_call_id" in field_violations(twice)
    empty = await refused()
    assert "results" in field_violations(empty)
    neither = await refused(agent_pb2.ClientToolResult(tool_call_id="r"))
    assert "results[0]" in field_violations(neither)

    waiting = await submit(agents, token, run_id, result("r", "warm"))
    assert [c.tool_call_id for c in waiting.pending_tool_calls] == ["l"]
    again = await refused(result("r", "warm"))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    await submit(agents, token, run_id, result("l", "mild"))
    rest = await to_the_end(events)
    assert rest[-1].run_finished.status == run_pb2.RUN_STATUS_SUCCEEDED
    after_the_end = await refused(result("l", "mild"))
    assert after_the_end.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(agents, token, unique("no-such-run"), result("x", 1))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_invalid_arguments_go_back_to_the_model_not_to_the_caller(
    agents, token, model
) -> None:
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("get_weather", {"city": 75001}, id="bad")]),
            Turn(tool_calls=[ScriptedToolCall("get_weather", '{"city": "Par', id="broken")]),
            Turn(text="I could not ask for the weather."),
        ]
    )
    events = await to_the_end(agents.Stream(stream_request(unique("bad")), metadata=auth(token)))
    kinds = [e.WhichOneof("event") for e in events]
    assert "tool_call_requested" not in kinds
    results = {
        e.tool_result.tool_call_id: e.tool_result for e in events if e.HasField("tool_result")
    }
    assert results["bad"].is_error
    assert "invalid arguments for get_weather" in results["bad"].result.string_value
    assert "$.city" in results["bad"].result.string_value
    assert results["broken"].is_error
    assert "not a JSON object" in results["broken"].result.string_value
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert "invalid arguments" in model.requests[1].messages[-1]["content"]


async def test_past_its_timeout_a_call_is_an_error_result(agents, token, model) -> None:
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("get_weather", {"city": "Nuuk"}, id="slow")]),
            Turn(text="The weather service did not answer."),
        ]
    )
    run_id = unique("slow")
    tool = weather_tool(timeout=timedelta(seconds=1))
    events = agents.Stream(stream_request(run_id, tool), metadata=auth(token))
    _, requested = await until(events, "tool_call_requested")
    call = requested.tool_call_requested
    waited = call.expire_time.ToDatetime() - call.request_time.ToDatetime()
    assert waited == timedelta(seconds=1)
    rest = await to_the_end(events)
    timed_out = next(e.tool_result for e in rest if e.HasField("tool_result"))
    assert (
        timed_out.is_error and "no result from the caller within" in timed_out.result.string_value
    )
    assert rest[-1].run_finished.output.text == "The weather service did not answer."
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(agents, token, run_id, result("slow", "too late"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_generate_answers_with_the_calls_the_run_waits_on(agents, token, model) -> None:
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("get_weather", {"city": "Lyon"}, id="g")]),
            Turn(text="Rainy in Lyon."),
        ]
    )
    run_id = unique("gen")
    request = agent_pb2.GenerateRequest(
        agent_name="assistant",
        prompt="weather?",
        client_run_id=run_id,
        client_tools=[weather_tool()],
    )
    waiting = (await agents.Generate(request, metadata=auth(token))).run
    assert waiting.status == run_pb2.RUN_STATUS_WAITING
    assert [c.tool_call_id for c in waiting.pending_tool_calls] == ["g"]
    assert await waiting_runs(agents, token, run_id)
    await submit(agents, token, run_id, result("g", {"sky": "rain"}))
    # A repeated call with the same client run id joins the run and answers at its end.
    finished = (await agents.Generate(request, metadata=auth(token))).run
    assert finished.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert finished.output.text == "Rainy in Lyon."


async def waiting_runs(agents: agent_pb2_grpc.AgentServiceStub, token: str, run_id: str) -> bool:
    """Whether ListRuns finds the run WAITING (by the STATUS search attribute), asked again
    for a while: Temporal visibility lags a little."""
    request = agent_pb2.AgentServiceListRunsRequest(statuses=[run_pb2.RUN_STATUS_WAITING])
    for _ in range(100):
        listed = (await agents.ListRuns(request, metadata=auth(token))).runs
        if run_id in {r.id for r in listed}:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_bad_declarations_name_the_field(agents, token, model) -> None:
    def declared(**overrides: Any) -> agent_pb2.ClientTool:
        return weather_tool(**overrides)

    array_schema = struct_pb2.Struct()
    array_schema.update({"type": "array"})
    broken_schema = struct_pb2.Struct()
    broken_schema.update({"type": "object", "properties": {"city": {"type": "town"}}})
    missing = agent_pb2.ClientTool(name="no_schema")
    cases = [
        ("client_tools[0].name", [declared(name="get weather")]),
        ("client_tools[1].name", [declared(), declared()]),
        ("client_tools[0].name", [declared(name="add")]),  # the agent's own tool
        ("client_tools[0].parameters_schema", [declared(parameters_schema=array_schema)]),
        ("client_tools[1].parameters_schema", [declared(), missing]),
        (
            "client_tools[2].parameters_schema",
            [
                declared(),
                declared(name="other"),
                declared(name="third", parameters_schema=broken_schema),
            ],
        ),
        ("client_tools[0].description", [declared(description="x" * 5000)]),
        ("client_tools[0].timeout", [declared(timeout=timedelta(seconds=-1))]),
    ]
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"answer": {"type": "string"}}})
    for field, tools in cases:
        for rpc in ("Generate", "Stream", "StreamObject"):
            request = getattr(agent_pb2, f"{rpc}Request")(
                agent_name="assistant", prompt="hi", client_tools=tools
            )
            if rpc == "StreamObject":
                request.output_schema.CopyFrom(schema)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                call = getattr(agents, rpc)(request, metadata=auth(token))
                if rpc == "Generate":
                    await call
                else:
                    async for _ in call:
                        pass
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, rpc)
            assert field in field_violations(err.value), (field, rpc, err.value.details())
    assert not model.requests  # no run started


async def test_the_last_step_s_results_are_published_when_no_model_step_follows(
    agents, token, model
) -> None:
    model.set_script([Turn(tool_calls=[ScriptedToolCall("get_weather", {"city": "Bern"}, id="b")])])
    run_id = unique("last")
    request = stream_request(run_id)
    request.max_steps = 1
    events = agents.Stream(request, metadata=auth(token))
    await until(events, "tool_call_requested")
    await submit(agents, token, run_id, result("b", "snow"))
    rest = await to_the_end(events)
    kinds = [e.WhichOneof("event") for e in rest]
    assert kinds[-3:] == ["tool_result", "step_finished", "run_finished"], kinds
    assert rest[-3].tool_result.result.string_value == "snow"
    output = rest[-1].run_finished.output
    assert output.finish_reason == agent_pb2.AGENT_FINISH_REASON_MAX_STEPS
    assert output.messages[-1].parts[0].tool_result.result.string_value == "snow"


async def test_the_python_client_declares_and_answers_client_tools(
    grpc_address, token, model
) -> None:
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("get_weather", {"city": "Oslo"}, id="py")]),
            Turn(text="Cold in Oslo."),
        ]
    )
    weather = client_tool(
        "get_weather", WEATHER_SCHEMA, "The weather in a city.", timeout=timedelta(minutes=5)
    )
    async with LoomworkClient(grpc_address, token) as client:
        events = []
        async for event in client.agents.stream("assistant", "Oslo?", client_tools=[weather]):
            events.append(event)
            if event.HasField("tool_call_requested"):
                call = event.tool_call_requested
                assert call.HasField("expire_time")
                await client.agents.submit_tool_results(
                    event.run_id, {call.tool_call_id: {"celsius": -3}}
                )
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert json_format.MessageToDict(result.result) == {"celsius": -3}
    assert events[-1].run_finished.output.text == "Cold in Oslo."


async def test_a_run_waiting_on_the_caller_can_be_canceled(agents, token, model) -> None:
    model.set_script([Turn(tool_calls=[ScriptedToolCall("get_weather", {"city": "Rome"}, id="c")])])
    run_id = unique("cancel")
    events = agents.Stream(stream_request(run_id), metadata=auth(token))
    await until(events, "tool_call_requested")
    await agents.CancelRun(
        agent_pb2.AgentServiceCancelRunRequest(run_id=run_id), metadata=auth(token)
    )
    rest = await to_the_end(events)
    assert rest[-1].run_finished.status == run_pb2.RUN_STATUS_CANCELED
    run = (
        await agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token)
        )
    ).run
    assert run.status == run_pb2.RUN_STATUS_CANCELED and not run.pending_tool_calls
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(agents, token, run_id, result("c", "too late"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
