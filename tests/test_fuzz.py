"""Every method of every service the server offers, fuzzed with requests built from the
message descriptors (tests/fuzz_strategies.py): no call may answer INTERNAL or UNKNOWN;
afterwards the server is healthy and what another tenant stored before is unchanged.

The methods come from the server's reflection, so a new RPC is fuzzed without editing this
file. LOOMWORK_FUZZ_EXAMPLES sets the examples per method (default 5: a few hundred in all,
derandomized so that CI sees the same ones every run); a longer run:
`LOOMWORK_FUZZ_EXAMPLES=100 .venv/bin/python -m pytest tests/test_fuzz.py -q -s`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.loomwork.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    integration_pb2,
    integration_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    message_pb2,
    rag_pb2,
    rag_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from tests.fuzz_strategies import MessageStrategies
from tests.support import auth, unique

EXAMPLES = int(os.environ.get("LOOMWORK_FUZZ_EXAMPLES", "5"))
CALL_TIMEOUT = 3.0  # seconds; DEADLINE_EXCEEDED is a clean answer
STREAM_READS = 3  # responses read from a server stream
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
IGNORED_SERVICES = ("grpc.health.", "grpc.reflection.")
STATUSES: Counter[str] = Counter()  # (method, status) of every call, for the summary


async def _served_methods(channel: grpc.aio.Channel) -> list[MethodDescriptor]:
    """Every method of every service the server lists through reflection."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: list[str] = []
    async for response in stub.ServerReflectionInfo(ask()):
        names = [s.name for s in response.list_services_response.service]
        break
    pool = descriptor_pool.Default()
    return [
        method
        for name in sorted(names)
        if not name.startswith(IGNORED_SERVICES)
        for method in pool.FindServiceByName(name).methods
    ]


def _all_methods() -> list[MethodDescriptor]:
    """The methods of the protos' services, known at collection time (the session's server
    serves them; `test_every_served_method_is_fuzzed` checks that against reflection)."""
    files = (agent_pb2, integration_pb2, memory_pb2, rag_pb2, workflow_pb2)
    return [
        method
        for module in files
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


METHODS = _all_methods()


@dataclass
class Seeded:
    """What both tenants stored before fuzzing: ids for the fuzzer to try, and the other
    tenant's data as read back, to compare afterwards."""

    pool: list[str]
    other_ids: dict[str, str]
    other_reads: dict[str, bytes]


async def _other_tenant_reads(
    channel: grpc.aio.Channel, other_token: str, ids: dict[str, str]
) -> dict[str, bytes]:
    """The other tenant's data, read through its own RPCs, serialized deterministically."""
    md = auth(other_token)
    memory = memory_pb2_grpc.MemoryServiceStub(channel)
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    rag = rag_pb2_grpc.RagServiceStub(channel)
    integrations = integration_pb2_grpc.IntegrationServiceStub(channel)
    reads = {
        "thread": await memory.GetThread(
            memory_pb2.GetThreadRequest(thread_id=ids["thread"]), metadata=md
        ),
        "messages": await memory.ListMessages(
            memory_pb2.ListMessagesRequest(thread_id=ids["thread"]), metadata=md
        ),
        "threads": await memory.ListThreads(memory_pb2.ListThreadsRequest(), metadata=md),
        "working_memory": await memory.GetWorkingMemory(
            memory_pb2.GetWorkingMemoryRequest(
                scope=memory_pb2.MEMORY_SCOPE_THREAD, thread_id=ids["thread"]
            ),
            metadata=md,
        ),
        "agent": await agents.GetAgent(
            agent_pb2.GetAgentRequest(agent_name=ids["agent"]), metadata=md
        ),
        "agents": await agents.ListAgents(agent_pb2.ListAgentsRequest(), metadata=md),
        "index": await rag.GetIndex(rag_pb2.GetIndexRequest(index_name=ids["index"]), metadata=md),
        "documents": await rag.ListDocuments(
            rag_pb2.ListDocumentsRequest(index_name=ids["index"]), metadata=md
        ),
        "webhook_sources": await integrations.ListWebhookSources(
            integration_pb2.ListWebhookSourcesRequest(), metadata=md
        ),
        "oauth_providers": await integrations.ListOAuthProviders(
            integration_pb2.ListOAuthProvidersRequest(), metadata=md
        ),
    }
    return {name: r.SerializeToString(deterministic=True) for name, r in reads.items()}


async def _seed(channel: grpc.aio.Channel, token: str) -> dict[str, str]:
    """A thread with messages and working memory, an agent, an index with a document, a
    webhook source and an OAuth provider, for the tenant of `token`: their ids."""
    md = auth(token)
    memory = memory_pb2_grpc.MemoryServiceStub(channel)
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    rag = rag_pb2_grpc.RagServiceStub(channel)
    integrations = integration_pb2_grpc.IntegrationServiceStub(channel)
    ids = {"thread": unique("fuzz-thread"), "agent": unique("fuzzagent"), "index": unique("fz")}
    thread = memory_pb2.Thread(resource_id=unique("fuzz-user"), title="kept")
    thread.metadata.update({"keep": [1, "two"]})
    await memory.CreateThread(
        memory_pb2.CreateThreadRequest(thread_id=ids["thread"], thread=thread), metadata=md
    )
    ids["resource"] = thread.resource_id
    text = message_pb2.Part(text=message_pb2.TextPart(text="hello there"))
    await memory.AppendMessages(
        memory_pb2.AppendMessagesRequest(
            thread_id=ids["thread"],
            messages=[
                message_pb2.Message(role=message_pb2.ROLE_USER, parts=[text]),
                message_pb2.Message(role=message_pb2.ROLE_ASSISTANT, parts=[text]),
            ],
        ),
        metadata=md,
    )
    await memory.UpdateWorkingMemory(
        memory_pb2.UpdateWorkingMemoryRequest(
            working_memory=memory_pb2.WorkingMemory(
                scope=memory_pb2.MEMORY_SCOPE_THREAD, thread_id=ids["thread"], markdown="# kept"
            )
        ),
        metadata=md,
    )
    await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(name=ids["agent"], instructions="Be brief.")
        ),
        metadata=md,
    )
    await rag.CreateIndex(
        rag_pb2.CreateIndexRequest(index=rag_pb2.Index(name=ids["index"])), metadata=md
    )
    ingestion = (
        await rag.IngestDocuments(
            rag_pb2.IngestDocumentsRequest(
                index_name=ids["index"],
                documents=[rag_pb2.DocumentInput(document_id="doc-1", text="Kept text.")],
            ),
            metadata=md,
        )
    ).ingestion
    ids["ingestion"] = ingestion.id
    async for event in rag.WatchIngestion(
        rag_pb2.WatchIngestionRequest(ingestion_id=ingestion.id), metadata=md, timeout=60
    ):
        if event.event.HasField("finished"):
            break
    source = (
        await integrations.CreateWebhookSource(
            integration_pb2.CreateWebhookSourceRequest(
                webhook_source=integration_pb2.WebhookSource(display_name="kept", secret="s" * 32)
            ),
            metadata=md,
        )
    ).webhook_source
    ids["webhook_source"] = source.id
    ids["oauth_provider"] = unique("fuzz-oauth")
    await integrations.CreateOAuthProvider(
        integration_pb2.CreateOAuthProviderRequest(
            oauth_provider=integration_pb2.OAuthProvider(
                id=ids["oauth_provider"],
                authorize_url="http://127.0.0.1:9/authorize",
                token_url="http://127.0.0.1:9/token",
                client_id="kept-client",
                client_secret="kept-secret",
            )
        ),
        metadata=md,
    )
    return ids


