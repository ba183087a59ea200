"""Protobuf <-> domain conversion of memory.proto (threads, working memory); protobuf types
stop here."""

from __future__ import annotations

from loomwork.memory import models
from loomwork.messages import Thread
from protos.loomwork.v1 import memory_pb2
from server.servicers.well_known_convert import set_timestamp


def thread_to_proto(thread: Thread) -> memory_pb2.Thread:
    out = memory_pb2.Thread(
        id=thread.id,
        resource_id=thread.resource_id,
        title=thread.title,
        message_count=thread.message_count,
    )
    out.metadata.update(thread.metadata)
    set_timestamp(out.create_time, thread.create_time)
    set_timestamp(out.update_time, thread.update_time)
    return out


_SCOPE_TO_PROTO = {
    models.RecallScope.THREAD: memory_pb2.MEMORY_SCOPE_THREAD,
    models.RecallScope.RESOURCE: memory_pb2.MEMORY_SCOPE_RESOURCE,
}


def working_memory_to_proto(memory: models.WorkingMemory) -> memory_pb2.WorkingMemory:
    out = memory_pb2.WorkingMemory(
        scope=_SCOPE_TO_PROTO[memory.scope],
        thread_id=memory.thread_id,
        resource_id=memory.resource_id,
        markdown=memory.markdown,
        etag=memory.etag,
    )
    if memory.data is not None:
        out.data.update(memory.data)
    if memory.update_time is not None:
        set_timestamp(out.update_time, memory.update_time)
    return out
