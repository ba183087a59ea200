"""Bad input of every kind a fuzzer found crashing the server (NUL characters reaching
Postgres, NaN and ±Infinity in JSON, enum numbers the proto does not define, NUL in text
that goes to jsonb), and oversize or too deep input: each is INVALID_ARGUMENT naming the
field, from the one validation interceptor (server/transport/validation.py). Then the
other bugs tests/test_fuzz.py found, each through the RPC that showed it."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2

from protos.loomwork.v1 import (
    agent_pb2,
    integration_pb2,
    memory_pb2,
    message_pb2,
    rag_pb2,
    workflow_pb2,
)
from server.transport.boundary import MAX_JSON_DEPTH, boundary_violations
from server.transport.validation import RequestValidator
from tests.fuzz_seeds import Stubs
from tests.support import auth, field_violations, unique

NUL = "must not contain NUL characters (\\u0000)"
NOT_FINITE = "must be a finite number (not NaN or Infinity)"


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out


def _call(stubs: Stubs, method: str, request: Any, token: str):  # type: ignore[no-untyped-def]
    service = {
        "memory": stubs.memory,
        "agents": stubs.agents,
        "rag": stubs.rag,
        "workflows": stubs.workflows,
        "integrations": stubs.integrations,
    }
    group, name = method.split(".")
    return getattr(service[group], name)(request, metadata=auth(token), timeout=10)


async def _violations(stubs: Stubs, method: str, request: Any, token: str) -> dict[str, str]:
    call = _call(stubs, method, request, token)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return field_violations(err.value)


@pytest.fixture(scope="module")
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


def _text_message(text: str) -> message_pb2.Message:
    return message_pb2.Message(
        role=message_pb2.ROLE_USER, parts=[message_pb2.Part(text=message_pb2.TextPart(text=text))]
    )


def _tool_call(arguments: dict[str, Any]) -> message_pb2.Message:
    call = message_pb2.ToolCallPart(
        tool_call_id="c1", tool_name="add", arguments=_struct(arguments)
    )
    return message_pb2.Message(
        role=message_pb2.ROLE_ASSISTANT, parts=[message_pb2.Part(tool_call=call)]
    )


def _tool_result(result: Any) -> message_pb2.Message:
    part = message_pb2.ToolResultPart(tool_call_id="c1", tool_name="add")
    part.result.CopyFrom(_struct({"v": result}).fields["v"])
    return message_pb2.Message(
        role=message_pb2.ROLE_TOOL, parts=[message_pb2.Part(tool_result=part)]
    )


# (RPC, request, field named, description) for NUL characters in strings that went to
# Postgres text columns (ids, names, titles, scopes, client ids) before any check.
NUL_IN_TEXT = [
    ("agents.GetAgent", agent_pb2.GetAgentRequest(agent_name="calc\x00"), "agent_name"),
    ("agents.DeleteAgent", agent_pb2.DeleteAgentRequest(agent_name="\x00"), "agent_name"),
    (
        "agents.CreateAgent",
        agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(name="n", instructions="a\x00b")),
        "agent.instructions",
    ),
    (
        "memory.CreateThread",
        memory_pb2.CreateThreadRequest(thread=memory_pb2.Thread(title="a\x00b")),
        "thread.title",
    ),
    (
        "memory.AppendMessages",
        memory_pb2.AppendMessagesRequest(thread_id="t", messages=[_text_message("hi\x00")]),
        "messages[0].parts[0].text.text",
    ),
    (
        "integrations.GetWebhookSource",
        integration_pb2.GetWebhookSourceRequest(webhook_source_id="whs_\x00"),
        "webhook_source_id",
    ),
    (
        "integrations.CreateOAuthProvider",
        integration_pb2.CreateOAuthProviderRequest(
            oauth_provider=integration_pb2.OAuthProvider(id="gh", client_id="client\x00")
        ),
        "oauth_provider.client_id",
    ),
    (
        "integrations.StartAuthorization",
        integration_pb2.StartAuthorizationRequest(oauth_provider_id="gh", scopes=["ok", "r\x00"]),
        "scopes[1]",
    ),
    (
        "integrations.GetConnection",
        integration_pb2.GetConnectionRequest(connection_id="con_\x00"),
        "connection_id",
    ),
    ("rag.GetIngestion", rag_pb2.GetIngestionRequest(ingestion_id="ing\x00"), "ingestion_id"),
    ("rag.WatchAnswer", rag_pb2.WatchAnswerRequest(answer_id="ans\x00"), "answer_id"),
    (
        "rag.DeleteDocument",
        rag_pb2.DeleteDocumentRequest(index_name="idx", document_id="d\x00"),
        "document_id",
    ),
    (
        "workflows.StartRun",
        workflow_pb2.WorkflowServiceStartRunRequest(
            workflow_id="order-pipeline", client_run_id="r\x00"
        ),
        "client_run_id",
    ),
]


def param_id(value: object) -> str:
    """A test id that is the same in every process (requests hold random names)."""
    return value[:40] if isinstance(value, str) else type(value).__name__


@pytest.mark.parametrize(("method", "request_", "field"), NUL_IN_TEXT, ids=param_id)
async def test_nul_in_a_string_field_is_invalid_argument_naming_it(
    stubs, token, method, request_, field
) -> None:
    assert (await _violations(stubs, method, request_, token)).get(field) == NUL


# NaN and ±Infinity inside google.protobuf.Struct / Value ("Fail to serialize Infinity").
NOT_FINITE_IN_JSON = [
    (
        "memory.UpdateThread",
        memory_pb2.UpdateThreadRequest(
            thread=memory_pb2.Thread(id="t", metadata=_struct({"score": math.inf}))
        ),
        "thread.metadata.score",
    ),
    (
        "memory.AppendMessages",
        memory_pb2.AppendMessagesRequest(
            thread_id="t", messages=[_tool_call({"numbers": [1, math.nan]})]
        ),
        "messages[0].parts[0].tool_call.arguments.numbers[1]",
    ),
    (
        "memory.AppendMessages",
        memory_pb2.AppendMessagesRequest(thread_id="t", messages=[_tool_result(-math.inf)]),
        "messages[0].parts[0].tool_result.result",
    ),
    (
        "memory.UpdateWorkingMemory",
        memory_pb2.UpdateWorkingMemoryRequest(
            working_memory=memory_pb2.WorkingMemory(
                scope=memory_pb2.MEMORY_SCOPE_RESOURCE,
                resource_id="u",
                data=_struct({"profile": {"age": math.nan}}),
            )
        ),
        "working_memory.data.profile.age",
    ),
    (
        "agents.ResumeRun",
        agent_pb2.AgentServiceResumeRunRequest(
            run_id="r",
            decisions=[
                agent_pb2.ApprovalDecision(
                    tool_call_id="c1",
                    approve=agent_pb2.ToolCallApproval(edited_arguments=_struct({"a": math.inf})),
                )
            ],
        ),
        "decisions[0].approve.edited_arguments.a",
    ),
    (
        "agents.Generate",
        agent_pb2.GenerateRequest(
            agent_name="assistant", prompt="hi", metadata=_struct({"weird key": math.nan})
        ),
        'metadata["weird key"]',
    ),
]


@pytest.mark.parametrize(("method", "request_", "field"), NOT_FINITE_IN_JSON, ids=param_id)
async def test_non_finite_json_number_is_invalid_argument_naming_it(
    stubs, token, method, request_, field
) -> None:
    assert (await _violations(stubs, method, request_, token)).get(field) == NOT_FINITE


# Enum numbers the proto does not define (`KeyError: -1`, `KeyError: 2147483647`).
UNDEFINED_ENUMS = [
    (
        "agents.CreateAgent",
        agent_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(
                name=unique("enum"),
                instructions="x",
                memory=agent_pb2.AgentMemorySettings(
                    semantic_recall=agent_pb2.SemanticRecallSettings(scope=-1)  # type: ignore[arg-type]
                ),
            )
        ),
        "agent.memory.semantic_recall.scope",
        "-1 is not a MemoryScope value",
    ),
    (
        "agents.ListRuns",
        agent_pb2.AgentServiceListRunsRequest(statuses=[1, 2**31 - 1]),  # type: ignore[list-item]
        "statuses[1]",
        "2147483647 is not a RunStatus value",
    ),
    (
        "memory.SearchMessages",
        memory_pb2.SearchMessagesRequest(query="q", scope=7, thread_id="t"),  # type: ignore[arg-type]
        "scope",
        "7 is not a MemoryScope value",
    ),
    (
        "rag.IngestDocuments",
        rag_pb2.IngestDocumentsRequest(
            index_name="idx",
            documents=[rag_pb2.DocumentInput(text="x", format=99)],  # type: ignore[arg-type]
        ),
        "documents[0].format",
        "99 is not a DocumentFormat value",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_", "field", "description"), UNDEFINED_ENUMS, ids=param_id
)
async def test_undefined_enum_number_is_invalid_argument_naming_it(
    stubs, token, method, request_, field, description
) -> None:
    assert (await _violations(stubs, method, request_, token)).get(field) == description


# NUL in text that goes to jsonb (`UntranslatableCharacter`): JSON strings and keys.
NUL_IN_JSON = [
    (
        "memory.CreateThread",
        memory_pb2.CreateThreadRequest(
            thread=memory_pb2.Thread(metadata=_struct({"note": "a\x00b"}))
        ),
        "thread.metadata.note",
    ),
    (
        "memory.CreateThread",
        memory_pb2.CreateThreadRequest(thread=memory_pb2.Thread(metadata=_struct({"k\x00": 1}))),
        'thread.metadata["k\\u0000"]',
    ),
    (
        "memory.AppendMessages",
        memory_pb2.AppendMessagesRequest(thread_id="t", messages=[_tool_result(["ok", "\x00"])]),
        "messages[0].parts[0].tool_result.result[1]",
    ),
    (
        "workflows.StartRun",
        workflow_pb2.WorkflowServiceStartRunRequest(
            workflow_id="order-pipeline", input=_struct({"customer": "ada\x00"})
        ),
        "input.customer",
    ),
]


@pytest.mark.parametrize(("method", "request_", "field"), NUL_IN_JSON, ids=param_id)
async def test_nul_in_json_is_invalid_argument_naming_it(
    stubs, token, method, request_, field
) -> None:
    assert (await _violations(stubs, method, request_, token)).get(field) == NUL


async def test_the_protos_size_limits_name_the_field(stubs, token) -> None:
    too_long = await _violations(
        stubs, "agents.GetAgent", agent_pb2.GetAgentRequest(agent_name="a" * 65), token
    )
    assert too_long == {"agent_name": "must be at most 64 characters"}
    too_many = await _violations(
        stubs,
        "integrations.StartAuthorization",
        integration_pb2.StartAuthorizationRequest(oauth_provider_id="gh", scopes=["s"] * 101),
        token,
    )
    assert too_many == {"scopes": "must contain no more than 100 item(s)"}
    parts = await _violations(
        stubs,
        "memory.AppendMessages",
        memory_pb2.AppendMessagesRequest(
            thread_id="t",
            messages=[
                message_pb2.Message(
                    role=message_pb2.ROLE_USER,
                    parts=[message_pb2.Part(text=message_pb2.TextPart(text="x"))] * 1001,
                )
            ],
        ),
        token,
    )
    assert parts == {"messages[0].parts": "must contain no more than 1000 item(s)"}


def _client_tool(**fields: Any) -> agent_pb2.ClientTool:
    tool = agent_pb2.ClientTool(name="get_weather", parameters_schema=_struct({"type": "object"}))
    for name, value in fields.items():
        if name == "timeout":
            tool.timeout.FromTimedelta(value)
        elif value is None:
            tool.ClearField(name)
        else:
            setattr(tool, name, value)
    return tool


def _mcp(**fields: Any) -> integration_pb2.CreateMcpServerRequest:
    given = {"name": "notes", "url": "https://example.com/mcp", **fields}
    server = integration_pb2.McpServer(**given)
    return integration_pb2.CreateMcpServerRequest(mcp_server=server)


def _results(*results: agent_pb2.ClientToolResult) -> agent_pb2.SubmitToolResultsRequest:
    return agent_pb2.SubmitToolResultsRequest(run_id="run_nope", results=results)


def _ok(call_id: str = "c1") -> agent_pb2.ClientToolResult:
    return agent_pb2.ClientToolResult(tool_call_id=call_id, error="failed")


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        *(
            (
                "agents.Generate",
                agent_pb2.GenerateRequest(agent_name="assistant", prompt="hi", client_tools=tools),
                field,
            )
            for tools, field in [
                ([_client_tool(name="get weather")], "client_tools[0].name"),
                ([_client_tool(name="")], "client_tools[0].name"),
                ([_client_tool(description="x" * 4097)], "client_tools[0].description"),
                ([_client_tool(parameters_schema=None)], "client_tools[0].parameters_schema"),
                ([_client_tool(timeout=timedelta(0))], "client_tools[0].timeout"),
                ([_client_tool(timeout=timedelta(days=31))], "client_tools[0].timeout"),
                ([_client_tool(name=f"t{i}") for i in range(65)], "client_tools"),
            ]
        ),
        ("agents.SubmitToolResults", _results(), "results"),
        ("agents.SubmitToolResults", _results(*(_ok(f"c{i}") for i in range(101))), "results"),
        ("agents.SubmitToolResults", _results(_ok("")), "results[0].tool_call_id"),
        ("agents.SubmitToolResults", _results(_ok("c" * 129)), "results[0].tool_call_id"),
        (
            "agents.SubmitToolResults",
            _results(agent_pb2.ClientToolResult(tool_call_id="c1", error="x" * 4097)),
            "results[0].error",
        ),
        ("integrations.CreateMcpServer", _mcp(name="Bad Name"), "mcp_server.name"),
        ("integrations.CreateMcpServer", _mcp(url="https://x/" + "p" * 2048), "mcp_server.url"),
        (
            "integrations.CreateMcpServer",
            _mcp(headers={f"X-H{i}": "v" for i in range(33)}),
            "mcp_server.headers",
        ),
        ("integrations.CreateMcpServer", _mcp(headers={"a b": "v"}), 'mcp_server.headers["a b"]'),
        (
            "integrations.CreateMcpServer",
            _mcp(headers={"X-Key": "a\r\nX-Injected: 1"}),
            'mcp_server.headers["X-Key"]',
        ),
        (
            "integrations.CreateMcpServer",
            _mcp(headers={"X-Key": "k" * 8193}),
            'mcp_server.headers["X-Key"]',
        ),
        (
            "integrations.CreateMcpServer",
            _mcp(oauth_connection_id="c" * 65),
            "mcp_server.oauth_connection_id",
        ),
        (
            "integrations.GetMcpServer",
            integration_pb2.GetMcpServerRequest(mcp_server_name="s" * 33),
            "mcp_server_name",
        ),
    ],
)
async def test_client_tool_and_mcp_server_limits_are_the_protos_rules(
    stubs, token, method, request_, field
) -> None:
    """The limits of client tools, their results and MCP servers are declared in the protos
    (buf.validate) and checked by the one validator, before any handler runs."""
    assert field in {v.field for v in RequestValidator().violations(request_)}
    assert field in await _violations(stubs, method, request_, token)


async def test_json_nested_too_deep_is_refused(stubs, token) -> None:
    def request(levels: int) -> memory_pb2.UpdateWorkingMemoryRequest:
        """`levels` Structs inside one another, built in place (protobuf's copies refuse to
        nest as deep as a hostile client can)."""
        out = memory_pb2.UpdateWorkingMemoryRequest()
        out.working_memory.scope = memory_pb2.MEMORY_SCOPE_RESOURCE
        out.working_memory.resource_id = "u"
        inner = out.working_memory.data
        for _ in range(levels - 1):
            inner = inner.fields["n"].struct_value
        inner.fields["leaf"].number_value = 1
        return out

    # Deeper than MAX_JSON_DEPTH but still parsed: the boundary check names the place.
    found = await _violations(
        stubs, "memory.UpdateWorkingMemory", request(MAX_JSON_DEPTH + 1), token
    )
    [(field, description)] = found.items()
    assert field == "working_memory.data" + ".n" * MAX_JSON_DEPTH
    assert "nested deeper" in description
    # Deeper than protobuf parses: refused as a whole, not crashing the deserializer.
    found = await _violations(stubs, "memory.UpdateWorkingMemory", request(60), token)
    assert found == {"request": "is nested too deeply to parse"}


async def test_bytes_that_do_not_parse_are_invalid_argument(channel, token) -> None:
    call = channel.unary_unary(
        "/loomwork.v1.MemoryService/GetThread",
        request_serializer=lambda raw: raw,
        response_deserializer=memory_pb2.GetThreadResponse.FromString,
    )
    # Field 1 (thread_id) with two bytes that are not UTF-8.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(b"\x0a\x02\xff\xfe", metadata=auth(token), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request" in field_violations(err.value)


async def test_each_message_of_a_client_stream_is_checked(stubs, token) -> None:
    async def requests():  # type: ignore[no-untyped-def]
        header = rag_pb2.UploadDocumentHeader(
            index_name="idx", document=rag_pb2.DocumentInput(title="t\x00")
        )
        yield rag_pb2.UploadDocumentRequest(header=header)
        yield rag_pb2.UploadDocumentRequest(chunk=b"bytes")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.rag.UploadDocument(requests(), metadata=auth(token), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(err.value) == {"header.document.title": NUL}


async def test_bad_input_is_checked_after_authentication(stubs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.agents.GetAgent(agent_pb2.GetAgentRequest(agent_name="\x00"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_resume_of_a_run_that_ended_is_failed_precondition(stubs, token) -> None:
    """Found by the fuzzer: ResumeRun on a finished run answered INTERNAL (Temporal's
    'workflow execution already completed')."""
    finished = await stubs.agents.Generate(
        agent_pb2.GenerateRequest(agent_name="assistant", prompt="hello"), metadata=auth(token)
    )
    decision = agent_pb2.ApprovalDecision(tool_call_id="c1", approve=agent_pb2.ToolCallApproval())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.agents.ResumeRun(
            agent_pb2.AgentServiceResumeRunRequest(run_id=finished.run.id, decisions=[decision]),
            metadata=auth(token),
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_the_boundary_check_walks_maps_by_key() -> None:
    info = error_details_pb2.ErrorInfo(reason="R", metadata={"ok": "v", "k\x00": "v\x00"})
    found = {v.field: v.description for v in boundary_violations(info)}
    assert found == {'metadata["k\\u0000"]': NUL}
    assert boundary_violations(error_details_pb2.ErrorInfo(metadata={"a": "b"})) == []


async def test_an_index_shorter_than_its_models_vectors_is_searchable(stubs, token) -> None:
    """Found by the fuzzer: an index of an endpoint model with a `dimension` below the
    model's native one was created, but Query embedded at the native dimension and
    Postgres refused the vector (`expected 6 dimensions, not 384`): INTERNAL."""
    md = auth(token)
    name = unique("short")
    index = rag_pb2.Index(name=name, embedding_model="fuzz-embedding-model", dimension=6)
    created = await stubs.rag.CreateIndex(rag_pb2.CreateIndexRequest(index=index), metadata=md)
    assert created.index.dimension == 6
    document = rag_pb2.DocumentInput(document_id="d1", text="Short vectors still find this.")
    ingestion = await stubs.rag.IngestDocuments(
        rag_pb2.IngestDocumentsRequest(index_name=name, documents=[document]), metadata=md
    )
    async for event in stubs.rag.WatchIngestion(
        rag_pb2.WatchIngestionRequest(ingestion_id=ingestion.ingestion.id), metadata=md, timeout=60
    ):
        if event.event.HasField("finished"):
            assert event.event.finished.status == rag_pb2.INGESTION_STATUS_SUCCEEDED
    found = await stubs.rag.Query(
        rag_pb2.QueryRequest(index_name=name, query="what do short vectors find?"), metadata=md
    )
    assert [r.chunk.document_id for r in found.results] == ["d1"]
