"""What the fuzz test stores before fuzzing, through the RPCs: for each tenant a thread
with messages and working memory, an agent, an index with a document, a webhook source,
an OAuth provider and a finished agent run; for the fuzzing tenant also an agent run
waiting for approval, a suspended workflow run and an answer. Ids are returned by kind
(the kinds of tests/fuzz_strategies.field_kind), for the fuzzer to try; the other tenant's
data is read back the same way before and after, and must not change."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from loomwork.testing import ChatRequest, ScriptedModelServer, ScriptedToolCall, Turn, echo
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
    run_pb2,
    workflow_pb2,
    workflow_pb2_grpc,
)
from tests.support import auth, unique

Ids = dict[str, str]
_EMAIL = {"to": "ada@example.com", "subject": "Hi", "body": "Hello Ada"}
_EXPENSE = {"employee": "ada", "amount": 12.5, "reason": "train"}


class Stubs:
    """Every service's stub on one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.memory = memory_pb2_grpc.MemoryServiceStub(channel)
        self.agents = agent_pb2_grpc.AgentServiceStub(channel)
        self.rag = rag_pb2_grpc.RagServiceStub(channel)
        self.workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
        self.integrations = integration_pb2_grpc.IntegrationServiceStub(channel)


async def seed_stored(stubs: Stubs, token: str) -> Ids:
    """The tenant's stored data (see the module docstring): its ids by kind."""
    md = auth(token)
    ids = {"thread": unique("fuzz-thread"), "agent": unique("fuzzagent"), "index": unique("fz")}
    thread = memory_pb2.Thread(resource_id=unique("fuzz-user"), title="kept")
    thread.metadata.update({"keep": [1, "two"]})
    await stubs.memory.CreateThread(
        memory_pb2.CreateThreadRequest(thread_id=ids["thread"], thread=thread), metadata=md
    )
    ids["resource"] = thread.resource_id
    text = message_pb2.Part(text=message_pb2.TextPart(text="hello there"))
    stored = await stubs.memory.AppendMessages(
        memory_pb2.AppendMessagesRequest(
            thread_id=ids["thread"],
            messages=[
                message_pb2.Message(role=message_pb2.ROLE_USER, parts=[text]),
                message_pb2.Message(role=message_pb2.ROLE_ASSISTANT, parts=[text]),
            ],
        ),
        metadata=md,
    )
    ids["message"] = stored.messages[0].id
    await stubs.memory.UpdateWorkingMemory(
        memory_pb2.UpdateWorkingMemoryRequest(
            working_memory=memory_pb2.WorkingMemory(
                scope=memory_pb2.MEMORY_SCOPE_THREAD, thread_id=ids["thread"], markdown="# kept"
            )
        ),
        metadata=md,
    )
    await stubs.agents.CreateAgent(
        agent_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(name=ids["agent"], instructions="Be brief.")
        ),
        metadata=md,
    )
    await stubs.rag.CreateIndex(
        rag_pb2.CreateIndexRequest(index=rag_pb2.Index(name=ids["index"])), metadata=md
    )
    ingestion = (
        await stubs.rag.IngestDocuments(
            rag_pb2.IngestDocumentsRequest(
                index_name=ids["index"],
                documents=[rag_pb2.DocumentInput(document_id="doc-1", text="Kept text.")],
            ),
            metadata=md,
        )
    ).ingestion
    ids["ingestion"], ids["document"] = ingestion.id, "doc-1"
    async for event in stubs.rag.WatchIngestion(
        rag_pb2.WatchIngestionRequest(ingestion_id=ingestion.id), metadata=md, timeout=60
    ):
        if event.event.HasField("finished"):
            break
    source = await stubs.integrations.CreateWebhookSource(
        integration_pb2.CreateWebhookSourceRequest(
            webhook_source=integration_pb2.WebhookSource(display_name="kept", secret="s" * 32)
        ),
        metadata=md,
    )
    ids["webhooksource"] = source.webhook_source.id
    ids["oauthprovider"] = unique("fuzz-oauth")
    await stubs.integrations.CreateOAuthProvider(
        integration_pb2.CreateOAuthProviderRequest(
            oauth_provider=integration_pb2.OAuthProvider(
                id=ids["oauthprovider"],
                authorize_url="http://127.0.0.1:9/authorize",
                token_url="http://127.0.0.1:9/token",
                client_id="kept-client",
                client_secret="kept-secret",
            )
        ),
        metadata=md,
    )
    finished = await stubs.agents.Generate(
        agent_pb2.GenerateRequest(agent_name="assistant", prompt="hello"), metadata=md
    )
    ids["run"] = finished.run.id
    return ids


