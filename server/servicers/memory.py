"""MemoryService: threads and messages over `loomwork.memory.Memory`."""

from __future__ import annotations

import grpc

from loomwork.errors import InvalidArgument
from loomwork.memory.models import RecallQuery, RecallScope, WorkingMemory
from loomwork.messages import NewThread, ThreadUpdate
from protos.loomwork.v1 import memory_pb2, memory_pb2_grpc
from server.indexing import start_indexing
from server.runtime import Runtime
from server.servicers import memory_convert, message_convert
from server.servicers.tenancy import tenant
from server.servicers.well_known_convert import struct_to_dict

_UPDATABLE = ("title", "metadata")
_SCOPES = {
    memory_pb2.MEMORY_SCOPE_THREAD: RecallScope.THREAD,
    memory_pb2.MEMORY_SCOPE_RESOURCE: RecallScope.RESOURCE,
}


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.memory = runtime.memory
        self.recall = runtime.recall
        self.working_memory = runtime.working_memory
        self.temporal = runtime.temporal
        self.task_queue = runtime.settings.task_queue

    async def CreateThread(
        self, request: memory_pb2.CreateThreadRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.CreateThreadResponse:
        new = NewThread(
            id=request.thread_id,
            resource_id=request.thread.resource_id,
            title=request.thread.title,
            metadata=struct_to_dict(request.thread.metadata),
        )
        thread = await self.memory.create_thread(tenant(), new)
        return memory_pb2.CreateThreadResponse(thread=memory_convert.thread_to_proto(thread))

    async def GetThread(
        self, request: memory_pb2.GetThreadRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.GetThreadResponse:
        thread = await self.memory.get_thread(tenant(), request.thread_id)
        return memory_pb2.GetThreadResponse(thread=memory_convert.thread_to_proto(thread))

    async def ListThreads(
        self, request: memory_pb2.ListThreadsRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ListThreadsResponse:
        page = await self.memory.list_threads(
            tenant(),
            resource_id=request.resource_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return memory_pb2.ListThreadsResponse(
            threads=[memory_convert.thread_to_proto(t) for t in page.threads],
            next_page_token=page.next_page_token,
        )

    async def UpdateThread(
        self, request: memory_pb2.UpdateThreadRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.UpdateThreadResponse:
        paths = list(request.update_mask.paths)
        unknown = [p for p in paths if p not in _UPDATABLE]
        if unknown:
            raise InvalidArgument.field(
                "update_mask", f"cannot update {', '.join(unknown)}; updatable: title, metadata"
            )
        if not paths:  # AIP-134: no mask means every field that is set
            if request.thread.title:
                paths.append("title")
            if request.thread.HasField("metadata"):
                paths.append("metadata")
            if not paths:
                raise InvalidArgument.field("update_mask", "names no field and thread sets none")
        update = ThreadUpdate(
            title=request.thread.title if "title" in paths else None,
            metadata=struct_to_dict(request.thread.metadata) if "metadata" in paths else None,
        )
        thread = await self.memory.update_thread(tenant(), request.thread.id, update)
        return memory_pb2.UpdateThreadResponse(thread=memory_convert.thread_to_proto(thread))

    async def DeleteThread(
        self, request: memory_pb2.DeleteThreadRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.DeleteThreadResponse:
        await self.memory.delete_thread(tenant(), request.thread_id)
        return memory_pb2.DeleteThreadResponse()

    async def AppendMessages(
        self, request: memory_pb2.AppendMessagesRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.AppendMessagesResponse:
        messages = message_convert.new_messages_from_proto(request.messages)
        tenant_id = tenant()
        stored = await self.memory.append_messages(tenant_id, request.thread_id, messages)
        await start_indexing(self.temporal, self.task_queue, tenant_id, request.thread_id, stored)
        response = memory_pb2.AppendMessagesResponse()
        for message in stored:
            message_convert.fill_message(response.messages.add(), message)
        return response

    async def ListMessages(
        self, request: memory_pb2.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ListMessagesResponse:
        page = await self.memory.list_messages(
            tenant(),
            request.thread_id,
            last_n=request.last_n,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        response = memory_pb2.ListMessagesResponse(next_page_token=page.next_page_token)
        for message in page.messages:
            message_convert.fill_message(response.messages.add(), message)
        return response

    async def SearchMessages(
        self, request: memory_pb2.SearchMessagesRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.SearchMessagesResponse:
        scope = _SCOPES.get(request.scope)
        if scope is None:
            raise InvalidArgument.field("scope", "must be THREAD or RESOURCE")
        query = RecallQuery(
            query=request.query,
            scope=scope,
            thread_id=request.thread_id,
            resource_id=request.resource_id,
            top_k=request.top_k or 5,
            message_range=request.message_range,
            min_score=request.min_score,
        )
        hits = await self.recall.search(tenant(), query)
        response = memory_pb2.SearchMessagesResponse()
        for hit in hits:
            out = response.hits.add(score=hit.score)
            message_convert.fill_message(out.message, hit.message)
            for neighbour in hit.context:
                message_convert.fill_message(out.context.add(), neighbour)
        return response

    async def GetWorkingMemory(
        self, request: memory_pb2.GetWorkingMemoryRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.GetWorkingMemoryResponse:
        memory = await self.working_memory.get(
            tenant(),
            _SCOPES.get(request.scope),
            thread_id=request.thread_id,
            resource_id=request.resource_id,
        )
        return memory_pb2.GetWorkingMemoryResponse(
            working_memory=memory_convert.working_memory_to_proto(memory)
        )

    async def UpdateWorkingMemory(
        self, request: memory_pb2.UpdateWorkingMemoryRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.UpdateWorkingMemoryResponse:
        given = request.working_memory
        scope = _SCOPES.get(given.scope)
        if scope is None:
            raise InvalidArgument.field("working_memory.scope", "must be THREAD or RESOURCE")
        memory = await self.working_memory.replace(
            tenant(),
            WorkingMemory(
                scope=scope,
                thread_id=given.thread_id,
                resource_id=given.resource_id,
                markdown=given.markdown,
                data=struct_to_dict(given.data) if given.HasField("data") else None,
                etag=given.etag,
            ),
        )
        return memory_pb2.UpdateWorkingMemoryResponse(
            working_memory=memory_convert.working_memory_to_proto(memory)
        )
