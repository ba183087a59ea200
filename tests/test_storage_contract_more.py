"""The contract suite, continued: what recall and working memory need of every adapter
(messages with their neighbours; working memory with etags, deleted with its thread), and
the write path's compression settings read across each other."""

from __future__ import annotations

import asyncio

import pytest

from loomwork.errors import Aborted, NotFound
from loomwork.messages import NewThread, Role
from loomwork.storage import codec
from loomwork.storage.adapter import WorkingMemoryWrite
from loomwork.storage.codec import StorageCodec
from tests.storage_backends import Backend, text, thread_in
from tests.support import unique

# -- messages around anchors (semantic recall's hits and their neighbours) ----------------


async def test_messages_around_anchors(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    a, b = await thread_in(s, tenant), await thread_in(s, tenant)
    await s.append_messages(tenant, a, [text(f"a{i}", id=f"a{i}") for i in range(5)])
    await s.append_messages(tenant, b, [text("b0", id="b0"), text("b1", id="b1", role=Role.TOOL)])
    await s.append_messages(tenant, a, [text("a5", id="a5")])  # after b's: seqs interleave

    windows = await s.messages_around(
        tenant,
        [(a, "a2"), (a, "a0"), (b, "b1"), (a, "a5"), (a, "missing"), (b, "a3")],
        before=1,
        after=1,
    )
    texts = {anchor: [m.text for m in window] for anchor, window in windows.items()}
    assert texts == {
        "a2": ["a1", "a2", "a3"],
        "a0": ["a0", "a1"],
        "b1": ["b0", "b1"],
        "a5": ["a4", "a5"],
    }  # "missing" is gone, "a3" is not in thread b
    assert windows["b1"][1].role is Role.TOOL and windows["b1"][1].thread_id == b
    assert windows["a2"] == (await s.last_messages(tenant, a, 6))[1:4]

    wide = await s.messages_around(tenant, [(a, "a3")], before=10, after=2)
    assert [m.text for m in wide["a3"]] == ["a0", "a1", "a2", "a3", "a4", "a5"]
    alone = await s.messages_around(tenant, [(a, "a1"), (b, "b0")], before=0, after=0)
    assert {k: [m.text for m in v] for k, v in alone.items()} == {"a1": ["a1"], "b0": ["b0"]}
    assert await s.messages_around(tenant, [], before=1, after=1) == {}

    # Another tenant sees none of them; a deleted thread's messages are gone.
    assert await s.messages_around(unique("tenant"), [(a, "a2")], before=1, after=1) == {}
    await s.delete_thread(tenant, b)
    left = await s.messages_around(tenant, [(b, "b0"), (a, "a0")], before=0, after=0)
    assert list(left) == ["a0"]


# -- working memory -----------------------------------------------------------------------


async def test_working_memory_versions_and_etags(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    resource = unique("user")
    assert await s.get_working_memory(tenant, "resource", resource) is None

    first = await s.put_working_memory(
        tenant,
        "resource",
        resource,
        WorkingMemoryWrite(markdown="# Ada ✓", data=None, expected_version=None),
    )
    assert (first.markdown, first.data, first.version) == ("# Ada ✓", None, 1)
    assert first.update_time is not None
    assert await s.get_working_memory(tenant, "resource", resource) == first

    second = await s.put_working_memory(
        tenant,
        "resource",
        resource,
        WorkingMemoryWrite(
            markdown="", data={"name": "Ada", "langs": ["en", "fr"]}, expected_version=1
        ),
    )
    assert (second.markdown, second.data, second.version) == (
        "",
        {"name": "Ada", "langs": ["en", "fr"]},
        2,
    )
    for stale in (1, 0, 7):  # what a writer read is no longer there
        with pytest.raises(Aborted) as err:
            await s.put_working_memory(
                tenant,
                "resource",
                resource,
                WorkingMemoryWrite(markdown="lost", data=None, expected_version=stale),
            )
        assert "etag 2" in err.value.message
    assert await s.get_working_memory(tenant, "resource", resource) == second

    fresh = unique("user")  # expected 0: only if never written
    made = await s.put_working_memory(
        tenant, "resource", fresh, WorkingMemoryWrite(markdown="new", data=None, expected_version=0)
    )
    assert made.version == 1
    # Tenants are apart: the same resource of another tenant has none.
    assert await s.get_working_memory(unique("tenant"), "resource", resource) is None


async def test_concurrent_writers_of_one_version_let_one_win(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    thread_id = await thread_in(s, tenant)
    await s.put_working_memory(
        tenant,
        "thread",
        thread_id,
        WorkingMemoryWrite(markdown="v1", data=None, expected_version=None),
    )
    results = await asyncio.gather(
        *(
            s.put_working_memory(
                tenant,
                "thread",
                thread_id,
                WorkingMemoryWrite(markdown=f"writer {i}", data=None, expected_version=1),
            )
            for i in range(4)
        ),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1 and won[0].version == 2
    assert all(isinstance(r, Aborted) for r in results if isinstance(r, BaseException))
    stored = await s.get_working_memory(tenant, "thread", thread_id)
    assert stored is not None and stored.markdown == won[0].markdown


async def test_thread_working_memory_needs_the_thread_and_goes_with_it(backend: Backend) -> None:
    s, tenant = backend.storage, unique("tenant")
    for call in (
        s.get_working_memory(tenant, "thread", "nope"),
        s.put_working_memory(
            tenant,
            "thread",
            "nope",
            WorkingMemoryWrite(markdown="x", data=None, expected_version=None),
        ),
    ):
        with pytest.raises(NotFound):
            await call
    await s.create_thread(tenant, NewThread(id="t", resource_id="r"))
    assert await s.get_working_memory(tenant, "thread", "t") is None
    await s.put_working_memory(
        tenant,
        "thread",
        "t",
        WorkingMemoryWrite(markdown="notes", data={"k": 1}, expected_version=0),
    )
    await s.put_working_memory(
        tenant,
        "resource",
        "r",
        WorkingMemoryWrite(markdown="user", data=None, expected_version=None),
    )

    await s.delete_thread(tenant, "t")
    with pytest.raises(NotFound):
        await s.get_working_memory(tenant, "thread", "t")
    await s.create_thread(tenant, NewThread(id="t", resource_id="r"))
    assert await s.get_working_memory(tenant, "thread", "t") is None  # not the old one's
    again = await s.put_working_memory(
        tenant, "thread", "t", WorkingMemoryWrite(markdown="n", data=None, expected_version=0)
    )
    assert again.version == 1
    resource_memory = await s.get_working_memory(tenant, "resource", "r")  # a user's stays
    assert resource_memory is not None and resource_memory.markdown == "user"


# -- compression settings -----------------------------------------------------------------


async def test_values_written_under_one_compression_setting_read_under_the_other(
    backend: Backend,
) -> None:
    tenant = unique("tenant")
    plain = backend.with_codec(StorageCodec("none"))
    eager = backend.with_codec(StorageCodec("zstd", threshold=100))
    thread_id = await thread_in(backend.storage, tenant)
    body = "the quick brown fox jumps over the lazy dog " * 100  # ~4.4 KiB
    medium = "lorem ipsum " * 20  # 240 bytes: under the default threshold, over 100
    [raw_big, zipped_medium, default_medium] = [
        *await plain.append_messages(tenant, thread_id, [text(body, id="plain")]),
        *await eager.append_messages(tenant, thread_id, [text(medium, id="eager")]),
        *await backend.storage.append_messages(tenant, thread_id, [text(medium, id="default")]),
    ]
    stored = {
        m: await backend.raw_content(tenant, thread_id, m) for m in ("plain", "eager", "default")
    }
    assert stored["plain"][:1] == b"j" and len(stored["plain"]) > len(body)
    assert stored["eager"][:1] == b"z" and len(stored["eager"]) < len(medium)
    assert stored["default"][:1] == b"j"
    assert body in str(codec.decode(stored["plain"]))

    # Every adapter reads what any of them wrote.
    for reader in (plain, eager, backend.storage):
        read = await reader.last_messages(tenant, thread_id, 3)
        assert [m.text for m in read] == [body, medium, medium]
        assert read == [raw_big, zipped_medium, default_medium]
    plain_memory = await plain.put_working_memory(
        tenant,
        "thread",
        thread_id,
        WorkingMemoryWrite(markdown="m", data={"big": body}, expected_version=None),
    )
    assert await eager.get_working_memory(tenant, "thread", thread_id) == plain_memory
