"""The storage adapter interface: what memory needs from a backend.

Adapters (PostgreSQL now; Redis and DynamoDB later) implement it; callers hold
a `MemoryStorage` and never know which backend answers. Validation happens
before an adapter is called, and every method is scoped to a tenant.
"""

from __future__ import annotations

from typing import Protocol

from loomwork.messages import Message, NewMessage, NewThread, Thread, ThreadUpdate


class MemoryStorage(Protocol):
    """Threads and messages of one or many tenants."""

    async def create_thread(self, tenant: str, thread: NewThread) -> Thread:
        """Store a new thread (its id already chosen); AlreadyExists if taken."""
        ...

    async def get_thread(self, tenant: str, thread_id: str) -> Thread:
        """NotFound when the tenant has no such thread."""
        ...

    async def list_threads(
        self, tenant: str, *, resource_id: str | None, limit: int, before_seq: int | None
    ) -> list[tuple[int, Thread]]:
        """Threads newest first as (cursor, thread), starting below `before_seq`."""
        ...

    async def update_thread(self, tenant: str, thread_id: str, update: ThreadUpdate) -> Thread:
        """Apply the non-None fields; NotFound when missing."""
        ...

    async def delete_thread(self, tenant: str, thread_id: str) -> None:
        """Remove the thread and its messages; NotFound when missing."""
        ...

    async def append_messages(
        self, tenant: str, thread_id: str, messages: list[NewMessage]
    ) -> list[Message]:
        """Store all or none, in order; ids already stored in this thread are kept as first
        stored (idempotent), an id stored in another thread is AlreadyExists."""
        ...

    async def last_messages(self, tenant: str, thread_id: str, n: int) -> list[Message]:
        """The newest `n` messages, oldest first; NotFound when the thread is missing."""
        ...

    async def list_messages(
        self, tenant: str, thread_id: str, *, limit: int, after_seq: int | None
    ) -> list[tuple[int, Message]]:
        """Messages oldest first as (cursor, message), starting after `after_seq`."""
        ...

    async def ping(self) -> bool:
        """True when the backend answers."""
        ...
