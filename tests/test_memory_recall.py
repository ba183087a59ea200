"""Semantic recall: appended messages are embedded (by the IndexMessages workflow, with the real
local model) and SearchMessages finds them by meaning, within scope and tenant; messages
stored while their indexing could not be started are indexed later all the same."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from loomwork.config import Settings
from loomwork.embeddings.provider import EmbeddingProvider
from loomwork.errors import FailedPrecondition
from loomwork.memory.recall import MessageRecall
from protos.loomwork.v1 import memory_pb2, memory_pb2_grpc, message_pb2
from server.runtime import Runtime
from tests.redis_proxy import RedisProxy
from tests.store_support import StoreService
from tests.support import another_server, auth, field_violations, own_runtime, unique

DISTRACTORS = [
    "Can you recommend a good pasta recipe for dinner?",
    "The quarterly sales report is due on Friday.",
    "My favourite football team lost again last night.",
    "Please remind me to water the plants tomorrow.",
    "What is the capital city of Australia?",
]
TARGET = "My daughter is allergic to peanuts, so never suggest snacks with nuts."


def _text(role: int, text: str) -> message_pb2.Message:
    return message_pb2.Message(
        role=role, parts=[message_pb2.Part(text=message_pb2.TextPart(text=text))]
    )


async def _thread_with(stub, token: str, resource: str, texts: list[str]) -> tuple[str, list[str]]:
    thread = (
        await stub.CreateThread(
            memory_pb2.CreateThreadRequest(thread=memory_pb2.Thread(resource_id=resource)),
            metadata=auth(token),
        )
    ).thread
    stored = await stub.AppendMessages(
        memory_pb2.AppendMessagesRequest(
            thread_id=thread.id,
            messages=[
                _text(message_pb2.ROLE_USER if i % 2 == 0 else message_pb2.ROLE_ASSISTANT, t)
                for i, t in enumerate(texts)
            ],
        ),
        metadata=auth(token),
    )
    return thread.id, [m.id for m in stored.messages]


async def _search(stub, token: str, **fields) -> memory_pb2.SearchMessagesResponse:
    return await stub.SearchMessages(
        memory_pb2.SearchMessagesRequest(**fields), metadata=auth(token)
    )


async def _wait_indexed(
    stub, token: str, expect: int, **fields
) -> memory_pb2.SearchMessagesResponse:
    """Indexing runs in the background; poll until `expect` messages are searchable."""
    for _ in range(150):
        response = await _search(stub, token, top_k=100, **fields)
        if len(response.hits) >= expect:
            return response
        await asyncio.sleep(0.1)
    pytest.fail(f"only {len(response.hits)} of {expect} messages became searchable")


async def test_recall_finds_the_right_message_among_distractors(store_memory, token) -> None:
    resource = unique("family")
    texts = [*DISTRACTORS[:3], TARGET, *DISTRACTORS[3:]]
    thread_id, ids = await _thread_with(store_memory, token, resource, texts)
    scope = {"scope": memory_pb2.MEMORY_SCOPE_THREAD, "thread_id": thread_id}
    await _wait_indexed(store_memory, token, len(texts), query="anything", **scope)

    response = await _search(
        store_memory,
        token,
        query="which foods cause an allergic reaction for the kid?",
        top_k=3,
        message_range=1,
        **scope,
    )
    assert len(response.hits) == 3
    best = response.hits[0]
    assert best.message.id == ids[3]
    assert best.message.parts[0].text.text == TARGET
    assert 0 < response.hits[1].score <= best.score <= 1
    # One neighbour on each side, in time order.
    assert [m.id for m in best.context] == [ids[2], ids[4]]

    strict = await _search(
        store_memory,
        token,
        query="which foods cause an allergic reaction for the kid?",
        min_score=best.score - 1e-4,
        **scope,
    )
    assert [h.message.id for h in strict.hits] == [ids[3]]


async def test_resource_scope_spans_threads_and_never_crosses_tenants(
    store_memory, token, other_token
) -> None:
    resource = unique("customer")
    first, _ = await _thread_with(store_memory, token, resource, DISTRACTORS[:2])
    second, second_ids = await _thread_with(store_memory, token, resource, [TARGET])
    # The other tenant uses the very same resource id, with the same sentence.
    theirs, _ = await _thread_with(store_memory, other_token, resource, [TARGET])
    scope = {"scope": memory_pb2.MEMORY_SCOPE_RESOURCE, "resource_id": resource}
    await _wait_indexed(store_memory, token, 3, query="anything", **scope)
    await _wait_indexed(store_memory, other_token, 1, query="anything", **scope)

    mine = await _search(store_memory, token, query="peanut allergy", top_k=10, **scope)
    assert mine.hits[0].message.id == second_ids[0]
    assert {h.message.thread_id for h in mine.hits} == {first, second}
    assert theirs not in {h.message.thread_id for h in mine.hits}

    only_first = await _search(
        store_memory,
        token,
        query="peanut allergy",
        top_k=10,
        scope=memory_pb2.MEMORY_SCOPE_THREAD,
        thread_id=first,
    )
    assert {h.message.thread_id for h in only_first.hits} == {first}


async def test_every_hit_carries_its_own_neighbours(store_memory, token) -> None:
    """Neighbours of all hits come back in one query; each hit gets those of its own thread."""
    resource = unique("household")
    first, first_ids = await _thread_with(store_memory, token, resource, DISTRACTORS[:3])
    second, second_ids = await _thread_with(
        store_memory, token, resource, [TARGET, *DISTRACTORS[3:]]
    )
    scope = {"scope": memory_pb2.MEMORY_SCOPE_RESOURCE, "resource_id": resource}
    await _wait_indexed(store_memory, token, 6, query="anything", **scope)

    response = await _search(
        store_memory, token, query="nut allergy", top_k=6, message_range=1, **scope
    )
    assert response.hits[0].message.id == second_ids[0]
    assert [h.score for h in response.hits] == sorted(
        (h.score for h in response.hits), reverse=True
    )
    threads = {first: first_ids, second: second_ids}
    for hit in response.hits:
        ids = threads[hit.message.thread_id]
        at = ids.index(hit.message.id)
        assert [m.id for m in hit.context] == ids[max(0, at - 1) : at] + ids[at + 1 : at + 2]
    assert {h.message.id for h in response.hits} == {*first_ids, *second_ids}


async def _vector_count(runtime: Runtime, thread_id: str) -> int:
    async with runtime.db.connection() as conn:
        cur = await conn.execute(
            "select count(*) as n from message_embeddings where thread_id = %s", (thread_id,)
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


async def test_deleted_threads_leave_nothing_to_recall(store: StoreService, token) -> None:
    """Vectors stay in pgvector whatever the store: deleting a thread deletes its vectors,
    and a vector whose message is gone anyway (a crash between the two) is no hit."""
    stub = store.memory
    resource = unique("family")
    _, kept_ids = await _thread_with(stub, token, resource, [TARGET])
    deleted, _ = await _thread_with(stub, token, resource, [TARGET, DISTRACTORS[0]])
    orphaned, _ = await _thread_with(stub, token, resource, [TARGET, DISTRACTORS[1]])
    scope = {"scope": memory_pb2.MEMORY_SCOPE_RESOURCE, "resource_id": resource}
    await _wait_indexed(stub, token, 5, query="anything", **scope)

    await stub.DeleteThread(memory_pb2.DeleteThreadRequest(thread_id=deleted), metadata=auth(token))
    assert await _vector_count(store.runtime, deleted) == 0
    # Deleted in the store alone, as if the process died before forgetting its vectors.
    await store.runtime.memory.storage.delete_thread("alpha", orphaned)
    assert await _vector_count(store.runtime, orphaned) == 2

    response = await _search(
        stub, token, query="peanut allergy", top_k=10, message_range=1, **scope
    )
    assert [h.message.id for h in response.hits] == kept_ids
    assert list(response.hits[0].context) == []


async def test_search_validates_input_and_scope(memory_stub, token, other_token) -> None:
    cases = [
        ({"scope": memory_pb2.MEMORY_SCOPE_THREAD, "thread_id": "x"}, "query"),
        ({"query": "q"}, "scope"),
        ({"query": "q", "scope": memory_pb2.MEMORY_SCOPE_THREAD}, "thread_id"),
        ({"query": "q", "scope": memory_pb2.MEMORY_SCOPE_RESOURCE}, "resource_id"),
        (
            {
                "query": "q",
                "scope": memory_pb2.MEMORY_SCOPE_RESOURCE,
                "resource_id": "r",
                "top_k": 500,
            },
            "top_k",
        ),
        (
            {
                "query": "q",
                "scope": memory_pb2.MEMORY_SCOPE_RESOURCE,
                "resource_id": "r",
                "message_range": 21,
            },
            "message_range",
        ),
        (
            {
                "query": "q",
                "scope": memory_pb2.MEMORY_SCOPE_RESOURCE,
                "resource_id": "r",
                "min_score": 1.5,
            },
            "min_score",
        ),
    ]
    for fields, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _search(memory_stub, token, **fields)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert field in field_violations(err.value), fields

    thread_id, _ = await _thread_with(memory_stub, token, unique("r"), ["hello"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _search(
            memory_stub,
            other_token,
            query="hello",
            scope=memory_pb2.MEMORY_SCOPE_THREAD,
            thread_id=thread_id,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_messages_stored_while_temporal_is_unreachable_become_searchable(
    memory_stub, token, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A server whose Temporal cannot be reached as messages are appended stores them (the
    call succeeds) and starts their indexing once Temporal is back."""
    assert settings.temporal_address
    # A plain TCP proxy (RedisProxy forwards any protocol) in front of the real Temporal.
    proxy = RedisProxy(int(settings.temporal_address.rsplit(":", 1)[1]))
    await proxy.up()
    try:
        async with (
            own_runtime(
                settings,
                temporal_address=f"127.0.0.1:{proxy.port}",
                task_queue=settings.task_queue,  # the session's worker embeds
                index_sweep_seconds=0.5,
            ) as runtime,
            another_server(runtime) as channel,
        ):
            stub = memory_pb2_grpc.MemoryServiceStub(channel)
            thread = (
                await stub.CreateThread(memory_pb2.CreateThreadRequest(), metadata=auth(token))
            ).thread
            await proxy.down()  # Temporal unreachable from this server
            with caplog.at_level(logging.WARNING, logger="server.indexing"):
                stored = await stub.AppendMessages(
                    memory_pb2.AppendMessagesRequest(
                        thread_id=thread.id, messages=[_text(message_pb2.ROLE_USER, TARGET)]
                    ),
                    metadata=auth(token),
                    timeout=60,
                )
            assert "could not start indexing" in caplog.text
            [message] = stored.messages
            await proxy.up()
            found = await _wait_indexed(
                memory_stub,
                token,
                1,
                query="peanut allergy",
                scope=memory_pb2.MEMORY_SCOPE_THREAD,
                thread_id=thread.id,
            )
            assert [h.message.id for h in found.hits] == [message.id]
    finally:
        await proxy.down()