async def seed_runs(
    stubs: Stubs, token: str, model: ScriptedModelServer, index: str
) -> list[tuple[str, str]]:
    """Runs in flight for the fuzzing tenant: an agent run waiting for approval, a workflow
    run suspended at its `approve` step, an answer; and the run ids' kin (tool call, step)."""
    md = auth(token)
    first = [Turn(tool_calls=[ScriptedToolCall("send_email", _EMAIL, id="call_mail")])]

    def script(request: ChatRequest) -> Turn:
        return first.pop() if first else echo(request)

    model.set_script(script)
    waiting = unique("fuzz-waiting")
    await stubs.agents.Generate(
        agent_pb2.GenerateRequest(agent_name="assistant", prompt="mail", client_run_id=waiting),
        metadata=md,
    )
    for _ in range(200):
        run = await stubs.agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=waiting), metadata=md
        )
        if run.run.status == run_pb2.RUN_STATUS_WAITING:
            break
        await asyncio.sleep(0.05)
    suspended = await stubs.workflows.StartRun(
        workflow_pb2.WorkflowServiceStartRunRequest(
            workflow_id="expense-approval", input=_struct(_EXPENSE)
        ),
        metadata=md,
    )
    answer = ""
    async for response in stubs.rag.Answer(
        rag_pb2.AnswerRequest(index_name=index, query="what is kept?"), metadata=md, timeout=30
    ):
        answer = response.event.answer_id
        break
    return [
        ("run", waiting),
        ("run", suspended.run.id),
        ("toolcall", "call_mail"),
        ("step", "approve"),
        ("answer", answer),
    ]


def _struct(data: dict[str, object]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out


async def other_tenant_reads(stubs: Stubs, token: str, ids: Ids) -> dict[str, bytes]:
    """The tenant's data seeded by `seed_stored`, read through its RPCs, serialized."""
    md = auth(token)
    thread = ids["thread"]
    reads: dict[str, Message] = {
        "thread": await stubs.memory.GetThread(
            memory_pb2.GetThreadRequest(thread_id=thread), metadata=md
        ),
        "messages": await stubs.memory.ListMessages(
            memory_pb2.ListMessagesRequest(thread_id=thread), metadata=md
        ),
        "threads": await stubs.memory.ListThreads(memory_pb2.ListThreadsRequest(), metadata=md),
        "working_memory": await stubs.memory.GetWorkingMemory(
            memory_pb2.GetWorkingMemoryRequest(
                scope=memory_pb2.MEMORY_SCOPE_THREAD, thread_id=thread
            ),
            metadata=md,
        ),
        "agent": await stubs.agents.GetAgent(
            agent_pb2.GetAgentRequest(agent_name=ids["agent"]), metadata=md
        ),
        "agents": await stubs.agents.ListAgents(agent_pb2.ListAgentsRequest(), metadata=md),
        "run": await stubs.agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=ids["run"]), metadata=md
        ),
        "index": await stubs.rag.GetIndex(
            rag_pb2.GetIndexRequest(index_name=ids["index"]), metadata=md
        ),
        "documents": await stubs.rag.ListDocuments(
            rag_pb2.ListDocumentsRequest(index_name=ids["index"]), metadata=md
        ),
        "webhook_sources": await stubs.integrations.ListWebhookSources(
            integration_pb2.ListWebhookSourcesRequest(), metadata=md
        ),
        "oauth_providers": await stubs.integrations.ListOAuthProviders(
            integration_pb2.ListOAuthProvidersRequest(), metadata=md
        ),
    }
    return {name: r.SerializeToString(deterministic=True) for name, r in reads.items()}
