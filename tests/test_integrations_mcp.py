"""MCP servers as tool sources: registered by RPC, their tools listed, cached and called from
agent runs. The MCP servers are real (the `mcp` SDK's MCPServer over streamable HTTP, or a
stdio script); so are Postgres, Temporal and the scripted model behind Loomwork."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from temporalio.api.enums.v1 import EventType

from clients import LoomworkClient
from loomwork.config import Settings
from loomwork.errors import FailedPrecondition
from loomwork.integrations.connections import Tokens
from loomwork.integrations.mcp_client import HttpEndpoint
from loomwork.integrations.mcp_tools import parse_operator_servers
from loomwork.integrations.providers import NewOAuthProvider
from loomwork.testing import ChatRequest, ScriptedToolCall, Turn
from loomwork.tools.mcp_names import McpToolRef, parse_mcp_name
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from protos.loomwork.v1 import integration_pb2 as pb
from protos.loomwork.v1 import integration_pb2_grpc as integration_grpc
from server.runtime import Runtime
from tests.mcp_servers import STDIO_SCRIPT, ThreadedMcpServer, notes_server
from tests.support import RunningWorker, another_server, auth, field_violations, own_runtime, unique

API_KEY = ("X-Api-Key", "key-8c1f0e2a77")


@pytest.fixture(scope="module")
def stub(channel) -> integration_grpc.IntegrationServiceStub:
    return integration_grpc.IntegrationServiceStub(channel)


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    folder = tmp_path / "notes"
    folder.mkdir()
    return folder


@pytest.fixture
def mcp_server(notes: Path) -> Iterator[ThreadedMcpServer]:
    """A notes MCP server that wants an API key header."""
    server = ThreadedMcpServer(notes_server("notes", notes), require_header=API_KEY).start()
    try:
        yield server
    finally:
        server.stop()


async def _register(stub, token: str, url: str, name: str | None = None) -> pb.McpServer:
    request = pb.CreateMcpServerRequest(
        mcp_server=pb.McpServer(name=name or unique("notes"), url=url, headers=dict([API_KEY]))
    )
    return (await stub.CreateMcpServer(request, metadata=auth(token))).mcp_server


async def _agent(agents, token: str, tool_names: list[str]) -> str:
    name = unique("mcp-agent")
    await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(name=name, instructions="Use your tools.", tool_names=tool_names)
        ),
        metadata=auth(token),
    )
    return name


async def _generate(agents, token: str, agent: str, prompt: str) -> agent_pb2.AgentRun:
    request = agent_pb2.GenerateRequest(agent_name=agent, prompt=prompt)
    return (await agents.Generate(request, metadata=auth(token))).run


def _saved(notes: Path) -> list[dict[str, str]]:
    return [json.loads(p.read_text()) for p in sorted(notes.iterdir())]


def test_names_the_model_sees_end_with_the_tool_name() -> None:
    assert McpToolRef(server="gh", tool="search").function_name == "gh__search"
    assert McpToolRef(server="gh", tool="repo.search/v2").function_name == "gh__repo_search_v2"
    long = McpToolRef(server="s" * 32, tool="t" * 40 + "_end")
    assert len(long.function_name) == 64 and long.function_name.endswith("t_end")
    assert parse_mcp_name("mcp:gh/*") == McpToolRef(server="gh", tool="*")
    for bad in ("mcp:gh", "mcp:GH/x", "mcp:gh/", "mcp:gh/a b", "mcp:" + "s" * 33 + "/x"):
        with pytest.raises(ValueError):
            parse_mcp_name(bad)
    # Held sessions are never shared between tenants, even with the same URL and headers.
    url = "https://mcp.example.com/mcp"
    assert HttpEndpoint(url=url, tenant="a").key() != HttpEndpoint(url=url, tenant="b").key()


def test_a_malformed_operator_configuration_says_what_is_wrong() -> None:
    spec = {"files": {"command": "npx", "args": ["-y", "server"], "env": {"A": "1"}}}
    assert parse_operator_servers(json.dumps(spec))["files"].args == ["-y", "server"]
    assert parse_operator_servers("") == {}
    for bad, said in (
        ("{not json", "LOOMWORK_MCP_SERVERS"),
        ('{"files": {"args": []}}', "files.command"),
        ('{"files": {"command": "x", "url": "http://a"}}', "files.url"),
        ('{"Files": {"command": "x"}}', "'Files'"),
    ):
        with pytest.raises(FailedPrecondition) as err:
            parse_operator_servers(bad)
        assert said in err.value.message, (bad, err.value.message)


async def test_the_typed_client_registers_and_refreshes(grpc_address, token, mcp_server) -> None:
    name = unique("typed")
    async with LoomworkClient(grpc_address, token) as client:
        created = await client.integrations.create_mcp_server(
            name, mcp_server.url, headers=dict([API_KEY])
        )
        assert created.name == name and {t.name for t in created.tools} == {"save_note", "refuse"}
        assert (await client.integrations.get_mcp_server(name)).url == mcp_server.url
        listed = await client.integrations.list_mcp_servers(page_size=1000)
        assert name in [s.name for s in listed.mcp_servers]
        assert (await client.integrations.refresh_mcp_server(name)).list_time.seconds
        await client.integrations.delete_mcp_server(name)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.integrations.get_mcp_server(name)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_register_list_refresh_and_delete_keep_headers_secret(
    stub, token, other_token, mcp_server, runtime: Runtime
) -> None:
    created = await _register(stub, token, mcp_server.url)
    assert created.source == pb.MCP_SERVER_SOURCE_TENANT and not created.headers
    assert {t.name for t in created.tools} == {"save_note", "refuse"}
    save = next(t for t in created.tools if t.name == "save_note")
    assert save.tool_name == f"mcp:{created.name}/save_note"
    assert set(save.input_schema["required"]) == {"title", "body"}
    assert created.list_time.seconds and created.create_time.seconds

    got = (
        await stub.GetMcpServer(
            pb.GetMcpServerRequest(mcp_server_name=created.name), metadata=auth(token)
        )
    ).mcp_server
    assert got.url == mcp_server.url and not got.headers and len(got.tools) == 2
    listed = await stub.ListMcpServers(pb.ListMcpServersRequest(), metadata=auth(token))
    assert created.name in [s.name for s in listed.mcp_servers]
    assert all(not s.headers for s in listed.mcp_servers)

    # Headers are stored encrypted: the key is nowhere in the row as stored.
    async with runtime.db.connection() as conn:
        cur = await conn.execute("select * from mcp_servers where name = %s", (created.name,))
        row = await cur.fetchone()
    assert row is not None and row["headers_enc"] is not None
    raw = b"".join(
        bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in row.values()
    )
    assert API_KEY[1].encode() not in raw

    # The server gains a tool: RefreshMcpServer lists it.
    @mcp_server.server.tool(description="Count the notes.")
    def count_notes() -> int:
        return 0

    refreshed = (
        await stub.RefreshMcpServer(
            pb.RefreshMcpServerRequest(mcp_server_name=created.name), metadata=auth(token)
        )
    ).mcp_server
    assert {t.name for t in refreshed.tools} == {"save_note", "refuse", "count_notes"}
    assert refreshed.list_time.ToDatetime() >= created.list_time.ToDatetime()

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _register(stub, token, mcp_server.url, name=created.name)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS

    # Another tenant neither sees nor changes it.
    for call, request in (
        (stub.GetMcpServer, pb.GetMcpServerRequest(mcp_server_name=created.name)),
        (stub.RefreshMcpServer, pb.RefreshMcpServerRequest(mcp_server_name=created.name)),
        (stub.DeleteMcpServer, pb.DeleteMcpServerRequest(mcp_server_name=created.name)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(request, metadata=auth(other_token))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    theirs = await stub.ListMcpServers(pb.ListMcpServersRequest(), metadata=auth(other_token))
    assert created.name not in [s.name for s in theirs.mcp_servers]

    await stub.DeleteMcpServer(
        pb.DeleteMcpServerRequest(mcp_server_name=created.name), metadata=auth(token)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetMcpServer(
            pb.GetMcpServerRequest(mcp_server_name=created.name), metadata=auth(token)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_listing_pages_through_servers_by_name(stub, other_token, mcp_server) -> None:
    prefix = unique("page")
    names = [f"{prefix}-{i}" for i in range(3)]
    for name in names:
        await _register(stub, other_token, mcp_server.url, name=name)
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListMcpServers(
            pb.ListMcpServersRequest(page_size=2, page_token=token), metadata=auth(other_token)
        )
        seen += [s.name for s in page.mcp_servers]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(seen) and set(names) <= set(seen)


async def test_bad_input_names_the_field(stub, agents, token, mcp_server) -> None:
    cases = [
        (pb.McpServer(name="Bad Name", url=mcp_server.url), "mcp_server.name"),
        (pb.McpServer(name="x" * 33, url=mcp_server.url), "mcp_server.name"),
        (pb.McpServer(name=unique("s"), url="ftp://example.com/mcp"), "mcp_server.url"),
        (pb.McpServer(name=unique("s"), url="http://example.com/mcp"), "mcp_server.url"),
        (pb.McpServer(name=unique("s")), "mcp_server.url"),
        (
            pb.McpServer(name=unique("s"), url=mcp_server.url, headers={"Host": "x"}),
            "mcp_server.headers[Host]",
        ),
        (
            pb.McpServer(name=unique("s"), url=mcp_server.url, oauth_connection_id="con_nope"),
            "mcp_server.oauth_connection_id",
        ),
    ]
    for server, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateMcpServer(
                pb.CreateMcpServerRequest(mcp_server=server), metadata=auth(token)
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in field_violations(err.value), (field, field_violations(err.value))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetMcpServer(pb.GetMcpServerRequest(), metadata=auth(token))
    assert "mcp_server_name" in field_violations(err.value)

    registered = await _register(stub, token, mcp_server.url)
    for tool_name in ("mcp:Bad/x", "mcp:nothing", f"mcp:{registered.name}/no_such_tool"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _agent(agents, token, ["add", tool_name])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, tool_name
        assert "agent.tool_names[1]" in field_violations(err.value), tool_name
    # A server not registered (yet) is not checked; one registered is, by its listed tools.
    await _agent(agents, token, ["mcp:later/anything", f"mcp:{registered.name}/*"])


async def test_a_server_that_is_down_is_unavailable_naming_its_url(stub, token, notes) -> None:
    server = ThreadedMcpServer(notes_server("notes", notes)).start()
    registered = (
        await stub.CreateMcpServer(
            pb.CreateMcpServerRequest(mcp_server=pb.McpServer(name=unique("s"), url=server.url)),
            metadata=auth(token),
        )
    ).mcp_server
    server.stop()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RefreshMcpServer(
            pb.RefreshMcpServerRequest(mcp_server_name=registered.name), metadata=auth(token)
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.url in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _register(stub, token, server.url)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and server.url in str(
        err.value.details()
    )
    # Without its API key the server refuses: not UNAVAILABLE, and nothing is stored.
    keyed = ThreadedMcpServer(notes_server("notes", notes), require_header=API_KEY).start()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateMcpServer(
                pb.CreateMcpServerRequest(mcp_server=pb.McpServer(name=unique("s"), url=keyed.url)),
                metadata=auth(token),
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "HTTP 401" in (err.value.details() or "")
    finally:
        keyed.stop()


async def test_an_oauth_connections_token_is_the_bearer_refreshed_once_on_401(
    stub, token, notes, runtime: Runtime
) -> None:
    """The stored access token is stale: the server answers 401, the token is refreshed at the
    provider's token endpoint (once) and the request sent again with the new one."""
    refreshes: list[dict[str, str]] = []
    server = notes_server("notes", notes)

    @server.custom_route("/token", methods=["POST"])
    async def token_endpoint(request: Request) -> Response:
        refreshes.append({k: str(v) for k, v in (await request.form()).items()})
        return JSONResponse({"access_token": "at-new", "token_type": "Bearer", "expires_in": 600})

    mcp_server = ThreadedMcpServer(server, require_header=("Authorization", "Bearer at-new"))
    mcp_server.start()
    try:
        integrations = runtime.integrations
        assert integrations is not None
        base = mcp_server.url.removesuffix("/mcp")
        provider = await integrations.providers.create(
            "alpha",
            NewOAuthProvider(
                id=unique("prov"),
                authorize_url=f"{base}/authorize",
                token_url=f"{base}/token",
                client_id="loomwork",
                client_secret="client-secret-1",
            ),
        )
        connection = await integrations.connections.create(
            "alpha",
            unique("con"),
            provider.id,
            [],
            "",
            Tokens(access_token="at-old", refresh_token="rt-1"),
        )
        created = (
            await stub.CreateMcpServer(
                pb.CreateMcpServerRequest(
                    mcp_server=pb.McpServer(
                        name=unique("s"), url=mcp_server.url, oauth_connection_id=connection.id
                    )
                ),
                metadata=auth(token),
            )
        ).mcp_server
    finally:
        mcp_server.stop()
    assert created.oauth_connection_id == connection.id and len(created.tools) == 2
    assert [r["refresh_token"] for r in refreshes] == ["rt-1"]
    assert await integrations.oauth.get_access_token("alpha", connection.id) == "at-new"


