"""Loomwork as an MCP server: the `mcp` SDK's own client (streamable HTTP) against /mcp on
the HTTP endpoint, with the tenants' bearer tokens. Real Postgres, Redis, Temporal, worker
and servicers; the only seam is the scripted model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx2
import pytest
from mcp import Client
from mcp.client.client import ConnectMode
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent

from loomwork.testing import Failure, ScriptedModelServer, Turn
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, rag_pb2, rag_pb2_grpc, run_pb2
from server.transport.http import build_http_app
from tests.support import auth, serving, unique

ANIMALS = [
    "Cats are small domesticated carnivores that like to sleep in the sun.",
    "Dolphins are marine mammals known for their intelligence and playful behaviour.",
    "Honeybees live in colonies and make honey from the nectar of flowers.",
]
TOOLS = {"run_agent", "query_index", "answer_from_index", "start_workflow", "get_run"}


@pytest.fixture(scope="module")
async def mcp_url(runtime, worker) -> AsyncIterator[str]:
    async with serving(build_http_app(runtime)) as url:
        yield f"{url}/mcp"


@pytest.fixture(scope="module")
def rag(channel: grpc.aio.Channel) -> rag_pb2_grpc.RagServiceStub:
    return rag_pb2_grpc.RagServiceStub(channel)


@asynccontextmanager
async def mcp_client(url: str, token: str, mode: ConnectMode = "auto") -> AsyncIterator[Client]:
    """The SDK's client on /mcp, sending `token` as the bearer. `mode`: "auto" speaks the
    newest protocol (2026-07-28, a request per POST), "legacy" the initialize handshake
    that most deployed clients use."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


def text_of(result: CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A call that must succeed: its structured result."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def tool_error(client: Client, tool: str, **arguments: Any) -> str:
    """A call that must fail as a tool error: the text the model reads."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result
    return text_of(result)


async def schemas(client: Client) -> dict[str, dict[str, Any]]:
    """Each tool's input schema by tool name."""
    listed = await client.list_tools()
    return {tool.name: tool.input_schema for tool in listed.tools}


async def create_agent(agents: agent_pb2_grpc.AgentServiceStub, token: str) -> str:
    name = unique("mcp-agent")
    await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(
                name=name, description="Answers in one line.", instructions="Be brief."
            )
        ),
        metadata=auth(token),
    )
    return name


async def create_index(rag: rag_pb2_grpc.RagServiceStub, token: str) -> str:
    """A new index of the tenant holding ANIMALS (documents a0..a2), ingested."""
    name = unique("mcp_idx").replace("-", "_")
    await rag.CreateIndex(
        rag_pb2.CreateIndexRequest(index=rag_pb2.Index(name=name, description="Animal facts.")),
        metadata=auth(token),
    )
    response = await rag.IngestDocuments(
        rag_pb2.IngestDocumentsRequest(
            index_name=name,
            documents=[
                rag_pb2.DocumentInput(document_id=f"a{i}", text=text)
                for i, text in enumerate(ANIMALS)
            ],
        ),
        metadata=auth(token),
    )

    async def finished() -> None:
        async for event in rag.WatchIngestion(
            rag_pb2.WatchIngestionRequest(ingestion_id=response.ingestion.id),
            metadata=auth(token),
        ):
            if event.event.HasField("finished"):
                return

    await asyncio.wait_for(finished(), 120)
    return name


