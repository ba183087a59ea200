"""ChatModel over the real `openai` client against the scripted OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import openai
import pytest

from loomwork.errors import FailedPrecondition, ResourceExhausted, Unavailable
from loomwork.llm.chat import (
    ChatMessage,
    ChatModel,
    TextDelta,
    ToolCallDelta,
    ToolCallDone,
    ToolSpec,
    json_schema_format,
)
from loomwork.llm.errors import ModelError
from loomwork.llm.shared import SharedChatModels
from loomwork.messages import Message, Role, TextPart, ToolCallPart, ToolResultPart
from loomwork.testing import (
    ChatRequest,
    Delay,
    Failure,
    ScriptedModelServer,
    ScriptedToolCall,
    Turn,
    Usage,
    pseudo_embedding,
)

WEATHER = ToolSpec(
    name="get_weather",
    description="Weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)
TIME = ToolSpec(
    name="get_time",
    description="Local time in a timezone",
    parameters={"type": "object", "properties": {"tz": {"type": "string"}}},
)


async def eventually(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll `predicate` until true or `seconds` passed."""
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[ScriptedModelServer]:
    async with ScriptedModelServer() as srv:
        yield srv


@pytest.fixture
async def model(server: ScriptedModelServer) -> AsyncIterator[ChatModel]:
    server.set_script(None)
    server.requests.clear()
    async with ChatModel("scripted", base_url=server.base_url, api_key="test-key") as m:
        yield m


async def test_echo_by_default(model: ChatModel, server: ScriptedModelServer) -> None:
    result = await model.complete([ChatMessage.user("hello there")])
    assert result.text == "hello there"
    assert result.finish_reason == "stop"
    assert result.usage.total_tokens > 0
    assert server.requests[0].headers["authorization"] == "Bearer test-key"


async def test_text_stream_arrives_in_several_deltas(
    model: ChatModel, server: ScriptedModelServer
) -> None:
    text = "The quick brown fox jumps over the lazy dog, twice over."
    server.set_script([Turn(text=text, chunk_size=5, usage=Usage(11, 13))])
    events: list[object] = []

    async def on_event(event: object) -> None:
        events.append(event)

    result = await model.stream([ChatMessage.user("tell me")], on_event=on_event)
    deltas = [e.delta for e in events if isinstance(e, TextDelta)]
    assert len(deltas) >= 10
    assert "".join(deltas) == text == result.text
    assert result.finish_reason == "stop"
    assert result.tool_calls == []
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (11, 13)
    assert result.usage.total_tokens == 24
    assert server.requests[0].stream and server.requests[0].include_usage


@pytest.mark.parametrize("interleave", [False, True])
async def test_parallel_tool_calls_stream_whole(
    model: ChatModel, server: ScriptedModelServer, interleave: bool
) -> None:
    server.set_script(
        [
            Turn(
                text="Let me look.",
                tool_calls=[
                    ScriptedToolCall("get_weather", {"city": "Paris, France"}, id="call_a"),
                    ScriptedToolCall("get_time", {"tz": "Europe/Paris"}, id="call_b"),
                ],
                chunk_size=3,
                interleave_tool_calls=interleave,
            )
        ]
    )
    events: list[object] = []

    async def on_event(event: object) -> None:
        events.append(event)

    result = await model.stream(
        [ChatMessage.user("weather and time in Paris?")], tools=[WEATHER, TIME], on_event=on_event
    )
    assert result.text == "Let me look."
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls == [
        ToolCallPart(
            tool_call_id="call_a", tool_name="get_weather", arguments={"city": "Paris, France"}
        ),
        ToolCallPart(tool_call_id="call_b", tool_name="get_time", arguments={"tz": "Europe/Paris"}),
    ]
    assert result.argument_errors == {}
    pieces = [e for e in events if isinstance(e, ToolCallDelta)]
    assert len([p for p in pieces if p.index == 0 and p.arguments_delta]) > 3
    assert "".join(p.arguments_delta for p in pieces if p.index == 1) == '{"tz":"Europe/Paris"}'
    done = [e for e in events if isinstance(e, ToolCallDone)]
    assert [d.call for d in done] == result.tool_calls
    # Tools were sent in OpenAI's shape.
    sent = server.requests[0]
    assert sent.tool_names == ["get_weather", "get_time"]
    assert sent.tools[0] == {"type": "function", "function": WEATHER.to_openai()["function"]}