async def test_an_agent_run_calls_an_mcp_tool_and_answers_with_its_result(
    stub, agents, token, other_token, model, mcp_server, notes, runtime: Runtime
) -> None:
    server = await _register(stub, token, mcp_server.url)
    agent = await _agent(agents, token, ["add", f"mcp:{server.name}/save_note"])
    function = f"{server.name}__save_note"

    def script(request: ChatRequest) -> Turn:
        if not request.tool_results:
            args = {"title": "milk", "body": "buy 2"}
            return Turn(tool_calls=[ScriptedToolCall(function, args, id="call_note")])
        saved = json.loads(request.tool_results[-1]["content"])
        return Turn(text=f"Saved as {saved['note_id']}.")

    model.set_script(script)
    run = await _generate(agents, token, agent, "note: buy 2 milk")
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert run.output.text == "Saved as note-1."
    result = run.output.messages[1].parts[0].tool_result
    assert not result.is_error and result.tool_name == function
    assert result.result.struct_value["note_id"] == "note-1"
    # What the tool wrote, with the run's idempotency key from the request's _meta.
    assert _saved(notes) == [{"title": "milk", "body": "buy 2", "key": f"{run.id}:call_note"}]

    first = model.requests[0]
    assert set(first.tool_names) == {"add", function}
    offered = next(t for t in first.tools if t["function"]["name"] == function)["function"]
    assert offered["description"] == "Save a note; answers with its id."
    assert set(offered["parameters"]["required"]) == {"title", "body"}

    handle = runtime.temporal.get_workflow_handle(run.temporal_workflow_id)
    converter = runtime.temporal.data_converter.payload_converter
    summaries = [
        converter.from_payload(event.user_metadata.summary, str)
        async for event in handle.fetch_history_events()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert f"mcp {server.name}/save_note" in summaries

    # ListTools shows the tenant its MCP tools by the names agents use; another tenant none.
    tools = await agents.ListTools(agent_pb2.ListToolsRequest(), metadata=auth(token))
    listed = {t.name: t for t in tools.tools}
    assert f"mcp:{server.name}/save_note" in listed and "add" in listed
    assert listed[f"mcp:{server.name}/save_note"].parameters_schema["required"]
    theirs = await agents.ListTools(agent_pb2.ListToolsRequest(), metadata=auth(other_token))
    assert not [t.name for t in theirs.tools if server.name in t.name]


async def test_errors_of_the_tool_and_bad_arguments_go_back_to_the_model(
    stub, agents, token, model, mcp_server, notes
) -> None:
    server = await _register(stub, token, mcp_server.url)
    agent = await _agent(agents, token, [f"mcp:{server.name}/*"])
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall(f"{server.name}__refuse", {"reason": "no"})]),
            Turn(tool_calls=[ScriptedToolCall(f"{server.name}__save_note", {"title": 3})]),
            Turn(text="Could not."),
        ]
    )
    run = await _generate(agents, token, agent, "try")
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED and run.output.text == "Could not."
    refused = run.output.messages[1].parts[0].tool_result
    assert refused.is_error and "refused: no" in refused.result.string_value
    invalid = run.output.messages[3].parts[0].tool_result
    assert invalid.is_error and "invalid arguments" in invalid.result.string_value
    assert "title" in invalid.result.string_value and "body" in invalid.result.string_value
    assert _saved(notes) == []  # the invalid call never reached the server
    assert set(model.requests[0].tool_names) == {
        f"{server.name}__save_note",
        f"{server.name}__refuse",
    }