async def test_lists_tools_with_the_tenants_agents_indexes_and_workflows(
    mcp_url, agents, rag, token
) -> None:
    agent = await create_agent(agents, token)
    index = await create_index(rag, token)
    async with mcp_client(mcp_url, token) as client:
        assert client.server_info is not None and client.server_info.name == "loomwork"
        listed = await schemas(client)
    assert set(listed) == TOOLS
    choice = listed["run_agent"]["properties"]["agent_name"]
    assert {"assistant", agent} <= set(choice["enum"])
    assert f"- {agent}: Answers in one line." in choice["description"]
    assert index in listed["query_index"]["properties"]["index_name"]["enum"]
    assert index in listed["answer_from_index"]["properties"]["index_name"]["enum"]
    workflow = listed["start_workflow"]["properties"]["workflow_id"]
    assert "ticket-triage" in workflow["enum"]
    assert '"subject"' in workflow["description"]  # its input schema, for the model
    assert listed["run_agent"]["required"] == ["agent_name", "prompt"]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_runs_an_agent_and_gets_the_run(
    mcp_url, agents, token, model: ScriptedModelServer, mode: ConnectMode
) -> None:
    model.push(Turn(text="Hello from the scripted model."))
    async with mcp_client(mcp_url, token, mode) as client:
        assert (client.protocol_version == "2026-07-28") == (mode == "auto")
        await client.list_tools()  # the client then checks results against output schemas
        run = await call(client, "run_agent", agent_name="assistant", prompt="Say hello.")
        assert run["kind"] == "agent" and run["status"] == "SUCCEEDED"
        assert run["text"] == "Hello from the scripted model."
        assert model.requests[-1].messages[-1] == {"role": "user", "content": "Say hello."}
        again = await call(client, "get_run", run_id=run["run_id"])
    assert again == run
    # The same run as AgentService knows it: the MCP call went through the same starter.
    grpc_run = (
        await agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=run["run_id"]), metadata=auth(token)
        )
    ).run
    assert grpc_run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert grpc_run.output.text == run["text"]


async def test_run_agent_keeps_the_conversation_in_a_thread(
    mcp_url, token, model: ScriptedModelServer
) -> None:
    thread_id = unique("mcp-thread")
    model.push(Turn(text="Noted: blue."), Turn(text="Blue."))
    async with mcp_client(mcp_url, token) as client:
        first = await call(
            client, "run_agent", agent_name="assistant", prompt="I like blue.", thread_id=thread_id
        )
        second = await call(
            client, "run_agent", agent_name="assistant", prompt="My colour?", thread_id=thread_id
        )
    assert first["thread_id"] == second["thread_id"] == thread_id and second["text"] == "Blue."
    seen = [m.get("content") for m in model.requests[-1].messages]
    assert "I like blue." in seen and "Noted: blue." in seen


async def test_a_failed_run_is_an_error_result_carrying_the_run(
    mcp_url, token, model: ScriptedModelServer
) -> None:
    model.set_script([Failure(status=400, message="context length exceeded")])
    async with mcp_client(mcp_url, token) as client:
        await client.list_tools()
        result = await client.call_tool("run_agent", {"agent_name": "assistant", "prompt": "Hi."})
    assert result.is_error and "context length exceeded" in text_of(result)
    run = result.structured_content
    assert run is not None and run["status"] == "FAILED"
    assert run["error"]["code"] == "FAILED_PRECONDITION"
    assert run["error"]["reason"] == "MODEL_REQUEST_REJECTED"


async def test_queries_and_answers_from_an_index(
    mcp_url, rag, token, model: ScriptedModelServer
) -> None:
    index = await create_index(rag, token)
    async with mcp_client(mcp_url, token) as client:
        await client.list_tools()
        found = await call(
            client, "query_index", index_name=index, query="Which animal lives in the sea?", top_k=2
        )
        results = found["results"]
        assert len(results) == 2 and results[0]["document_id"] == "a1"
        assert results[0]["text"] == ANIMALS[1] and results[0]["rank"] == 1
        assert 0 < results[1]["score"] <= results[0]["score"] <= 1

        model.push(Turn(text="Dolphins live in the sea [1]."))
        answer = await call(
            client, "answer_from_index", index_name=index, query="Who lives in the sea?"
        )
    assert answer["status"] == "SUCCEEDED" and answer["text"] == "Dolphins live in the sea [1]."
    assert [(c["number"], c["document_id"]) for c in answer["citations"]] == [(1, "a1")]
    got = await rag.GetAnswer(
        rag_pb2.GetAnswerRequest(answer_id=answer["answer_id"]), metadata=auth(token)
    )
    assert got.answer.text == answer["text"]


async def test_starts_a_workflow_and_gets_its_run(mcp_url, token) -> None:
    async with mcp_client(mcp_url, token) as client:
        await client.list_tools()
        started = await call(
            client,
            "start_workflow",
            workflow_id="ticket-triage",
            input={"subject": "Refund", "body": "Please refund the invoice."},
        )
        assert started["kind"] == "workflow" and started["workflow_id"] == "ticket-triage"
        assert started["run_id"].startswith("wfr_")
        for _ in range(400):
            run = await call(client, "get_run", run_id=started["run_id"])
            if run["status"] not in ("PENDING", "RUNNING"):
                break
            await asyncio.sleep(0.05)
        assert run["status"] == "SUCCEEDED", run
        assert run["output"]["queue"] == "billing"
        assert await call(client, "get_run", run_id=started["run_id"], kind="workflow") == run