async def test_tool_calls_non_streaming_and_bad_arguments(
    model: ChatModel, server: ScriptedModelServer
) -> None:
    server.set_script(
        [
            Turn(
                tool_calls=[
                    ScriptedToolCall("get_weather", {"city": "Oslo"}, id="c1"),
                    ScriptedToolCall("get_time", '{"tz": ', id="c2"),
                ]
            )
        ]
    )
    result = await model.complete([ChatMessage.user("x")], tools=[WEATHER, TIME])
    assert result.text == ""
    assert result.tool_calls[0].arguments == {"city": "Oslo"}
    assert result.tool_calls[1].arguments == {}
    assert "not valid JSON" in result.argument_errors["c2"]


async def test_tool_result_round_trip_is_sent_as_openai_messages(
    model: ChatModel, server: ScriptedModelServer
) -> None:
    def script(request: ChatRequest) -> Turn:
        if not request.tool_results:
            return Turn(tool_calls=[ScriptedToolCall("get_weather", {"city": "Rome"}, id="w1")])
        weather = json.loads(request.tool_results[-1]["content"])
        return Turn(text=f"It is {weather['sky']} in Rome.")

    server.set_script(script)
    now = datetime.now(UTC)
    history: list[ChatMessage | Message] = [
        ChatMessage.system("You are terse."),
        Message(
            id="m1",
            thread_id="t1",
            role=Role.USER,
            parts=[TextPart(text="Weather in Rome?")],
            create_time=now,
        ),
    ]
    first = await model.stream(history, tools=[WEATHER])
    assert [c.tool_name for c in first.tool_calls] == ["get_weather"]
    history.append(first.assistant_message())
    history.append(
        ChatMessage.tool(
            ToolResultPart(tool_call_id="w1", tool_name="get_weather", result={"sky": "sunny"})
        )
    )
    second = await model.stream(history, tools=[WEATHER])
    assert second.text == "It is sunny in Rome."

    sent = server.requests[1].messages
    assert sent[0] == {"role": "system", "content": "You are terse."}
    assert sent[1] == {"role": "user", "content": "Weather in Rome?"}
    assert sent[2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "w1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            }
        ],
    }
    assert sent[3] == {"role": "tool", "tool_call_id": "w1", "content": '{"sky": "sunny"}'}


async def test_tool_error_result_is_marked(model: ChatModel, server: ScriptedModelServer) -> None:
    server.set_script([Turn(text="ok")])
    await model.complete(
        [
            ChatMessage.user("go"),
            ChatMessage.assistant(
                tool_calls=[ToolCallPart(tool_call_id="x", tool_name="get_time", arguments={})]
            ),
            ChatMessage.tool(
                ToolResultPart(tool_call_id="x", result="unknown timezone", is_error=True)
            ),
        ]
    )
    assert server.requests[0].messages[-1]["content"] == "Error: unknown timezone"


@pytest.mark.parametrize("streaming", [True, False])
async def test_429_with_retry_after_is_retryable(
    model: ChatModel, server: ScriptedModelServer, streaming: bool
) -> None:
    server.set_script([Failure(429, "Rate limit reached for requests", retry_after=2)])
    call = model.stream if streaming else model.complete
    with pytest.raises(ModelError) as info:
        await call([ChatMessage.user("hi")])
    error = info.value
    assert error.retryable and error.status == 429 and error.retry_after == 2.0
    assert isinstance(error, ResourceExhausted)
    assert "Rate limit reached" in error.message
    assert len(server.requests) == 1  # the client's own retries are off


@pytest.mark.parametrize("status", [500, 503])
async def test_5xx_is_retryable(model: ChatModel, server: ScriptedModelServer, status: int) -> None:
    server.set_script([Failure(status, "The server had an error")])
    with pytest.raises(ModelError) as info:
        await model.stream([ChatMessage.user("hi")])
    assert info.value.retryable and info.value.status == status
    assert info.value.retry_after is None
    assert isinstance(info.value, Unavailable)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_4xx_is_not_retryable_and_keeps_the_message(
    model: ChatModel, server: ScriptedModelServer, status: int
) -> None:
    server.set_script([Failure(status, f"Scripted refusal {status}: model says no")])
    with pytest.raises(ModelError) as info:
        await model.stream([ChatMessage.user("hi")])
    error = info.value
    assert not error.retryable and error.status == status
    assert f"Scripted refusal {status}: model says no" in error.message
    assert isinstance(error, FailedPrecondition)


async def test_connection_refused_and_broken_stream_are_retryable(
    server: ScriptedModelServer,
) -> None:
    async with ChatModel("m", base_url="http://127.0.0.1:9/v1", api_key="k") as dead:
        with pytest.raises(ModelError) as info:
            await dead.stream([ChatMessage.user("hi")])
        assert info.value.retryable and info.value.status is None

    server.set_script([Turn(text="a long answer that breaks", chunk_size=2, abort_after_chunks=3)])
    async with ChatModel("m", base_url=server.base_url, api_key="k") as model:
        with pytest.raises(ModelError) as info:
            await model.stream([ChatMessage.user("hi")])
        assert info.value.retryable