async def test_a_server_stopped_mid_run_is_retried_then_an_error_result(
    stub, agents, token, model, notes, runtime: Runtime
) -> None:
    mcp_server = ThreadedMcpServer(notes_server("notes", notes)).start()
    try:
        registered = (
            await stub.CreateMcpServer(
                pb.CreateMcpServerRequest(
                    mcp_server=pb.McpServer(name=unique("s"), url=mcp_server.url)
                ),
                metadata=auth(token),
            )
        ).mcp_server
        agent = await _agent(agents, token, [f"mcp:{registered.name}/save_note"])

        def script(request: ChatRequest) -> Turn:
            if not request.tool_results:
                mcp_server.stop()  # the run has begun: its server goes away
                args = {"title": "t", "body": "b"}
                return Turn(tool_calls=[ScriptedToolCall(f"{registered.name}__save_note", args)])
            return Turn(text="The notes service is down.")

        model.set_script(script)
        run = await _generate(agents, token, agent, "save")
    finally:
        mcp_server.stop()
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert run.output.text == "The notes service is down."
    result = run.output.messages[1].parts[0].tool_result
    assert result.is_error and mcp_server.url in result.result.string_value
    assert "cannot be reached" in result.result.string_value
    handle = runtime.temporal.get_workflow_handle(run.temporal_workflow_id)
    attempts = [
        event.activity_task_started_event_attributes.attempt
        async for event in handle.fetch_history_events()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert 3 in attempts  # the MCP call's activity ran three times


async def test_stale_tool_lists_are_listed_again_when_a_run_needs_them(
    stub, agents, token, model, mcp_server, runtime: Runtime
) -> None:
    server = await _register(stub, token, mcp_server.url)
    agent = await _agent(agents, token, [f"mcp:{server.name}/*"])

    @mcp_server.server.tool(description="Archive every note.")
    def archive() -> str:
        return "archived"

    model.set_script([Turn(text="ok")])
    await _generate(agents, token, agent, "hi")
    assert f"{server.name}__archive" not in model.requests[-1].tool_names  # cached, still fresh
    async with runtime.db.connection() as conn:
        await conn.execute(
            "update mcp_servers set list_time = now() - interval '1 hour' where name = %s",
            (server.name,),
        )
    model.set_script([Turn(text="ok")])
    await _generate(agents, token, agent, "hi")
    assert f"{server.name}__archive" in model.requests[-1].tool_names


async def test_a_tenant_never_calls_another_tenants_server(
    stub, agents, token, other_token, model, mcp_server, notes
) -> None:
    server = await _register(stub, token, mcp_server.url)
    # Beta names alpha's server: not a server beta may use, so not checked, and never offered.
    agent = await _agent(agents, other_token, [f"mcp:{server.name}/save_note"])
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall(f"{server.name}__save_note", {"title": "x"})]),
            Turn(text="no"),
        ]
    )
    run = await _generate(agents, other_token, agent, "save")
    assert model.requests[0].tool_names == []
    result = run.output.messages[1].parts[0].tool_result
    assert result.is_error and "unknown tool" in result.result.string_value
    assert _saved(notes) == []


