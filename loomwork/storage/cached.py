"""The read path of the seed: L1 (in-process) → L2 (Redis) → adapter, around any adapter.

Reads of a thread and its messages are cached per thread; every write to a thread
invalidates the thread's scope after the adapter has committed it (see
`loomwork.cache.versioned` for why that order makes stale fills harmless).
"""

from __future__ import annotations

from pydantic import TypeAdapter

from loomwork.cache.versioned import VersionedCache
from loomwork.messages import MESSAGE_LIST, Message, NewMessage, NewThread, Thread, ThreadUpdate
from loomwork.storage import codec
from loomwork.storage.adapter import (
    MemoryStorage,
    StoredWorkingMemory,
    WorkingMemoryScope,
    WorkingMemoryWrite,
)
from loomwork.storage.codec import DEFAULT_CODEC, StorageCodec

_PAGE = TypeAdapter(list[tuple[int, Message]])


def _scope(tenant: str, thread_id: str) -> str:
    return f"thread:{tenant}:{thread_id}"


class CachedMemoryStorage:
    """`MemoryStorage` that serves repeated reads from the cache."""

    def __init__(
        self, storage: MemoryStorage, cache: VersionedCache, *, codec: StorageCodec = DEFAULT_CODEC
    ) -> None:
        self.storage = storage
        self.cache = cache
        self.codec = codec

    # -- cached reads

    async def get_thread(self, tenant: str, thread_id: str) -> Thread:
        return await self.cache.get(
            _scope(tenant, thread_id),
            "thread",
            lambda: self.storage.get_thread(tenant, thread_id),
            encode=lambda t: self.codec.encode_json(t.model_dump_json().encode()),
            decode=lambda raw: Thread.model_validate_json(codec.decode_json(raw)),
        )

    async def last_messages(self, tenant: str, thread_id: str, n: int) -> list[Message]:
        return await self.cache.get(
            _scope(tenant, thread_id),
            f"last:{n}",
            lambda: self.storage.last_messages(tenant, thread_id, n),
            encode=lambda ms: self.codec.encode_json(MESSAGE_LIST.dump_json(ms)),
            decode=lambda raw: MESSAGE_LIST.validate_json(codec.decode_json(raw)),
        )

    async def list_messages(
        self, tenant: str, thread_id: str, *, limit: int, after_seq: int | None
    ) -> list[tuple[int, Message]]:
        return await self.cache.get(
            _scope(tenant, thread_id),
            f"page:{after_seq or 0}:{limit}",
            lambda: self.storage.list_messages(tenant, thread_id, limit=limit, after_seq=after_seq),
            encode=lambda rows: self.codec.encode_json(_PAGE.dump_json(rows)),
            decode=lambda raw: _PAGE.validate_json(codec.decode_json(raw)),
        )

    # -- writes: through to the adapter, then invalidate

    async def create_thread(self, tenant: str, thread: NewThread) -> Thread:
        created = await self.storage.create_thread(tenant, thread)
        await self.cache.invalidate(_scope(tenant, created.id))
        return created

    async def update_thread(self, tenant: str, thread_id: str, update: ThreadUpdate) -> Thread:
        try:
            return await self.storage.update_thread(tenant, thread_id, update)
        finally:
            await self.cache.invalidate(_scope(tenant, thread_id))

    async def delete_thread(self, tenant: str, thread_id: str) -> None:
        try:
            await self.storage.delete_thread(tenant, thread_id)
        finally:
            await self.cache.invalidate(_scope(tenant, thread_id))

    async def append_messages(
        self, tenant: str, thread_id: str, messages: list[NewMessage]
    ) -> list[Message]:
        try:
            return await self.storage.append_messages(tenant, thread_id, messages)
        finally:
            await self.cache.invalidate(_scope(tenant, thread_id))

    # -- not cached

    async def list_threads(
        self, tenant: str, *, resource_id: str | None, limit: int, before_seq: int | None
    ) -> list[tuple[int, Thread]]:
        return await self.storage.list_threads(
            tenant, resource_id=resource_id, limit=limit, before_seq=before_seq
        )

    async def messages_around(
        self, tenant: str, anchors: list[tuple[str, str]], *, before: int, after: int
    ) -> dict[str, list[Message]]:
        return await self.storage.messages_around(tenant, anchors, before=before, after=after)

    async def get_working_memory(
        self, tenant: str, scope: WorkingMemoryScope, owner: str
    ) -> StoredWorkingMemory | None:
        return await self.storage.get_working_memory(tenant, scope, owner)

    async def put_working_memory(
        self, tenant: str, scope: WorkingMemoryScope, owner: str, write: WorkingMemoryWrite
    ) -> StoredWorkingMemory:
        return await self.storage.put_working_memory(tenant, scope, owner, write)

    async def ping(self) -> bool:
        return await self.storage.ping()
