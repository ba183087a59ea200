"""One contract suite for every `MemoryStorage` adapter: PostgreSQL, Redis, DynamoDB.

Threads and messages here; recall windows, working memory and the codec settings in
test_storage_contract_more.py. The backends (tests/storage_backends.py) are the session's
real servers. Every test works in fresh tenants, so adapters sharing a backend never see
each other's data.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from loomwork.errors import AlreadyExists, InvalidArgument, NotFound
from loomwork.messages import (
    NewMessage,
    NewThread,
    Role,
    TextPart,
    ThreadUpdate,
    ToolCallPart,
    ToolResultPart,
)
from loomwork.storage import codec
from loomwork.storage.dynamodb import MAX_APPEND_MESSAGES, DynamoMemoryStorage
from loomwork.storage.redis_adapter import RedisMemoryStorage
from tests.storage_backends import Backend, text, thread_in
from tests.support import unique

# -- threads -----------------------------------------------------------------------------


async def test_thread_lifecycle(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    created = await s.create_thread(
        tenant, NewThread(id="t-1", resource_id="user-1", title="hello", metadata={"k": [1, "ü"]})
    )
    assert (created.id, created.resource_id, created.title) == ("t-1", "user-1", "hello")
    assert created.metadata == {"k": [1, "ü"]}
    assert created.message_count == 0
    assert created.create_time == created.update_time
    assert created.create_time.tzinfo is not None
    assert await s.get_thread(tenant, "t-1") == created

    titled = await s.update_thread(tenant, "t-1", ThreadUpdate(title="renamed"))
    assert titled.title == "renamed" and titled.metadata == {"k": [1, "ü"]}
    assert titled.create_time == created.create_time
    assert titled.update_time >= created.update_time
    tagged = await s.update_thread(tenant, "t-1", ThreadUpdate(metadata={}))
    assert tagged.title == "renamed" and tagged.metadata == {}
    touched = await s.update_thread(tenant, "t-1", ThreadUpdate())
    assert touched.update_time >= tagged.update_time
    assert await s.get_thread(tenant, "t-1") == touched

    await s.delete_thread(tenant, "t-1")
    with pytest.raises(NotFound):
        await s.get_thread(tenant, "t-1")
    with pytest.raises(NotFound):
        await s.delete_thread(tenant, "t-1")
    assert await s.list_threads(tenant, resource_id=None, limit=10, before_seq=None) == []


async def test_taken_thread_id_already_exists(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    await s.create_thread(tenant, NewThread(id="same", title="first"))
    with pytest.raises(AlreadyExists):
        await s.create_thread(tenant, NewThread(id="same", title="second"))
    assert (await s.get_thread(tenant, "same")).title == "first"
    rows = await s.list_threads(tenant, resource_id=None, limit=10, before_seq=None)
    assert [t.id for _, t in rows] == ["same"]


async def test_not_found_everywhere(backend: Backend) -> None:
    s, tenant, other = backend.storage, unique("tenant"), unique("tenant")
    await s.create_thread(other, NewThread(id="theirs"))
    for thread_id in ("missing", "theirs"):  # absent, or another tenant's
        with pytest.raises(NotFound):
            await s.get_thread(tenant, thread_id)
        with pytest.raises(NotFound):
            await s.update_thread(tenant, thread_id, ThreadUpdate(title="x"))
        with pytest.raises(NotFound):
            await s.delete_thread(tenant, thread_id)
        with pytest.raises(NotFound):
            await s.append_messages(tenant, thread_id, [text("hi")])
        with pytest.raises(NotFound):
            await s.append_messages(tenant, thread_id, [])
        with pytest.raises(NotFound):
            await s.last_messages(tenant, thread_id, 5)
        with pytest.raises(NotFound):
            await s.last_messages(tenant, thread_id, 0)
        with pytest.raises(NotFound):
            await s.list_messages(tenant, thread_id, limit=5, after_seq=None)
    assert (await s.get_thread(other, "theirs")).message_count == 0


async def test_list_threads_pages_newest_first_with_resource_filter(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    ids = []
    for i in range(7):
        ids.append(await thread_in(s, tenant, id=f"t-{i}", resource_id="even" if i % 2 else "odd"))
    newest_first = list(reversed(ids))

    seen: list[str] = []
    cursors: list[int] = []
    before: int | None = None
    while True:
        rows = await s.list_threads(tenant, resource_id=None, limit=3, before_seq=before)
        assert len(rows) <= 3
        if not rows:
            break
        seen += [t.id for _, t in rows]
        cursors += [c for c, _ in rows]
        before = rows[-1][0]
    assert seen == newest_first
    assert cursors == sorted(cursors, reverse=True) and len(set(cursors)) == len(cursors)

    odd = await s.list_threads(tenant, resource_id="odd", limit=10, before_seq=None)
    assert [t.id for _, t in odd] == ["t-6", "t-4", "t-2", "t-0"]
    assert all(t.resource_id == "odd" for _, t in odd)
    page = await s.list_threads(tenant, resource_id="even", limit=2, before_seq=None)
    assert [t.id for _, t in page] == ["t-5", "t-3"]
    rest = await s.list_threads(tenant, resource_id="even", limit=2, before_seq=page[-1][0])
    assert [t.id for _, t in rest] == ["t-1"]
    assert await s.list_threads(tenant, resource_id="none", limit=5, before_seq=None) == []
    assert await s.list_threads(tenant, resource_id=None, limit=0, before_seq=None) == []
    # a cursor below everything, and threads in other tenants, give nothing
    assert await s.list_threads(tenant, resource_id=None, limit=5, before_seq=cursors[-1]) == []
    assert await s.list_threads(unique("tenant"), resource_id=None, limit=5, before_seq=None) == []
    # listed threads carry their current state
    await s.update_thread(tenant, "t-6", ThreadUpdate(title="top"))
    [(_, top)] = await s.list_threads(tenant, resource_id=None, limit=1, before_seq=None)
    assert top.title == "top"


async def test_listing_reflects_deletes(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    for i in range(3):
        await thread_in(s, tenant, id=f"t-{i}", resource_id="r")
    await s.delete_thread(tenant, "t-1")
    for resource in (None, "r"):
        rows = await s.list_threads(tenant, resource_id=resource, limit=10, before_seq=None)
        assert [t.id for _, t in rows] == ["t-2", "t-0"]


# -- messages ----------------------------------------------------------------------------


async def test_append_and_read_in_order(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    thread_id = await thread_in(s, tenant)
    before = await s.get_thread(tenant, thread_id)
    first = await s.append_messages(
        tenant,
        thread_id,
        [
            text("one", id="m-1", role=Role.SYSTEM),
            NewMessage(
                role=Role.ASSISTANT,
                parts=[
                    TextPart(text="calling"),
                    ToolCallPart(tool_call_id="c1", tool_name="add", arguments={"a": 1}),
                ],
                metadata={"model": "x"},
            ),
            NewMessage(
                id="m-3",
                role=Role.TOOL,
                parts=[ToolResultPart(tool_call_id="c1", tool_name="add", result={"sum": 2})],
            ),
        ],
    )
    assert [m.id for m in first][::2] == ["m-1", "m-3"]
    assert first[1].id.startswith("msg_")  # generated
    assert [m.role for m in first] == [Role.SYSTEM, Role.ASSISTANT, Role.TOOL]
    assert all(m.thread_id == thread_id for m in first)
    assert first[1].metadata == {"model": "x"} and first[1].text == "calling"
    assert first[1].parts[1] == ToolCallPart(tool_call_id="c1", tool_name="add", arguments={"a": 1})
    assert first[2].parts[0].result == {"sum": 2}  # type: ignore[union-attr]
    after_one = await s.get_thread(tenant, thread_id)
    assert after_one.message_count == 3
    assert after_one.update_time >= before.update_time

    second = await s.append_messages(tenant, thread_id, [text("four"), text("five")])
    assert await s.append_messages(tenant, thread_id, []) == []
    everything = first + second
    assert (await s.get_thread(tenant, thread_id)).message_count == 5

    assert await s.last_messages(tenant, thread_id, 2) == second
    assert await s.last_messages(tenant, thread_id, 100) == everything
    assert await s.last_messages(tenant, thread_id, 0) == []

    rows = await s.list_messages(tenant, thread_id, limit=100, after_seq=None)
    assert [m for _, m in rows] == everything
    seqs = [c for c, _ in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    paged: list[Any] = []
    after: int | None = None
    while page := await s.list_messages(tenant, thread_id, limit=2, after_seq=after):
        assert len(page) <= 2
        paged += page
        after = page[-1][0]
    assert paged == rows
    assert await s.list_messages(tenant, thread_id, limit=5, after_seq=seqs[-1]) == []
    assert await s.list_messages(tenant, thread_id, limit=0, after_seq=None) == []
    assert await s.list_messages(tenant, thread_id, limit=2, after_seq=seqs[2]) == rows[3:5]


async def test_empty_thread_reads(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    thread_id = await thread_in(s, tenant)
    assert await s.last_messages(tenant, thread_id, 10) == []
    assert await s.list_messages(tenant, thread_id, limit=10, after_seq=None) == []


async def test_reappend_is_idempotent(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    thread_id = await thread_in(s, tenant)
    [a, b] = await s.append_messages(tenant, thread_id, [text("a", id="a"), text("b", id="b")])
    settled = await s.get_thread(tenant, thread_id)

    again = await s.append_messages(tenant, thread_id, [text("CHANGED", id="a"), text("b", id="b")])
    assert again == [a, b]  # as first stored, text and time included
    unchanged = await s.get_thread(tenant, thread_id)
    assert unchanged.message_count == 2 and unchanged.update_time == settled.update_time

    mixed = await s.append_messages(
        tenant, thread_id, [text("c", id="c"), text("X", id="a"), text("c again", id="c")]
    )
    assert [m.id for m in mixed] == ["c", "a", "c"]
    assert mixed[1] == a and mixed[2] == mixed[0] and mixed[0].text == "c"
    assert (await s.get_thread(tenant, thread_id)).message_count == 3
    assert [m.id for m in await s.last_messages(tenant, thread_id, 10)] == ["a", "b", "c"]


async def test_id_used_in_another_thread_stores_nothing(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    owner, other = await thread_in(s, tenant), await thread_in(s, tenant)
    await s.append_messages(tenant, owner, [text("mine", id="x")])
    before = await s.get_thread(tenant, other)

    with pytest.raises(AlreadyExists) as err:
        await s.append_messages(tenant, other, [text("y", id="y"), text("x", id="x")])
    assert "messages[1]" in err.value.message

    assert await s.last_messages(tenant, other, 10) == []
    after = await s.get_thread(tenant, other)
    assert after.message_count == 0 and after.update_time == before.update_time
    assert [m.text for m in await s.last_messages(tenant, owner, 10)] == ["mine"]
    # nothing of the refused append was kept: "y" is still free
    [y] = await s.append_messages(tenant, other, [text("y", id="y")])
    assert y.thread_id == other


async def test_large_message_round_trips_compressed(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    thread_id = await thread_in(s, tenant)
    body = "the quick brown fox jumps over the lazy dog " * 200  # ~9 KiB
    stored, _ = await s.append_messages(tenant, thread_id, [text(body, id="big"), text("tiny")])
    assert stored.text == body
    raw = await backend.raw_content(tenant, thread_id, "big")
    assert raw[:1] == b"z" and len(raw) < len(body) / 5
    assert body in str(codec.decode(raw))
    read, _ = await s.last_messages(tenant, thread_id, 2)
    assert read == stored
    [(_, listed), _] = await s.list_messages(tenant, thread_id, limit=5, after_seq=None)
    assert listed == stored


async def test_tenants_are_isolated(backend: Backend) -> None:
    s, one, two = backend.storage, unique("tenant"), unique("tenant")
    await s.create_thread(one, NewThread(id="shared", title="one", resource_id="r"))
    await s.create_thread(two, NewThread(id="shared", title="two", resource_id="r"))
    [m1] = await s.append_messages(one, "shared", [text("from one", id="m")])
    [m2] = await s.append_messages(two, "shared", [text("from two", id="m")])
    assert (m1.text, m2.text) == ("from one", "from two")
    assert (await s.get_thread(one, "shared")).title == "one"
    listed = await s.list_threads(two, resource_id="r", limit=5, before_seq=None)
    assert [t.title for _, t in listed] == ["two"]
    await s.delete_thread(one, "shared")
    assert [m.text for m in await s.last_messages(two, "shared", 5)] == ["from two"]
    assert (await s.get_thread(two, "shared")).message_count == 1


async def test_delete_removes_messages_and_frees_their_ids(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    await s.create_thread(tenant, NewThread(id="gone", resource_id="r"))
    await s.append_messages(tenant, "gone", [text("old", id="m-1"), text("old 2", id="m-2")])
    await s.delete_thread(tenant, "gone")

    fresh = await thread_in(s, tenant)
    [moved] = await s.append_messages(tenant, fresh, [text("new", id="m-1")])
    assert moved.thread_id == fresh and moved.text == "new"

    again = await s.create_thread(tenant, NewThread(id="gone"))
    assert again.message_count == 0
    assert await s.last_messages(tenant, "gone", 10) == []
    assert await s.list_messages(tenant, "gone", limit=10, after_seq=None) == []
    with pytest.raises(AlreadyExists):  # m-1 now belongs to `fresh`
        await s.append_messages(tenant, "gone", [text("x", id="m-1")])
    [back] = await s.append_messages(tenant, "gone", [text("back", id="m-2")])
    assert back.text == "back"
    assert await s.list_threads(tenant, resource_id="r", limit=5, before_seq=None) == []


async def test_concurrent_appends_stay_whole_and_in_seq_order(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    thread_id = await thread_in(s, tenant)
    batches = [[text(f"{b}.{i}", id=f"m-{b}-{i}") for i in range(2)] for b in range(6)]
    await asyncio.gather(*(s.append_messages(tenant, thread_id, batch) for batch in batches))
    rows = await s.list_messages(tenant, thread_id, limit=100, after_seq=None)
    assert (await s.get_thread(tenant, thread_id)).message_count == 12 == len(rows)
    texts = [m.text for _, m in rows]
    for pair in range(0, 12, 2):  # each append's messages are adjacent, in order
        head, tail = texts[pair].split("."), texts[pair + 1].split(".")
        assert head[0] == tail[0] and (head[1], tail[1]) == ("0", "1")


async def test_concurrent_claims_of_one_id_let_one_thread_win(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    threads = [await thread_in(s, tenant) for _ in range(3)]
    results = await asyncio.gather(
        *(s.append_messages(tenant, t, [text(t, id="contested")]) for t in threads),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, list)]
    assert len(winners) == 1
    assert all(isinstance(r, AlreadyExists) for r in results if not isinstance(r, list))
    [[won]] = winners
    counts = [(await s.get_thread(tenant, t)).message_count for t in threads]
    assert sorted(counts) == [0, 0, 1]
    assert counts[threads.index(won.thread_id)] == 1


async def test_ping(backend: Backend) -> None:
    assert await backend.storage.ping() is True


# -- adapter specifics -------------------------------------------------------------------


async def test_dynamo_reads_a_recreated_thread_under_its_new_incarnation(
    dynamo_backend: Backend,
) -> None:
    s, tenant = dynamo_backend.storage, unique("tenant")
    assert isinstance(s, DynamoMemoryStorage)
    await s.create_thread(tenant, NewThread(id="again"))
    [old] = await s.append_messages(tenant, "again", [text("old", id="m-old")])
    assert await s.last_messages(tenant, "again", 5) == [old]  # this process knows it now
    old_seq = int((await s.table.get(s.thread_key(tenant, "again")) or {})["seq"]["N"])
    await s.delete_thread(tenant, "again")
    # As if the sweep of the old messages had been interrupted: one is still there.
    await s.table.client.put_item(
        TableName=s.table.name,
        Item={
            "pk": {"S": s.messages_pk(tenant, old_seq)},
            "sk": {"S": f"{1:020d}"},
            "id": {"S": "m-old"},
            "role": {"S": "user"},
            "ct": {"N": "0"},
            "body": {"B": codec.encode({"parts": [{"type": "text", "text": "old"}]})},
        },
    )
    await s.create_thread(tenant, NewThread(id="again"))
    assert await s.last_messages(tenant, "again", 5) == []
    assert await s.list_messages(tenant, "again", limit=5, after_seq=None) == []
    [new] = await s.append_messages(tenant, "again", [text("new")])
    assert await s.last_messages(tenant, "again", 5) == [new]


async def test_dynamo_refuses_appends_beyond_one_transaction(dynamo_backend: Backend) -> None:
    s, tenant = dynamo_backend.storage, unique("tenant")
    thread_id = await thread_in(s, tenant)
    too_many = [text(f"m{i}") for i in range(MAX_APPEND_MESSAGES + 1)]
    with pytest.raises(InvalidArgument) as err:
        await s.append_messages(tenant, thread_id, too_many)
    assert err.value.violations[0].field == "messages"
    assert (await s.get_thread(tenant, thread_id)).message_count == 0
    stored = await s.append_messages(tenant, thread_id, too_many[:MAX_APPEND_MESSAGES])
    assert len(stored) == MAX_APPEND_MESSAGES
    assert await s.last_messages(tenant, thread_id, 100) == stored


async def test_redis_needs_binary_responses(embedded: dict[str, str]) -> None:
    client = aioredis.Redis.from_url(embedded["REDIS_URL"], decode_responses=True)
    try:
        with pytest.raises(ValueError):
            RedisMemoryStorage(client)
    finally:
        await client.aclose()
