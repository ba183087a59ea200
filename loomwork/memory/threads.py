"""Conversation memory: validated thread and message operations over a storage adapter."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from loomwork.errors import FieldViolation, InvalidArgument, Violations
from loomwork.ids import CLIENT_ID_RULE, is_valid_client_id, new_id
from loomwork.messages import (
    ALLOWED_PARTS,
    Message,
    MessagePage,
    NewMessage,
    NewThread,
    Thread,
    ThreadPage,
    ThreadUpdate,
    ToolCallPart,
    ToolResultPart,
)
from loomwork.paging import decode_page_token, encode_page_token
from loomwork.storage.adapter import MemoryStorage

DEFAULT_THREAD_PAGE = 50
DEFAULT_MESSAGE_PAGE = 100
MAX_PAGE = 1000
MAX_APPEND = 1000
MAX_TITLE = 512
MAX_RESOURCE_ID = 256


def _require_id(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument.field(field, "is required")
    if not is_valid_client_id(value):
        raise InvalidArgument.field(field, f"must be {CLIENT_ID_RULE}")


def _page_size(value: int, field: str, default: int) -> int:
    if value < 0 or value > MAX_PAGE:
        raise InvalidArgument.field(field, f"must be between 0 and {MAX_PAGE}")
    return value or default


def _check_message(index: int, message: NewMessage, violations: Violations) -> None:
    where = f"messages[{index}]"
    if message.id and not is_valid_client_id(message.id):
        violations.add(f"{where}.id", f"must be {CLIENT_ID_RULE}")
    if not message.parts:
        violations.add(f"{where}.parts", "must hold at least one part")
    allowed = ALLOWED_PARTS[message.role]
    for j, part in enumerate(message.parts):
        at = f"{where}.parts[{j}]"
        if part.type not in allowed:
            violations.add(
                at, f"a {message.role.value} message may hold only {', '.join(allowed)} parts"
            )
        if isinstance(part, ToolCallPart):
            if not part.tool_call_id:
                violations.add(f"{at}.tool_call.tool_call_id", "is required")
            if not part.tool_name:
                violations.add(f"{at}.tool_call.tool_name", "is required")
        elif isinstance(part, ToolResultPart) and not part.tool_call_id:
            violations.add(f"{at}.tool_result.tool_call_id", "is required")


class Memory:
    """Threads and messages for tenants; validates input, then calls the adapter.

    `forget_thread` runs after a thread is deleted: semantic recall's vectors live outside
    the store (`MessageRecall.forget_thread`)."""

    def __init__(
        self,
        storage: MemoryStorage,
        *,
        forget_thread: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.storage = storage
        self.forget_thread = forget_thread

    async def create_thread(self, tenant: str, thread: NewThread) -> Thread:
        violations = Violations()
        if thread.id and not is_valid_client_id(thread.id):
            violations.add("thread_id", f"must be {CLIENT_ID_RULE}")
        if len(thread.resource_id) > MAX_RESOURCE_ID:
            violations.add("thread.resource_id", f"must be at most {MAX_RESOURCE_ID} characters")
        if len(thread.title) > MAX_TITLE:
            violations.add("thread.title", f"must be at most {MAX_TITLE} characters")
        violations.raise_if_any()
        if not thread.id:
            thread = thread.model_copy(update={"id": new_id("thr")})
        return await self.storage.create_thread(tenant, thread)

    async def get_thread(self, tenant: str, thread_id: str) -> Thread:
        _require_id(thread_id, "thread_id")
        return await self.storage.get_thread(tenant, thread_id)

    async def list_threads(
        self, tenant: str, *, resource_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> ThreadPage:
        limit = _page_size(page_size, "page_size", DEFAULT_THREAD_PAGE)
        scope = f"threads\x00{resource_id}"
        before = decode_page_token(page_token, scope)
        rows = await self.storage.list_threads(
            tenant, resource_id=resource_id or None, limit=limit + 1, before_seq=before
        )
        more = len(rows) > limit
        rows = rows[:limit]
        token = encode_page_token(rows[-1][0], scope) if more else ""
        return ThreadPage(threads=[t for _, t in rows], next_page_token=token)

    async def update_thread(self, tenant: str, thread_id: str, update: ThreadUpdate) -> Thread:
        _require_id(thread_id, "thread.id")
        if update.title is not None and len(update.title) > MAX_TITLE:
            raise InvalidArgument.field("thread.title", f"must be at most {MAX_TITLE} characters")
        return await self.storage.update_thread(tenant, thread_id, update)

    async def delete_thread(self, tenant: str, thread_id: str) -> None:
        _require_id(thread_id, "thread_id")
        await self.storage.delete_thread(tenant, thread_id)
        if self.forget_thread is not None:
            await self.forget_thread(tenant, thread_id)

    async def append_messages(
        self, tenant: str, thread_id: str, messages: list[NewMessage]
    ) -> list[Message]:
        _require_id(thread_id, "thread_id")
        violations = Violations()
        if not messages:
            violations.add("messages", "must hold at least one message")
        if len(messages) > MAX_APPEND:
            violations.add("messages", f"must hold at most {MAX_APPEND} messages")
        seen: dict[str, int] = {}
        for index, message in enumerate(messages):
            _check_message(index, message, violations)
            if message.id:
                if message.id in seen:
                    violations.add(
                        f"messages[{index}].id", f"repeats messages[{seen[message.id]}].id"
                    )
                seen.setdefault(message.id, index)
        violations.raise_if_any()
        return await self.storage.append_messages(tenant, thread_id, messages)

    async def list_messages(
        self,
        tenant: str,
        thread_id: str,
        *,
        last_n: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> MessagePage:
        _require_id(thread_id, "thread_id")
        if last_n < 0 or last_n > MAX_PAGE:
            raise InvalidArgument.field("last_n", f"must be between 0 and {MAX_PAGE}")
        if last_n:
            clash = [
                FieldViolation(f, "cannot be combined with last_n")
                for f, v in (("page_size", page_size), ("page_token", page_token))
                if v
            ]
            if clash:
                raise InvalidArgument(clash)
            return MessagePage(messages=await self.storage.last_messages(tenant, thread_id, last_n))
        limit = _page_size(page_size, "page_size", DEFAULT_MESSAGE_PAGE)
        scope = f"messages\x00{thread_id}"
        after = decode_page_token(page_token, scope)
        rows = await self.storage.list_messages(tenant, thread_id, limit=limit + 1, after_seq=after)
        more = len(rows) > limit
        rows = rows[:limit]
        token = encode_page_token(rows[-1][0], scope) if more else ""
        return MessagePage(messages=[m for _, m in rows], next_page_token=token)