@pytest.fixture
async def operator_stack(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[
    tuple[agent_pb2_grpc.AgentServiceStub, integration_grpc.IntegrationServiceStub, Path]
]:
    """A server and worker whose operator configured a stdio MCP server `shouter`."""
    out = tmp_path / "shouted.txt"
    servers = {
        "shouter": {
            "command": sys.executable,
            "args": [str(STDIO_SCRIPT)],
            "env": {"MCP_TEST_OUT": str(out)},
        }
    }
    async with own_runtime(settings, mcp_servers=json.dumps(servers)) as own:
        worker = RunningWorker(own)
        try:
            async with another_server(own) as channel:
                yield (
                    agent_pb2_grpc.AgentServiceStub(channel),
                    integration_grpc.IntegrationServiceStub(channel),
                    out,
                )
        finally:
            await worker.stop()


async def test_an_operators_stdio_server_serves_every_tenant(
    operator_stack, token, other_token, model
) -> None:
    agents, stub, out = operator_stack
    for who in (token, other_token):
        listed = await stub.ListMcpServers(pb.ListMcpServersRequest(), metadata=auth(who))
        shouter = next(s for s in listed.mcp_servers if s.name == "shouter")
        assert shouter.source == pb.MCP_SERVER_SOURCE_OPERATOR and not shouter.url
        assert [t.name for t in shouter.tools] == ["shout"]
    # A tenant cannot replace or delete it (and no RPC takes a command).
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _register(stub, token, "http://127.0.0.1:9/mcp", name="shouter")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteMcpServer(
            pb.DeleteMcpServerRequest(mcp_server_name="shouter"), metadata=auth(token)
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    agent = await _agent(agents, other_token, ["mcp:shouter/shout"])

    def script(request: ChatRequest) -> Turn:
        if not request.tool_results:
            return Turn(tool_calls=[ScriptedToolCall("shouter__shout", {"text": "hello"})])
        return Turn(text=f"It said {json.loads(request.tool_results[-1]['content'])['shouted']}.")

    model.set_script(script)
    run = await _generate(agents, other_token, agent, "shout hello")
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert run.output.text == "It said HELLO."
    assert out.read_text() == "HELLO\n"
