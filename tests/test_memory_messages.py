"""MemoryService messages over gRPC: parts, idempotency, paging, atomicity."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from protos.loomwork.v1 import memory_pb2, message_pb2
from tests.support import auth, field_violations, unique


def text(role: int, content: str, id: str = "") -> message_pb2.Message:
    return message_pb2.Message(
        id=id, role=role, parts=[message_pb2.Part(text=message_pb2.TextPart(text=content))]
    )


async def new_thread(stub, token: str) -> str:
    response = await stub.CreateThread(
        memory_pb2.CreateThreadRequest(thread=memory_pb2.Thread(resource_id=unique("r"))),
        metadata=auth(token),
    )
    return response.thread.id


async def test_append_all_roles_and_part_kinds_round_trip(store_memory, token) -> None:
    thread_id = await new_thread(store_memory, token)
    args = struct_pb2.Struct()
    args.update({"city": "Lisbon", "days": 3})
    result = struct_pb2.Value()
    result.struct_value.update({"forecast": ["sun", "rain"]})
    metadata = struct_pb2.Struct()
    metadata.update({"source": "test"})
    messages = [
        text(message_pb2.ROLE_SYSTEM, "You plan trips."),
        text(message_pb2.ROLE_USER, "Weather in Lisbon?"),
        message_pb2.Message(
            role=message_pb2.ROLE_ASSISTANT,
            parts=[
                message_pb2.Part(text=message_pb2.TextPart(text="Let me check.")),
                message_pb2.Part(
                    tool_call=message_pb2.ToolCallPart(
                        tool_call_id="call_1", tool_name="weather", arguments=args
                    )
                ),
            ],
        ),
        message_pb2.Message(
            role=message_pb2.ROLE_TOOL,
            metadata=metadata,
            parts=[
                message_pb2.Part(
                    tool_result=message_pb2.ToolResultPart(
                        tool_call_id="call_1", tool_name="weather", result=result
                    )
                )
            ],
        ),
        text(message_pb2.ROLE_ASSISTANT, "Sun, then rain." * 200),  # large: stored compressed
    ]
    stored = (
        await store_memory.AppendMessages(
            memory_pb2.AppendMessagesRequest(thread_id=thread_id, messages=messages),
            metadata=auth(token),
        )
    ).messages
    assert [m.role for m in stored] == [m.role for m in messages]
    assert all(m.id.startswith("msg_") and m.thread_id == thread_id for m in stored)

    listed = (
        await store_memory.ListMessages(
            memory_pb2.ListMessagesRequest(thread_id=thread_id), metadata=auth(token)
        )
    ).messages
    assert [m.id for m in listed] == [m.id for m in stored]
    for sent, got in zip(messages, listed, strict=True):
        assert list(got.parts) == list(sent.parts)
    assert listed[3].metadata["source"] == "test"
    assert listed[2].parts[1].tool_call.arguments["city"] == "Lisbon"

    thread = (
        await store_memory.GetThread(
            memory_pb2.GetThreadRequest(thread_id=thread_id), metadata=auth(token)
        )
    ).thread
    assert thread.message_count == 5


async def test_client_message_ids_are_idempotent(store_memory, token) -> None:
    thread_id = await new_thread(store_memory, token)
    first = text(message_pb2.ROLE_USER, "hello", id=unique("m"))
    await store_memory.AppendMessages(
        memory_pb2.AppendMessagesRequest(thread_id=thread_id, messages=[first]),
        metadata=auth(token),
    )
    # A retry carrying the same id (even with other content) stores nothing new.
    retry = text(message_pb2.ROLE_USER, "hello again", id=first.id)
    second = text(message_pb2.ROLE_ASSISTANT, "hi!", id=unique("m"))
    response = await store_memory.AppendMessages(
        memory_pb2.AppendMessagesRequest(thread_id=thread_id, messages=[retry, second]),
        metadata=auth(token),
    )
    assert response.messages[0].parts[0].text.text == "hello"
    listed = (
        await store_memory.ListMessages(
            memory_pb2.ListMessagesRequest(thread_id=thread_id), metadata=auth(token)
        )
    ).messages
    assert [m.id for m in listed] == [first.id, second.id]
    thread = (
        await store_memory.GetThread(
            memory_pb2.GetThreadRequest(thread_id=thread_id), metadata=auth(token)
        )
    ).thread
    assert thread.message_count == 2


async def test_message_id_used_in_another_thread_fails_whole_append(store_memory, token) -> None:
    a = await new_thread(store_memory, token)
    b = await new_thread(store_memory, token)
    shared = unique("m")
    await store_memory.AppendMessages(
        memory_pb2.AppendMessagesRequest(
            thread_id=a, messages=[text(message_pb2.ROLE_USER, "x", id=shared)]
        ),
        metadata=auth(token),
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await store_memory.AppendMessages(
            memory_pb2.AppendMessagesRequest(
                thread_id=b,
                messages=[
                    text(message_pb2.ROLE_USER, "fresh"),
                    text(message_pb2.ROLE_USER, "clash", id=shared),
                ],
            ),
            metadata=auth(token),
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = await store_memory.ListMessages(
        memory_pb2.ListMessagesRequest(thread_id=b), metadata=auth(token)
    )
    assert list(listed.messages) == [], "a failed append must store nothing"


async def test_newest_n_and_oldest_first_paging(store_memory, token) -> None:
    thread_id = await new_thread(store_memory, token)
    for batch in range(3):
        await store_memory.AppendMessages(
            memory_pb2.AppendMessagesRequest(
                thread_id=thread_id,
                messages=[text(message_pb2.ROLE_USER, f"m{batch * 4 + i}") for i in range(4)],
            ),
            metadata=auth(token),
        )
    newest = await store_memory.ListMessages(
        memory_pb2.ListMessagesRequest(thread_id=thread_id, last_n=3), metadata=auth(token)
    )
    assert [m.parts[0].text.text for m in newest.messages] == ["m9", "m10", "m11"]
    assert newest.next_page_token == ""

    texts, page_token = [], ""
    while True:
        page = await store_memory.ListMessages(
            memory_pb2.ListMessagesRequest(thread_id=thread_id, page_size=5, page_token=page_token),
            metadata=auth(token),
        )
        texts += [m.parts[0].text.text for m in page.messages]
        page_token = page.next_page_token
        if not page_token:
            break
    assert texts == [f"m{i}" for i in range(12)]


async def test_bad_messages_are_rejected_by_field_and_nothing_is_stored(memory_stub, token) -> None:
    thread_id = await new_thread(memory_stub, token)
    bad = [
        text(message_pb2.ROLE_USER, "fine"),
        text(message_pb2.ROLE_UNSPECIFIED, "no role"),
        message_pb2.Message(role=message_pb2.ROLE_USER, parts=[message_pb2.Part()]),
        message_pb2.Message(role=message_pb2.ROLE_ASSISTANT),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await memory_stub.AppendMessages(
            memory_pb2.AppendMessagesRequest(thread_id=thread_id, messages=bad),
            metadata=auth(token),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = field_violations(err.value)
    assert {"messages[1].role", "messages[2].parts[0]"} <= set(fields)

    semantic = [
        message_pb2.Message(role=message_pb2.ROLE_ASSISTANT),
        message_pb2.Message(
            role=message_pb2.ROLE_USER,
            parts=[message_pb2.Part(tool_call=message_pb2.ToolCallPart(tool_name="x"))],
        ),
        text(message_pb2.ROLE_USER, "bad id", id="white space"),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await memory_stub.AppendMessages(
            memory_pb2.AppendMessagesRequest(thread_id=thread_id, messages=semantic),
            metadata=auth(token),
        )
    fields = field_violations(err.value)
    assert {
        "messages[0].parts",
        "messages[1].parts[0]",
        "messages[1].parts[0].tool_call.tool_call_id",
        "messages[2].id",
    } <= set(fields)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await memory_stub.AppendMessages(
            memory_pb2.AppendMessagesRequest(thread_id=thread_id), metadata=auth(token)
        )
    assert "messages" in field_violations(err.value)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await memory_stub.ListMessages(
            memory_pb2.ListMessagesRequest(thread_id=thread_id, last_n=2, page_size=3),
            metadata=auth(token),
        )
    assert "page_size" in field_violations(err.value)

    listed = await memory_stub.ListMessages(
        memory_pb2.ListMessagesRequest(thread_id=thread_id), metadata=auth(token)
    )
    assert list(listed.messages) == []


async def test_delete_thread_removes_its_messages(store_memory, token) -> None:
    thread_id, message_id = unique("thr"), unique("m")
    await store_memory.CreateThread(
        memory_pb2.CreateThreadRequest(thread_id=thread_id), metadata=auth(token)
    )
    await store_memory.AppendMessages(
        memory_pb2.AppendMessagesRequest(
            thread_id=thread_id, messages=[text(message_pb2.ROLE_USER, "bye", id=message_id)]
        ),
        metadata=auth(token),
    )
    await store_memory.DeleteThread(
        memory_pb2.DeleteThreadRequest(thread_id=thread_id), metadata=auth(token)
    )
    # The same id again is a new, empty thread, and the message's id is free for another.
    again = await store_memory.CreateThread(
        memory_pb2.CreateThreadRequest(thread_id=thread_id), metadata=auth(token)
    )
    assert again.thread.message_count == 0
    listed = await store_memory.ListMessages(
        memory_pb2.ListMessagesRequest(thread_id=thread_id), metadata=auth(token)
    )
    assert list(listed.messages) == []
    other = await new_thread(store_memory, token)
    moved = await store_memory.AppendMessages(
        memory_pb2.AppendMessagesRequest(
            thread_id=other, messages=[text(message_pb2.ROLE_USER, "hello", id=message_id)]
        ),
        metadata=auth(token),
    )
    assert moved.messages[0].parts[0].text.text == "hello"