class _OtherModel:
    model = "text-embedding-3-small"
    dimension = 1536

    async def embed(self, texts: list[str]) -> list[list[float]]:
        raise AssertionError("never called")


async def test_switching_embedding_model_on_existing_data_is_refused(runtime: Runtime) -> None:
    other: EmbeddingProvider = _OtherModel()
    with pytest.raises(FailedPrecondition) as err:
        await MessageRecall(runtime.db, other, runtime.memory.storage).ensure_space()
    assert "all-MiniLM-L6-v2" in err.value.message
    assert "text-embedding-3-small" in err.value.message
    await runtime.recall.ensure_space()  # the configured model is still fine


async def test_indexing_notices_a_dead_worker_in_seconds(
    memory_stub, runtime: Runtime, token
) -> None:
    """The embedding activity heartbeats, so a worker killed mid-batch delays indexing by its
    heartbeat timeout (seconds), not the activity's 2-minute timeout: the Temporal history
    an operator reads shows the timeout on the scheduled activity."""
    thread_id, _ = await _thread_with(memory_stub, token, unique("beats"), ["one", "two"])
    scope = {"scope": memory_pb2.MEMORY_SCOPE_THREAD, "thread_id": thread_id}
    await _wait_indexed(memory_stub, token, 2, query="anything", **scope)
    found = [
        w
        async for w in runtime.temporal.list_workflows(
            f"WorkflowId STARTS_WITH 'memory-index/{thread_id}/'"
        )
    ]
    assert found, "the IndexMessages run is listed in Temporal"
    history = await runtime.temporal.get_workflow_handle(found[0].id).fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert [s.activity_type.name for s in scheduled] == ["embed_messages"]
    assert scheduled[0].heartbeat_timeout.ToSeconds() == 10
