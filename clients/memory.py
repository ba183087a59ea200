"""`client.memory`: threads and their messages (MemoryService)."""

# `timeout=` on the async methods is the gRPC deadline of the call, as in grpc's own API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from google.protobuf import field_mask_pb2

from clients.transport import Transport, iter_pages, to_struct
from protos.loomwork.v1 import memory_pb2, memory_pb2_grpc, message_pb2

__all__ = ["MemoryClient"]


class MemoryClient:
    """Threads (create, read, list, update, delete) and their messages (append, list, search).

    Build messages with `text_message`, `tool_call_message` and `tool_result_message`
    (`clients.messages`), or as `message_pb2.Message` directly.
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = memory_pb2_grpc.MemoryServiceStub(transport.channel)

    # -- threads

    async def create_thread(
        self,
        *,
        resource_id: str = "",
        title: str = "",
        metadata: Mapping[str, Any] | None = None,
        thread_id: str = "",
        timeout: float | None = None,
    ) -> memory_pb2.Thread:
        """Creates a thread; `thread_id` picks its id (ALREADY_EXISTS if taken)."""
        thread = memory_pb2.Thread(
            resource_id=resource_id, title=title, metadata=to_struct(metadata)
        )
        response = await self._transport.call(
            self._stub.CreateThread,
            memory_pb2.CreateThreadRequest(thread=thread, thread_id=thread_id),
            memory_pb2.CreateThreadResponse,
            timeout,
        )
        return response.thread

    async def get_thread(
        self, thread_id: str, *, timeout: float | None = None
    ) -> memory_pb2.Thread:
        response = await self._transport.call(
            self._stub.GetThread,
            memory_pb2.GetThreadRequest(thread_id=thread_id),
            memory_pb2.GetThreadResponse,
            timeout,
        )
        return response.thread

    async def list_threads(
        self,
        *,
        resource_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> memory_pb2.ListThreadsResponse:
        """One page of threads, most recently created first."""
        return await self._transport.call(
            self._stub.ListThreads,
            memory_pb2.ListThreadsRequest(
                resource_id=resource_id, page_size=page_size, page_token=page_token
            ),
            memory_pb2.ListThreadsResponse,
            timeout,
        )

    async def iter_threads(
        self,
        *,
        resource_id: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[memory_pb2.Thread]:
        """Every thread (of `resource_id` when set), fetching page after page."""
        pages = iter_pages(
            lambda page_token: self.list_threads(
                resource_id=resource_id, page_size=page_size, page_token=page_token, timeout=timeout
            )
        )
        async for page in pages:
            for thread in page.threads:
                yield thread

    async def update_thread(
        self,
        thread_id: str,
        *,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> memory_pb2.Thread:
        """Sets the given fields (None leaves a field as it is; `metadata={}` clears it)."""
        thread = memory_pb2.Thread(id=thread_id)
        paths = []
        if title is not None:
            thread.title = title
            paths.append("title")
        if metadata is not None:
            thread.metadata.update(dict(metadata))
            paths.append("metadata")
        response = await self._transport.call(
            self._stub.UpdateThread,
            memory_pb2.UpdateThreadRequest(
                thread=thread, update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
            memory_pb2.UpdateThreadResponse,
            timeout,
        )
        return response.thread

    async def delete_thread(self, thread_id: str, *, timeout: float | None = None) -> None:
        """Deletes a thread and all its messages."""
        await self._transport.call(
            self._stub.DeleteThread,
            memory_pb2.DeleteThreadRequest(thread_id=thread_id),
            memory_pb2.DeleteThreadResponse,
            timeout,
        )

    # -- messages

    async def append_messages(
        self,
        thread_id: str,
        messages: Iterable[message_pb2.Message],
        *,
        timeout: float | None = None,
    ) -> list[message_pb2.Message]:
        """Appends messages (all or none) and returns them as stored, in request order.

        A message id stored before returns the stored message.
        """
        response = await self._transport.call(
            self._stub.AppendMessages,
            memory_pb2.AppendMessagesRequest(thread_id=thread_id, messages=list(messages)),
            memory_pb2.AppendMessagesResponse,
            timeout,
        )
        return list(response.messages)

    async def list_messages(
        self,
        thread_id: str,
        *,
        last_n: int = 0,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> memory_pb2.ListMessagesResponse:
        """The newest `last_n` messages (chronological), or one page of all, oldest first."""
        return await self._transport.call(
            self._stub.ListMessages,
            memory_pb2.ListMessagesRequest(
                thread_id=thread_id, last_n=last_n, page_size=page_size, page_token=page_token
            ),
            memory_pb2.ListMessagesResponse,
            timeout,
        )

    async def iter_messages(
        self,
        thread_id: str,
        *,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[message_pb2.Message]:
        """Every message of a thread, oldest first, fetching page after page."""
        pages = iter_pages(
            lambda page_token: self.list_messages(
                thread_id, page_size=page_size, page_token=page_token, timeout=timeout
            )
        )
        async for page in pages:
            for message in page.messages:
                yield message

    async def search_messages(
        self,
        query: str,
        *,
        thread_id: str = "",
        resource_id: str = "",
        top_k: int = 0,
        message_range: int = 0,
        min_score: float = 0.0,
        timeout: float | None = None,
    ) -> memory_pb2.SearchMessagesResponse:
        """Messages closest in meaning to `query`, in one thread or (without it) a resource.

        Messages become searchable a moment after they are appended (indexing runs in the
        background on the worker)."""
        scope = memory_pb2.MEMORY_SCOPE_THREAD if thread_id else memory_pb2.MEMORY_SCOPE_RESOURCE
        return await self._transport.call(
            self._stub.SearchMessages,
            memory_pb2.SearchMessagesRequest(
                query=query,
                scope=scope,
                thread_id=thread_id,
                resource_id=resource_id,
                top_k=top_k,
                message_range=message_range,
                min_score=min_score,
            ),
            memory_pb2.SearchMessagesResponse,
            timeout,
        )