async def test_a_missing_or_wrong_token_is_refused(mcp_url) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"},
        },
    }
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=30) as http:
        for authorization in (None, "Bearer nope", "Basic dC1hbHBoYQ=="):
            sent = headers | ({"Authorization": authorization} if authorization else {})
            response = await http.post(mcp_url, json=initialize, headers=sent)
            assert response.status_code == 401, authorization
            assert response.headers["www-authenticate"].startswith("Bearer")
        response = await http.post(
            mcp_url, json=initialize, headers=headers | {"Authorization": "Bearer t-alpha"}
        )
        assert response.status_code == 200
    # The SDK's client fails to connect (its task groups may wrap the error).
    with pytest.raises(BaseException) as refused:
        async with mcp_client(mcp_url, "nope") as client:
            await client.list_tools()
    assert refused.errisinstance(MCPError) or refused.group_contains(MCPError, depth=None)


async def test_a_tenant_sees_and_calls_only_its_own_agents_indexes_and_runs(
    mcp_url, agents, rag, token, other_token, model: ScriptedModelServer
) -> None:
    theirs = await create_agent(agents, other_token)
    their_index = await create_index(rag, other_token)
    model.push(Turn(text="Only for beta."))
    async with mcp_client(mcp_url, other_token) as client:
        listed = await schemas(client)
        assert theirs in listed["run_agent"]["properties"]["agent_name"]["enum"]
        their_run = await call(client, "run_agent", agent_name=theirs, prompt="Hi.")
    async with mcp_client(mcp_url, token) as client:
        listed = await schemas(client)
        assert theirs not in listed["run_agent"]["properties"]["agent_name"]["enum"]
        indexes = listed["query_index"]["properties"]["index_name"]
        assert their_index not in indexes.get("enum", []) and their_index not in str(indexes)
        refused = await tool_error(client, "run_agent", agent_name=theirs, prompt="Hi.")
        assert refused.startswith("NOT_FOUND") and theirs in refused
        refused = await tool_error(client, "query_index", index_name=their_index, query="cats")
        assert refused.startswith("NOT_FOUND")
        refused = await tool_error(client, "get_run", run_id=their_run["run_id"])
        assert refused.startswith("NOT_FOUND")


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        ("run_agent", {"agent_name": "assistant"}, "prompt"),
        ("run_agent", {"agent_name": "assistant", "prompt": ""}, "prompt"),
        ("run_agent", {"agent_name": "", "prompt": "Hi."}, "agent_name"),
        ("run_agent", {"agent_name": "assistant", "prompt": "Hi", "thread_id": "a b"}, "thread_id"),
        ("run_agent", {"agent_name": "assistant", "prompt": "Hi", "temperature": 1}, "temperature"),
        ("query_index", {"index_name": "animals", "query": "cats", "top_k": 0}, "top_k"),
        ("query_index", {"index_name": "animals", "query": " "}, "query"),
        ("answer_from_index", {"index_name": "", "query": "Why?"}, "index_name"),
        ("start_workflow", {"workflow_id": "ticket-triage", "input": {}}, "input.subject"),
        ("start_workflow", {"workflow_id": "ticket-triage", "input": "x"}, "input"),
        ("get_run", {"run_id": ""}, "run_id"),
        ("get_run", {"run_id": "wfr_x", "kind": "step"}, "kind"),
    ],
)
async def test_a_bad_argument_is_a_tool_error_naming_it(
    mcp_url, token, tool: str, arguments: dict[str, Any], field: str
) -> None:
    async with mcp_client(mcp_url, token) as client:
        text = await tool_error(client, tool, **arguments)
    assert text.startswith("INVALID_ARGUMENT: "), text
    problems = text.removeprefix("INVALID_ARGUMENT: ").split("; ")
    assert field in [problem.split(": ")[0] for problem in problems], text


async def test_an_unknown_tool_is_a_protocol_error(mcp_url, token) -> None:
    async with mcp_client(mcp_url, token) as client:
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("delete_everything", {})
    assert "delete_everything" in unknown.value.message
