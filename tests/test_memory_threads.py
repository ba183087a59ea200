"""MemoryService threads over gRPC, on real Postgres, as a calling service sees them."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from protos.loomwork.v1 import memory_pb2
from tests.support import auth, field_violations, unique


def _struct(**values: object) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


async def test_create_get_update_delete_thread(store_memory, token) -> None:
    resource = unique("user")
    created = (
        await store_memory.CreateThread(
            memory_pb2.CreateThreadRequest(
                thread=memory_pb2.Thread(
                    resource_id=resource, title="Trip to Lisbon", metadata=_struct(lang="en")
                )
            ),
            metadata=auth(token),
        )
    ).thread
    assert created.id.startswith("thr_") and len(created.id) == 30
    assert created.resource_id == resource
    assert created.metadata["lang"] == "en"
    assert created.create_time.seconds > 0

    got = (
        await store_memory.GetThread(
            memory_pb2.GetThreadRequest(thread_id=created.id), metadata=auth(token)
        )
    ).thread
    assert got == created

    updated = (
        await store_memory.UpdateThread(
            memory_pb2.UpdateThreadRequest(
                thread=memory_pb2.Thread(id=created.id, title="Trip to Porto"),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            ),
            metadata=auth(token),
        )
    ).thread
    assert updated.title == "Trip to Porto"
    assert updated.metadata["lang"] == "en", "metadata not in the mask must be kept"
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()

    replaced = (
        await store_memory.UpdateThread(
            memory_pb2.UpdateThreadRequest(
                thread=memory_pb2.Thread(id=created.id, metadata=_struct(lang="pt", n=2)),
            ),
            metadata=auth(token),
        )
    ).thread
    assert replaced.title == "Trip to Porto"
    assert dict(replaced.metadata) == {"lang": "pt", "n": 2}

    await store_memory.DeleteThread(
        memory_pb2.DeleteThreadRequest(thread_id=created.id), metadata=auth(token)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await store_memory.GetThread(
            memory_pb2.GetThreadRequest(thread_id=created.id), metadata=auth(token)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_client_chosen_thread_id_is_unique(store_memory, token) -> None:
    thread_id = unique("support-ticket")
    request = memory_pb2.CreateThreadRequest(thread_id=thread_id, thread=memory_pb2.Thread())
    created = await store_memory.CreateThread(request, metadata=auth(token))
    assert created.thread.id == thread_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await store_memory.CreateThread(request, metadata=auth(token))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_list_threads_pages_newest_first_and_filters_by_resource(store_memory, token) -> None:
    resource, other = unique("acct"), unique("acct")
    ids = []
    for i in range(5):
        response = await store_memory.CreateThread(
            memory_pb2.CreateThreadRequest(
                thread=memory_pb2.Thread(resource_id=resource, title=f"t{i}")
            ),
            metadata=auth(token),
        )
        ids.append(response.thread.id)
    await store_memory.CreateThread(
        memory_pb2.CreateThreadRequest(thread=memory_pb2.Thread(resource_id=other)),
        metadata=auth(token),
    )

    seen, token_ = [], ""
    pages = 0
    while True:
        page = await store_memory.ListThreads(
            memory_pb2.ListThreadsRequest(resource_id=resource, page_size=2, page_token=token_),
            metadata=auth(token),
        )
        pages += 1
        assert len(page.threads) <= 2
        seen += [t.id for t in page.threads]
        token_ = page.next_page_token
        if not token_:
            break
    assert pages == 3
    assert seen == list(reversed(ids))


async def test_page_token_of_another_filter_is_rejected(memory_stub, token) -> None:
    resource = unique("acct")
    for _ in range(2):
        await memory_stub.CreateThread(
            memory_pb2.CreateThreadRequest(thread=memory_pb2.Thread(resource_id=resource)),
            metadata=auth(token),
        )
    page = await memory_stub.ListThreads(
        memory_pb2.ListThreadsRequest(resource_id=resource, page_size=1), metadata=auth(token)
    )
    assert page.next_page_token
    for bad in (page.next_page_token, "not-a-token"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await memory_stub.ListThreads(
                memory_pb2.ListThreadsRequest(resource_id="different", page_token=bad),
                metadata=auth(token),
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in field_violations(err.value)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (memory_pb2.GetThreadRequest(thread_id=""), "thread_id"),
        (memory_pb2.GetThreadRequest(thread_id="has spaces"), "thread_id"),
    ],
)
async def test_get_thread_bad_ids_name_the_field(memory_stub, token, request_, field) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await memory_stub.GetThread(request_, metadata=auth(token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(err.value)


async def test_bad_thread_input_names_each_field(memory_stub, token) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await memory_stub.CreateThread(
            memory_pb2.CreateThreadRequest(
                thread_id="bad id!", thread=memory_pb2.Thread(title="x" * 600)
            ),
            metadata=auth(token),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(err.value)) == {"thread_id", "thread.title"}

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await memory_stub.ListThreads(
            memory_pb2.ListThreadsRequest(page_size=5000), metadata=auth(token)
        )
    assert "page_size" in field_violations(err.value)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await memory_stub.UpdateThread(
            memory_pb2.UpdateThreadRequest(
                thread=memory_pb2.Thread(id="whatever", title="t"),
                update_mask=field_mask_pb2.FieldMask(paths=["resource_id"]),
            ),
            metadata=auth(token),
        )
    assert "update_mask" in field_violations(err.value)


async def test_unknown_thread_is_not_found_everywhere(store_memory, token) -> None:
    missing = unique("nope")
    calls = [
        store_memory.GetThread(
            memory_pb2.GetThreadRequest(thread_id=missing), metadata=auth(token)
        ),
        store_memory.DeleteThread(
            memory_pb2.DeleteThreadRequest(thread_id=missing), metadata=auth(token)
        ),
        store_memory.UpdateThread(
            memory_pb2.UpdateThreadRequest(thread=memory_pb2.Thread(id=missing, title="x")),
            metadata=auth(token),
        ),
        store_memory.ListMessages(
            memory_pb2.ListMessagesRequest(thread_id=missing), metadata=auth(token)
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert missing in (err.value.details() or "")