async def test_client_timeout_is_retryable(server: ScriptedModelServer) -> None:
    server.set_script([Delay(5, Turn(text="too late"))])
    async with ChatModel("m", base_url=server.base_url, api_key="k", timeout=0.3) as model:
        with pytest.raises(ModelError) as info:
            await model.stream([ChatMessage.user("hi")])
    assert info.value.retryable and "timed out" in info.value.message
    # The client gave up: the server's 5 s answer was never delivered.
    assert not server.requests[-1].completed


@pytest.mark.parametrize("where", ["before_headers", "mid_stream"])
async def test_cancellation_aborts_the_request_promptly(
    model: ChatModel, server: ScriptedModelServer, where: str
) -> None:
    if where == "before_headers":
        server.set_script([Delay(30, Turn(text="never"))])
    else:
        server.set_script([Turn(text="x" * 200, chunk_size=1, chunk_delay=0.2)])
    events: list[object] = []

    async def on_event(event: object) -> None:
        events.append(event)

    task = asyncio.create_task(model.stream([ChatMessage.user("hi")], on_event=on_event))
    assert await eventually(lambda: bool(server.requests and (where == "before_headers" or events)))
    assert server.requests
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    request = server.requests[0]
    assert await eventually(lambda: request.disconnected, seconds=3)
    assert request.disconnected and not request.completed


async def test_json_response_format(model: ChatModel, server: ScriptedModelServer) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
        "required": ["city", "temp_c"],
    }

    def script(request: ChatRequest) -> Turn:
        assert request.json_schema == schema
        return Turn(text=json.dumps({"city": "Lima", "temp_c": 19.5}), chunk_size=4)

    server.set_script(script)
    fmt = json_schema_format(schema, name="weather report")
    result = await model.stream([ChatMessage.user("json please")], response_format=fmt)
    assert result.json_value() == {"city": "Lima", "temp_c": 19.5}
    sent = server.requests[0].response_format
    assert sent is not None and sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "weather_report"


async def test_embeddings_are_deterministic_and_normalised(server: ScriptedModelServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    try:
        texts = ["the cat sat on the mat", "a cat on a mat", "quarterly tax filing"]
        first = await client.embeddings.create(model="scripted-embedding", input=texts)
        again = await client.embeddings.create(
            model="scripted-embedding", input=texts, encoding_format="float"
        )
        small = await client.embeddings.create(
            model="scripted-embedding", input="hello", dimensions=16
        )
    finally:
        await client.close()
    vectors = [d.embedding for d in first.data]
    assert [len(v) for v in vectors] == [server.embedding_dimension] * 3
    for vector, other in zip(vectors, (d.embedding for d in again.data), strict=True):
        assert math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-4)
        assert vector == pytest.approx(other, abs=1e-6)
        assert vector == pytest.approx(pseudo_embedding(texts[vectors.index(vector)]), abs=1e-6)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert len(small.data[0].embedding) == 16


async def test_models_endpoint(server: ScriptedModelServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    try:
        models = [m.id async for m in client.models.list()]
    finally:
        await client.close()
    assert "scripted" in models


async def test_exhausted_queue_is_a_clear_error(
    model: ChatModel, server: ScriptedModelServer
) -> None:
    server.set_script(["only one"])
    assert (await model.complete([ChatMessage.user("a")])).text == "only one"
    with pytest.raises(ModelError, match="script exhausted"):
        await model.complete([ChatMessage.user("b")])


def test_usable_from_sync_code_in_a_thread() -> None:
    with ScriptedModelServer([Turn(text="from a thread", chunk_size=3)]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        try:
            stream = client.chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        finally:
            client.close()
    assert text == "from a thread"
    assert server.requests[0].last_user_text == "hi"


async def test_shared_models_bound_the_calls_in_flight(server: ScriptedModelServer) -> None:
    in_flight, most = 0, 0

    async def slow_answer(request: ChatRequest) -> Turn:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.1)
        in_flight -= 1
        return Turn(text=f"answer to {request.last_user_text}")

    server.set_script(slow_answer)
    models = SharedChatModels(base_url=server.base_url, api_key="test-key", max_calls=2)
    try:
        results = await asyncio.gather(
            *(
                models("scripted").stream([ChatMessage.user(f"q{i}")])
                if i % 2
                else models("scripted").complete([ChatMessage.user(f"q{i}")])
                for i in range(6)
            )
        )
    finally:
        await models.aclose()
    assert [r.text for r in results] == [f"answer to q{i}" for i in range(6)]
    assert most == 2
