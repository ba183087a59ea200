"""The typed async client (clients/) against the real server, plus retry and deadline
behaviour against tiny grpc.aio servers started here."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from clients import (
    LoomworkClient,
    StreamedText,
    error_details,
    parse_role,
    role_name,
    text_message,
    tool_call_message,
    tool_result_message,
)
from protos.loomwork.v1 import agent_pb2, memory_pb2, memory_pb2_grpc, message_pb2, run_pb2


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def client(grpc_address: str, token: str) -> AsyncIterator[LoomworkClient]:
    async with LoomworkClient(grpc_address, token) as c:
        yield c


# -- builders (no server)


def test_builders_make_valid_messages() -> None:
    msg = text_message("user", "hi", id="m-1", metadata={"lang": "en"})
    assert msg.role == message_pb2.ROLE_USER
    assert msg.id == "m-1"
    assert msg.parts[0].text.text == "hi"
    assert dict(msg.metadata) == {"lang": "en"}

    call = tool_call_message("c1", "get_weather", {"city": "Paris"}, text="checking")
    assert call.role == message_pb2.ROLE_ASSISTANT
    assert [p.WhichOneof("kind") for p in call.parts] == ["text", "tool_call"]
    assert call.parts[1].tool_call.arguments["city"] == "Paris"

    result = tool_result_message("c1", {"temp": 18, "ok": True}, tool_name="get_weather")
    assert result.role == message_pb2.ROLE_TOOL
    part = result.parts[0].tool_result
    assert part.tool_call_id == "c1"
    assert part.result.struct_value["temp"] == 18
    assert tool_result_message("c1", [1, "a"]).parts[0].tool_result.result.list_value.values[1] == (
        tool_result_message("c1", "a").parts[0].tool_result.result
    )


def test_roles_parse_both_ways() -> None:
    for name in ("system", "user", "assistant", "tool"):
        assert role_name(parse_role(name)) == name
        assert parse_role(name.upper()) == parse_role(f"ROLE_{name.upper()}")
    assert parse_role(message_pb2.ROLE_TOOL) == message_pb2.ROLE_TOOL
    assert role_name(message_pb2.ROLE_UNSPECIFIED) == "unspecified"
    with pytest.raises(ValueError, match="unknown role"):
        parse_role("robot")
    with pytest.raises(ValueError, match="unknown role"):
        text_message("", "hi")


# -- against the real server


async def test_crud_round_trip(client: LoomworkClient) -> None:
    resource = _unique("res")
    thread = await client.memory.create_thread(
        resource_id=resource, title="first", metadata={"team": "a", "n": 1}
    )
    assert thread.id.startswith("thr_")
    assert thread.resource_id == resource
    assert thread.metadata["team"] == "a"

    got = await client.memory.get_thread(thread.id)
    assert (got.id, got.title, got.message_count) == (thread.id, "first", 0)

    page = await client.memory.list_threads(resource_id=resource)
    assert [t.id for t in page.threads] == [thread.id]
    assert page.next_page_token == ""

    renamed = await client.memory.update_thread(thread.id, title="second")
    assert renamed.title == "second"
    assert renamed.metadata["team"] == "a"  # untouched: not in the field mask
    remeta = await client.memory.update_thread(thread.id, metadata={"team": "b"})
    assert remeta.title == "second"
    assert dict(remeta.metadata) == {"team": "b"}

    stored = await client.memory.append_messages(
        thread.id,
        [
            text_message("system", "be brief"),
            text_message("user", "weather?"),
            tool_call_message("c1", "get_weather", {"city": "Paris"}),
            tool_result_message("c1", {"temp": 18}, tool_name="get_weather"),
            text_message("assistant", "18 degrees"),
        ],
    )
    assert [role_name(m.role) for m in stored] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert all(m.id.startswith("msg_") and m.thread_id == thread.id for m in stored)
    assert stored[2].parts[0].tool_call.arguments["city"] == "Paris"
    assert stored[3].parts[0].tool_result.result.struct_value["temp"] == 18

    newest = await client.memory.list_messages(thread.id, last_n=2)
    assert [m.id for m in newest.messages] == [m.id for m in stored[-2:]]
    assert (await client.memory.get_thread(thread.id)).message_count == 5

    await client.memory.delete_thread(thread.id)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.memory.get_thread(thread.id)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_details(info.value) == []


async def test_client_chosen_ids_and_idempotent_append(client: LoomworkClient) -> None:
    thread_id = _unique("thread")
    thread = await client.memory.create_thread(thread_id=thread_id)
    assert thread.id == thread_id
    message_id = _unique("msg")
    first = await client.memory.append_messages(
        thread_id, [text_message("user", "once", id=message_id)]
    )
    again = await client.memory.append_messages(
        thread_id, [text_message("user", "once", id=message_id)]
    )
    assert again[0].id == first[0].id == message_id
    assert again[0].create_time == first[0].create_time
    assert (await client.memory.get_thread(thread_id)).message_count == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.memory.create_thread(thread_id=thread_id)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    await client.memory.delete_thread(thread_id)


async def test_iter_threads_pages_through_all(client: LoomworkClient) -> None:
    resource = _unique("res")
    created = [
        (await client.memory.create_thread(resource_id=resource, title=f"t{i}")).id
        for i in range(5)
    ]
    first = await client.memory.list_threads(resource_id=resource, page_size=2)
    assert len(first.threads) == 2 and first.next_page_token
    seen = [t.id async for t in client.memory.iter_threads(resource_id=resource, page_size=2)]
    assert seen == list(reversed(created))  # most recently created first
    for thread_id in created:
        await client.memory.delete_thread(thread_id)


async def test_iter_messages_over_several_pages(client: LoomworkClient) -> None:
    thread = await client.memory.create_thread()
    texts = [f"message {i}" for i in range(7)]
    await client.memory.append_messages(thread.id, [text_message("user", t) for t in texts])

    first = await client.memory.list_messages(thread.id, page_size=3)
    assert len(first.messages) == 3 and first.next_page_token

    got = [m.parts[0].text.text async for m in client.memory.iter_messages(thread.id, page_size=3)]
    assert got == texts  # oldest first, nothing lost or repeated across 3 pages
    default = [m.parts[0].text.text async for m in client.memory.iter_messages(thread.id)]
    assert default == texts
    await client.memory.delete_thread(thread.id)


async def test_error_details_names_the_bad_role(client: LoomworkClient) -> None:
    thread = await client.memory.create_thread()
    no_role = message_pb2.Message(parts=[message_pb2.Part(text=message_pb2.TextPart(text="x"))])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.memory.append_messages(thread.id, [text_message("user", "fine"), no_role])
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = dict(error_details(err))
    assert "messages[1].role" in fields, fields
    assert fields["messages[1].role"]
    # all or none: the valid first message was not stored either
    assert (await client.memory.get_thread(thread.id)).message_count == 0

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.memory.append_messages(thread.id, [no_role])
    assert "messages[0].role" in dict(error_details(info.value))
    await client.memory.delete_thread(thread.id)


async def test_token_decides_the_tenant(grpc_address: str, token: str, other_token: str) -> None:
    async with (
        LoomworkClient(grpc_address, token) as alpha,
        LoomworkClient(grpc_address, other_token) as beta,
        LoomworkClient(grpc_address) as anonymous,
        LoomworkClient(grpc_address, "not-a-token") as wrong,
    ):
        thread = await alpha.memory.create_thread(resource_id=_unique("res"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await beta.memory.get_thread(thread.id)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        for client in (anonymous, wrong):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.memory.get_thread(thread.id)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await alpha.memory.delete_thread(thread.id)


# -- retries and deadlines, against tiny servers started here


class _Servicer(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0
        self.authorization: list[str] = []

    async def GetThread(
        self, request: memory_pb2.GetThreadRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.GetThreadResponse:
        self.calls += 1
        self.authorization.append(
            dict(context.invocation_metadata() or ()).get("authorization", "")
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        return memory_pb2.GetThreadResponse(thread=memory_pb2.Thread(id=request.thread_id))


async def _serve(port: int, servicer: _Servicer) -> grpc.aio.Server:
    server = grpc.aio.server()
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(servicer, server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    await server.start()
    return server


async def test_retries_reach_a_server_that_starts_late() -> None:
    port = _free_port()
    servicer = _Servicer()

    async def start_later() -> grpc.aio.Server:
        await asyncio.sleep(0.3)
        return await _serve(port, servicer)

    starting = asyncio.create_task(start_later())
    try:
        async with LoomworkClient(f"127.0.0.1:{port}", "tok", timeout=10) as client:
            started = time.monotonic()
            thread = await client.memory.get_thread("thr_late")  # the first attempts are refused
            elapsed = time.monotonic() - started
        assert thread.id == "thr_late"
        assert elapsed >= 0.25, "the call cannot have succeeded before the server was up"
        assert servicer.authorization == ["Bearer tok"]
    finally:
        await (await starting).stop(None)


async def test_retries_give_up_when_nothing_listens() -> None:
    port = _free_port()
    async with LoomworkClient(f"127.0.0.1:{port}", timeout=20) as client:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.memory.get_thread("thr_x")
        elapsed = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert elapsed < 10, "bounded attempts, not the 20 s deadline"


@pytest.mark.parametrize(
    ("client_timeout", "call_timeout"),
    [
        pytest.param(0.3, None, id="client-default"),
        pytest.param(30.0, 0.3, id="per-call-override"),
    ],
)
async def test_deadline_exceeded(client_timeout: float, call_timeout: float | None) -> None:
    port = _free_port()
    servicer = _Servicer(delay=3.0)
    server = await _serve(port, servicer)
    try:
        async with LoomworkClient(f"127.0.0.1:{port}", timeout=client_timeout) as client:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.memory.get_thread("thr_slow", timeout=call_timeout)
            elapsed = time.monotonic() - started
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed < 2.0
        assert servicer.calls == 1, "DEADLINE_EXCEEDED is not retried"
    finally:
        await server.stop(None)


def test_streamed_text_drops_what_a_retried_step_had_streamed() -> None:
    def delta(step: int, text: str) -> agent_pb2.AgentRunEvent:
        return agent_pb2.AgentRunEvent(step=step, text_delta=run_pb2.TextDelta(text=text))

    text = StreamedText()
    for event in (
        delta(1, "Let me "),
        delta(1, "che"),
        agent_pb2.AgentRunEvent(step=1, step_retrying=agent_pb2.AgentStepRetrying(attempt=2)),
        delta(1, "Let me check. "),
        agent_pb2.AgentRunEvent(step=1, tool_call=message_pb2.ToolCallPart(tool_name="add")),
        delta(2, "It is 42."),
    ):
        text.add(event)
    assert str(text) == "Let me check. It is 42."
