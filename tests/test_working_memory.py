"""Working memory by RPC: per thread or per resource, replaced whole, tenant-scoped."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from protos.loomwork.v1 import memory_pb2
from tests.support import auth, field_violations, unique


async def _get(stub, token, **fields) -> memory_pb2.WorkingMemory:
    response = await stub.GetWorkingMemory(
        memory_pb2.GetWorkingMemoryRequest(**fields), metadata=auth(token)
    )
    return response.working_memory


async def _put(stub, token, **fields) -> memory_pb2.WorkingMemory:
    response = await stub.UpdateWorkingMemory(
        memory_pb2.UpdateWorkingMemoryRequest(working_memory=memory_pb2.WorkingMemory(**fields)),
        metadata=auth(token),
    )
    return response.working_memory


async def test_thread_working_memory_round_trip_and_goes_with_the_thread(
    store_memory, token
) -> None:
    thread = (
        await store_memory.CreateThread(memory_pb2.CreateThreadRequest(), metadata=auth(token))
    ).thread
    scope = {"scope": memory_pb2.MEMORY_SCOPE_THREAD, "thread_id": thread.id}
    empty = await _get(store_memory, token, **scope)
    assert empty.markdown == "" and not empty.HasField("update_time")

    stored = await _put(store_memory, token, markdown="# User\n- name: Ada", **scope)
    assert stored.update_time.seconds > 0
    assert (await _get(store_memory, token, **scope)).markdown == "# User\n- name: Ada"

    await _put(store_memory, token, markdown="# User\n- name: Ada Lovelace", **scope)
    assert (await _get(store_memory, token, **scope)).markdown.endswith("Ada Lovelace")

    await store_memory.DeleteThread(
        memory_pb2.DeleteThreadRequest(thread_id=thread.id), metadata=auth(token)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _get(store_memory, token, **scope)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_resource_working_memory_holds_structured_data_per_tenant(
    store_memory, token, other_token
) -> None:
    resource = unique("user")
    scope = {"scope": memory_pb2.MEMORY_SCOPE_RESOURCE, "resource_id": resource}
    data = struct_pb2.Struct()
    data.update({"name": "Ada", "languages": ["en", "fr"], "vip": True})
    stored = await _put(store_memory, token, data=data, **scope)
    assert stored.data["name"] == "Ada"
    got = await _get(store_memory, token, **scope)
    assert list(got.data["languages"]) == ["en", "fr"] and got.data["vip"] is True
    # Another tenant's resource of the same id is a different, empty working memory.
    theirs = await _get(store_memory, other_token, **scope)
    assert not theirs.HasField("data") and theirs.markdown == ""


async def test_working_memory_validates_by_field(memory_stub, token, other_token) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _get(memory_stub, token)
    assert "scope" in field_violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _get(memory_stub, token, scope=memory_pb2.MEMORY_SCOPE_THREAD)
    assert "thread_id" in field_violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _put(memory_stub, token, scope=memory_pb2.MEMORY_SCOPE_RESOURCE, markdown="x")
    assert "working_memory.resource_id" in field_violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _put(
            memory_stub,
            token,
            scope=memory_pb2.MEMORY_SCOPE_RESOURCE,
            resource_id="r",
            markdown="x" * (64 * 1024 + 1),
        )
    assert "working_memory.markdown" in field_violations(err.value)

    thread = (
        await memory_stub.CreateThread(memory_pb2.CreateThreadRequest(), metadata=auth(token))
    ).thread
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _put(
            memory_stub,
            other_token,
            scope=memory_pb2.MEMORY_SCOPE_THREAD,
            thread_id=thread.id,
            markdown="not yours",
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_updates_with_an_etag_never_overwrite_each_other(store_memory, token) -> None:
    scope = {"scope": memory_pb2.MEMORY_SCOPE_RESOURCE, "resource_id": unique("user")}
    empty = await _get(store_memory, token, **scope)
    assert empty.etag == "0"  # never written
    first = await _put(store_memory, token, markdown="v1", etag=empty.etag, **scope)
    assert first.etag == "1"
    # A second writer that read the same empty memory would overwrite v1: refused.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _put(store_memory, token, markdown="other", etag=empty.etag, **scope)
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert "etag 1" in (err.value.details() or "")
    got = await _get(store_memory, token, **scope)
    assert (got.markdown, got.etag) == ("v1", "1")

    second = await _put(store_memory, token, markdown="v2", etag=got.etag, **scope)
    assert second.etag == "2"
    unconditional = await _put(store_memory, token, markdown="v3", **scope)  # no etag: replace
    assert unconditional.etag == "3"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _put(store_memory, token, markdown="x", etag="W/1", **scope)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "working_memory.etag" in field_violations(err.value)
