"""Storage: the JSON/zstd write path, migrations, and the Postgres adapter alone (no gRPC)."""

from __future__ import annotations

import pytest

from loomwork.config import Settings
from loomwork.errors import AlreadyExists, InvalidArgument, NotFound
from loomwork.memory.threads import Memory
from loomwork.messages import NewMessage, NewThread, Role, TextPart, ThreadUpdate
from loomwork.storage import codec
from loomwork.storage.migrations import apply_migrations, load_migrations
from loomwork.storage.postgres import PostgresMemoryStorage
from loomwork.storage.selection import storage_codec
from server.runtime import Runtime
from tests.support import unique


def test_codec_compresses_only_above_threshold() -> None:
    small = {"parts": [{"type": "text", "text": "hi"}]}
    large = {"parts": [{"type": "text", "text": "long text " * 500}]}
    small_bytes, large_bytes = codec.encode(small), codec.encode(large)
    assert small_bytes[:1] == b"j"
    assert large_bytes[:1] == b"z"
    assert len(large_bytes) < len("long text " * 500) / 5
    assert codec.decode(small_bytes) == small
    assert codec.decode(large_bytes) == large
    assert codec.decode(codec.encode({"ü": "✓"}, threshold=0)) == {"ü": "✓"}
    with pytest.raises(ValueError):
        codec.decode(b"?garbage")


def test_compression_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    value = {"parts": [{"type": "text", "text": "x" * 300}]}  # ~330 bytes of JSON
    assert storage_codec(Settings()).encode(value)[:1] == b"j"  # under 1024: plain
    monkeypatch.setenv("LOOMWORK_STORAGE_COMPRESSION_THRESHOLD", "100")
    assert storage_codec(Settings()).encode(value)[:1] == b"z"
    monkeypatch.setenv("LOOMWORK_STORAGE_COMPRESSION", "none")
    plain = storage_codec(Settings()).encode(value)
    assert plain[:1] == b"j" and codec.decode(plain) == value
    monkeypatch.setenv("LOOMWORK_STORAGE_COMPRESSION", "lz4")
    with pytest.raises(ValueError, match="LOOMWORK_STORAGE_COMPRESSION"):
        Settings()


async def test_migrations_are_recorded_and_applied_once(runtime: Runtime) -> None:
    versions = [m.version for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))
    assert await apply_migrations(runtime.db) == []
    async with runtime.db.connection() as conn:
        cur = await conn.execute("select version, name from loomwork_migrations order by version")
        rows = await cur.fetchall()
    assert [r["version"] for r in rows] == versions
    assert rows[0]["name"] == "memory"


async def test_large_message_is_stored_compressed(runtime: Runtime) -> None:
    memory = Memory(PostgresMemoryStorage(runtime.db))
    thread = await memory.create_thread("storage-tenant", NewThread())
    body = "the quick brown fox " * 400
    [stored] = await memory.append_messages(
        "storage-tenant", thread.id, [NewMessage(role=Role.USER, parts=[TextPart(text=body)])]
    )
    async with runtime.db.connection() as conn:
        cur = await conn.execute(
            "select content from messages where tenant_id = %s and id = %s",
            ("storage-tenant", stored.id),
        )
        row = await cur.fetchone()
    assert bytes(row["content"])[:1] == b"z"
    assert len(row["content"]) < len(body) / 10
    [read] = (await memory.list_messages("storage-tenant", thread.id)).messages
    assert read.text == body


async def test_domain_memory_alone(runtime: Runtime) -> None:
    memory = Memory(PostgresMemoryStorage(runtime.db))
    tenant = unique("tenant")
    thread = await memory.create_thread(tenant, NewThread(id="t-1", title="a"))
    with pytest.raises(AlreadyExists):
        await memory.create_thread(tenant, NewThread(id="t-1"))
    updated = await memory.update_thread(tenant, "t-1", ThreadUpdate(metadata={"k": 1}))
    assert updated.title == "a" and updated.metadata == {"k": 1}
    with pytest.raises(NotFound):
        await memory.get_thread("someone-else", thread.id)
    with pytest.raises(InvalidArgument) as err:
        await memory.list_messages(tenant, thread.id, last_n=-1)
    assert err.value.violations[0].field == "last_n"
    await memory.delete_thread(tenant, thread.id)
    with pytest.raises(NotFound):
        await memory.delete_thread(tenant, thread.id)