@pytest.fixture(scope="module")
async def seeded(channel: grpc.aio.Channel, token: str, other_token: str) -> Seeded:
    mine = await _seed(channel, token)
    others = await _seed(channel, other_token)
    workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
    listed = await workflows.ListWorkflows(
        workflow_pb2.ListWorkflowsRequest(), metadata=auth(token)
    )
    pool = [
        *mine.values(),
        *others.values(),
        "assistant",
        "doc-1",
        *(w.id for w in listed.workflows),
    ]
    reads = await _other_tenant_reads(channel, other_token, others)
    return Seeded(pool=pool, other_ids=others, other_reads=reads)


async def _call(channel: grpc.aio.Channel, method: MethodDescriptor, requests, token: str) -> str:
    """Make the call with `requests` (one, or a list for a client stream): its status."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    serializer = lambda m: m.SerializeToString()  # noqa: E731
    deserializer = GetMessageClass(method.output_type).FromString
    md = auth(token)
    try:
        if method.client_streaming:
            call = channel.stream_unary(path, serializer, deserializer)

            async def stream() -> AsyncIterator[Message]:
                for request in requests:
                    yield request

            await call(stream(), metadata=md, timeout=CALL_TIMEOUT)
        elif method.server_streaming:
            responses = channel.unary_stream(path, serializer, deserializer)(
                requests, metadata=md, timeout=CALL_TIMEOUT
            )
            read = 0
            async for _ in responses:
                read += 1
                if read >= STREAM_READS:
                    responses.cancel()
                    break
        else:
            await channel.unary_unary(path, serializer, deserializer)(
                requests, metadata=md, timeout=CALL_TIMEOUT
            )
    except grpc.aio.AioRpcError as error:
        assert error.code() not in BAD_CODES, (
            f"{method.full_name} answered {error.code().name}: {error.details()}\n"
            f"request: {requests}"
        )
        return error.code().name
    return "OK"


def _requests(method: MethodDescriptor, pool: list[str]) -> st.SearchStrategy[Any]:
    strategies = MessageStrategies(pool)
    one = strategies.for_message(method.input_type)
    return st.lists(one, min_size=1, max_size=3) if method.client_streaming else one


@pytest.mark.parametrize("method", METHODS, ids=[m.full_name for m in METHODS])
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
async def test_fuzzed_requests_get_a_clean_status(
    method: MethodDescriptor,
    channel: grpc.aio.Channel,
    token: str,
    seeded: Seeded,
    data: st.DataObject,
) -> None:
    requests = data.draw(_requests(method, seeded.pool), label="requests")
    STATUSES[f"{method.full_name} {await _call(channel, method, requests, token)}"] += 1


async def test_every_served_method_is_fuzzed(channel: grpc.aio.Channel) -> None:
    served = {m.full_name for m in await _served_methods(channel)}
    assert served == {m.full_name for m in METHODS}


async def test_after_fuzzing_the_server_is_healthy_and_the_other_tenant_unchanged(
    channel: grpc.aio.Channel, other_token: str, seeded: Seeded
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 10
    while True:
        status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status
        if status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert await _other_tenant_reads(channel, other_token, seeded.other_ids) == seeded.other_reads
    if STATUSES:
        print("\nfuzz statuses:", sum(STATUSES.values()), "calls")
        for key, count in sorted(STATUSES.items()):
            print(f"  {key}: {count}")
