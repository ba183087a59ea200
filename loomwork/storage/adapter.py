"""The storage adapter interface: what memory needs from a backend.

Adapters (PostgreSQL, Redis, DynamoDB; `LOOMWORK_MEMORY_STORE` picks one) implement it;
callers hold a `MemoryStorage` and never know which backend answers. Validation happens
before an adapter is called, and every method is scoped to a tenant.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from loomwork.errors import Aborted
from loomwork.messages import Message, NewMessage, NewThread, Thread, ThreadUpdate

# Whose working memory: a thread's (deleted with the thread) or a resource's (a user's).
WorkingMemoryScope = Literal["thread", "resource"]


class StoredWorkingMemory(BaseModel):
    """Working memory as stored: `version` counts its writes (0: never written), so a
    writer can say which version it replaces (optimistic concurrency)."""

    markdown: str = ""
    data: dict[str, Any] | None = None
    version: int = 0
    update_time: datetime | None = None


class WorkingMemoryWrite(BaseModel):
    """A replacement of working memory: its content, and the version it replaces (None:
    whatever is stored; 0: only if never written)."""

    markdown: str = ""
    data: dict[str, Any] | None = None
    expected_version: int | None = None


class MemoryStorage(Protocol):
    """Threads, messages and working memory of one or many tenants."""

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
        """Remove the thread, its messages and its working memory; NotFound when missing."""
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

    async def messages_around(
        self, tenant: str, anchors: list[tuple[str, str]], *, before: int, after: int
    ) -> dict[str, list[Message]]:
        """For each (thread id, message id) anchor whose message is in that thread: the
        message with up to `before` messages preceding and `after` following it in its
        thread, oldest first, keyed by the anchor's message id. Anchors whose message is
        gone (or moved to another thread) are left out."""
        ...

    async def get_working_memory(
        self, tenant: str, scope: WorkingMemoryScope, owner: str
    ) -> StoredWorkingMemory | None:
        """The working memory of a thread or resource, None if never written; NotFound
        for a thread that does not exist."""
        ...

    async def put_working_memory(
        self, tenant: str, scope: WorkingMemoryScope, owner: str, write: WorkingMemoryWrite
    ) -> StoredWorkingMemory:
        """Replace it whole, one version up; with an expected version, only if that is still
        the stored one, else Aborted. NotFound for a thread that does not exist."""
        ...

    async def ping(self) -> bool:
        """True when the backend answers."""
        ...


def version_conflict(scope: WorkingMemoryScope, owner: str, expected: int, current: int) -> Aborted:
    """The error of a working-memory write whose expected version is no longer stored."""
    return Aborted(
        f"the working memory of {scope} {owner!r} is at etag {current}, not {expected}: "
        "it changed since it was read; read it again and retry"
    )
