"""Working memory: one replaceable document per thread or per resource, in the memory store.

Each write moves its etag on; a writer that sends the etag it read replaces only that
version (optimistic concurrency), so two writers cannot silently overwrite each other.
"""

from __future__ import annotations

from loomwork.errors import InvalidArgument, Violations
from loomwork.ids import CLIENT_ID_RULE, is_valid_client_id
from loomwork.memory.models import RecallScope, WorkingMemory
from loomwork.storage.adapter import (
    MemoryStorage,
    StoredWorkingMemory,
    WorkingMemoryScope,
    WorkingMemoryWrite,
)

MAX_MARKDOWN = 64 * 1024
MAX_RESOURCE_ID = 256
_STORE_SCOPE: dict[RecallScope, WorkingMemoryScope] = {
    RecallScope.THREAD: "thread",
    RecallScope.RESOURCE: "resource",
}


def _owner(
    memory_scope: RecallScope | None, thread_id: str, resource_id: str, prefix: str = ""
) -> str:
    """The thread or resource id the scope points at; field paths get `prefix`."""
    violations = Violations()
    if memory_scope is None:
        raise InvalidArgument.field(f"{prefix}scope", "must be THREAD or RESOURCE")
    if memory_scope is RecallScope.THREAD:
        if not thread_id:
            violations.add(f"{prefix}thread_id", "is required when scope is THREAD")
        elif not is_valid_client_id(thread_id):
            violations.add(f"{prefix}thread_id", f"must be {CLIENT_ID_RULE}")
    elif not resource_id:
        violations.add(f"{prefix}resource_id", "is required when scope is RESOURCE")
    elif len(resource_id) > MAX_RESOURCE_ID:
        violations.add(f"{prefix}resource_id", f"must be at most {MAX_RESOURCE_ID} characters")
    violations.raise_if_any()
    return thread_id if memory_scope is RecallScope.THREAD else resource_id


def _expected_version(etag: str) -> int | None:
    """The version an etag names; None for no etag (replace whatever is stored)."""
    if not etag:
        return None
    if not etag.isascii() or not etag.isdigit() or len(etag) > 18:
        raise InvalidArgument.field(
            "working_memory.etag", "must be an etag returned by GetWorkingMemory (digits)"
        )
    return int(etag)


class WorkingMemoryStore:
    """Get and replace working memory, scoped by tenant."""

    def __init__(self, storage: MemoryStorage) -> None:
        self.storage = storage

    async def get(
        self, tenant: str, scope: RecallScope | None, *, thread_id: str = "", resource_id: str = ""
    ) -> WorkingMemory:
        """The stored working memory, or an empty one (etag "0"); NotFound for an unknown
        thread."""
        owner = _owner(scope, thread_id, resource_id)
        assert scope is not None
        stored = await self.storage.get_working_memory(tenant, _STORE_SCOPE[scope], owner)
        return self._model(scope, owner, stored)

    async def replace(self, tenant: str, memory: WorkingMemory) -> WorkingMemory:
        """Store `memory` as the whole new working memory of its thread or resource; with an
        etag, only if the stored one still has it (else Aborted)."""
        owner = _owner(memory.scope, memory.thread_id, memory.resource_id, "working_memory.")
        if len(memory.markdown) > MAX_MARKDOWN:
            raise InvalidArgument.field(
                "working_memory.markdown", f"must be at most {MAX_MARKDOWN} characters"
            )
        write = WorkingMemoryWrite(
            markdown=memory.markdown,
            data=memory.data,
            expected_version=_expected_version(memory.etag),
        )
        stored = await self.storage.put_working_memory(
            tenant, _STORE_SCOPE[memory.scope], owner, write
        )
        return self._model(memory.scope, owner, stored)

    @staticmethod
    def _model(scope: RecallScope, owner: str, stored: StoredWorkingMemory | None) -> WorkingMemory:
        is_thread = scope is RecallScope.THREAD
        stored = stored or StoredWorkingMemory()
        return WorkingMemory(
            scope=scope,
            thread_id=owner if is_thread else "",
            resource_id="" if is_thread else owner,
            markdown=stored.markdown,
            data=stored.data,
            update_time=stored.update_time,
            etag=str(stored.version),
        )
