"""Bearer tokens decide the tenant; tenants never see each other's data."""

from __future__ import annotations

import grpc
import pytest

from protos.loomwork.v1 import memory_pb2, message_pb2
from tests.support import auth, unique


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer nope"),),
        (("authorization", "Basic dGVzdA=="),),
        (("authorization", "Bearer "),),
    ],
)
async def test_missing_or_wrong_token_is_unauthenticated(memory_stub, metadata) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await memory_stub.ListThreads(memory_pb2.ListThreadsRequest(), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_other_tenants_thread_is_not_found(memory_stub, token, other_token) -> None:
    resource = unique("shared-resource")
    mine = (
        await memory_stub.CreateThread(
            memory_pb2.CreateThreadRequest(thread=memory_pb2.Thread(resource_id=resource)),
            metadata=auth(token),
        )
    ).thread
    hello = message_pb2.Message(
        role=message_pb2.ROLE_USER, parts=[message_pb2.Part(text=message_pb2.TextPart(text="hi"))]
    )
    other_calls = [
        memory_stub.GetThread(
            memory_pb2.GetThreadRequest(thread_id=mine.id), metadata=auth(other_token)
        ),
        memory_stub.ListMessages(
            memory_pb2.ListMessagesRequest(thread_id=mine.id), metadata=auth(other_token)
        ),
        memory_stub.AppendMessages(
            memory_pb2.AppendMessagesRequest(thread_id=mine.id, messages=[hello]),
            metadata=auth(other_token),
        ),
        memory_stub.UpdateThread(
            memory_pb2.UpdateThreadRequest(thread=memory_pb2.Thread(id=mine.id, title="pwned")),
            metadata=auth(other_token),
        ),
        memory_stub.DeleteThread(
            memory_pb2.DeleteThreadRequest(thread_id=mine.id), metadata=auth(other_token)
        ),
    ]
    for call in other_calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

    listed = await memory_stub.ListThreads(
        memory_pb2.ListThreadsRequest(resource_id=resource), metadata=auth(other_token)
    )
    assert list(listed.threads) == []

    # The same client-chosen id may exist in both tenants, independently.
    same = unique("ticket")
    for t in (token, other_token):
        created = await memory_stub.CreateThread(
            memory_pb2.CreateThreadRequest(thread_id=same, thread=memory_pb2.Thread(title=t)),
            metadata=auth(t),
        )
        assert created.thread.title == t

    still = (
        await memory_stub.GetThread(
            memory_pb2.GetThreadRequest(thread_id=mine.id), metadata=auth(token)
        )
    ).thread
    assert still.title == "" and still.message_count == 0
