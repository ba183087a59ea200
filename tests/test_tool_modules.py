"""The application's own tools: a server and a worker started as a user starts them, with
LOOMWORK_TOOL_MODULES naming tests/tool_module_example.py, against the session's Postgres,
Redis, Temporal and scripted model; plus `@tool` itself."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from pydantic import BaseModel

from loomwork.testing import ScriptedModelServer, ScriptedToolCall, Turn
from loomwork.tools import ToolContext, tool, tool_of
from protos.loomwork.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    integration_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from tests.oauth_provider import Provider, connect
from tests.processes import code_agents, listed_tools, loomwork_processes
from tests.support import auth, collect_events, unique
from tests.workflow_support import has_status, start_run, wait_run

MODULE = "tests.tool_module_example"
WORKFLOWS = "tests.tool_module_workflows"
TOKENS = "t-alpha=alpha:admin,t-beta=beta:admin"


def _model_env(model_server: ScriptedModelServer) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": model_server.base_url,
        "OPENAI_API_KEY": "test-key",
        "LOOMWORK_CHAT_MODEL": "scripted",
        "LOOMWORK_TOKENS": TOKENS,
    }


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("notebook") / "notebook.jsonl"


@pytest.fixture(scope="module")
def with_modules(
    embedded: dict[str, str],
    model_server: ScriptedModelServer,
    notebook: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str]]:
    """A server and a worker that both load the module (and the workflows over its tools):
    their gRPC and HTTP addresses."""
    from tests.conftest import free_port

    http = f"127.0.0.1:{free_port()}"
    with loomwork_processes(
        embedded,
        tmp_path_factory.mktemp("with-modules"),
        [["server"], ["worker"]],
        LOOMWORK_TOOL_MODULES=MODULE,
        LOOMWORK_WORKFLOW_MODULES=WORKFLOWS,
        LOOMWORK_TEST_NOTEBOOK=str(notebook),
        LOOMWORK_HTTP_ADDRESS=http,
        **_model_env(model_server),
    ) as (address, _):
        yield address, f"http://{http}"


@pytest.fixture
async def agents(with_modules: tuple[str, str]) -> AsyncIterator[agent_pb2_grpc.AgentServiceStub]:
    async with grpc.aio.insecure_channel(with_modules[0]) as channel:
        yield agent_pb2_grpc.AgentServiceStub(channel)


@pytest.fixture
def scripted(model_server: ScriptedModelServer) -> Iterator[ScriptedModelServer]:
    yield model_server
    model_server.set_script(None)


def _tool_results(run: agent_pb2.AgentRun) -> list[dict[str, Any]]:
    """Every tool result of the run's messages: tool name, result (as JSON), is_error."""
    return [
        {
            "tool_name": part.tool_result.tool_name,
            "result": json_format.MessageToDict(part.tool_result.result),
            "is_error": part.tool_result.is_error,
        }
        for message in run.output.messages
        for part in message.parts
        if part.HasField("tool_result")
    ]


async def _generate(
    agents: agent_pb2_grpc.AgentServiceStub, token: str, **request: Any
) -> agent_pb2.AgentRun:
    response = await agents.Generate(
        agent_pb2.GenerateRequest(**request), metadata=auth(token), timeout=60
    )
    return response.run


def test_tools_and_agents_of_the_modules_are_listed(with_modules: tuple[str, str]) -> None:
    with grpc.insecure_channel(with_modules[0]) as channel:
        tools = listed_tools(channel, "t-alpha")
        assert {"write_note", "fetch_profile", "flaky"} <= set(tools)
        assert "notebook-keeper" in code_agents(channel, "t-alpha")
    note = tools["write_note"]
    assert note.description == "Write a line in the team's notebook."
    params = json_format.MessageToDict(note.parameters_schema)
    assert params["required"] == ["text"] and params["properties"]["text"]["minLength"] == 1
    # The return annotation (NoteWritten) is the declared result.
    result = json_format.MessageToDict(note.result_schema)
    assert result["properties"]["line"]["type"] == "integer"
    assert result["properties"]["key"]["type"] == "string"
    # The docstring is the description when none is given.
    assert tools["fetch_profile"].description.startswith("The connected account's profile")


async def test_a_module_tool_acts_in_an_agent_run(
    agents: agent_pb2_grpc.AgentServiceStub, scripted: ScriptedModelServer, notebook: Path
) -> None:
    text = unique("buy milk")
    scripted.set_script(
        [Turn(tool_calls=[ScriptedToolCall("write_note", {"text": text}, id="c1")]), "Noted."]
    )
    run = await _generate(agents, "t-alpha", agent_name="notebook-keeper", prompt="write it down")
    assert run.output.text == "Noted.", run
    lines = (await asyncio.to_thread(notebook.read_text)).splitlines()
    entries = [json.loads(line) for line in lines]
    mine = [e for e in entries if e["text"] == text]
    assert len(mine) == 1
    assert mine[0]["tenant"] == "alpha" and mine[0]["key"] == f"{run.id}:c1"
    (written,) = _tool_results(run)
    assert written["tool_name"] == "write_note" and not written["is_error"]
    assert written["result"]["key"] == f"{run.id}:c1"


async def test_a_tool_with_a_retry_policy_is_retried_by_it(
    agents: agent_pb2_grpc.AgentServiceStub, scripted: ScriptedModelServer, notebook: Path
) -> None:
    name = unique("flaky")
    scripted.set_script(
        [Turn(tool_calls=[ScriptedToolCall("flaky", {"name": name}, id="f1")]), "It worked."]
    )
    run = await _generate(agents, "t-alpha", agent_name="notebook-keeper", prompt="try it")
    (result,) = _tool_results(run)
    assert result == {"tool_name": "flaky", "result": "worked on attempt 3", "is_error": False}
    attempts = notebook.with_suffix(f".{name}.attempts")
    assert await asyncio.to_thread(attempts.read_text) == "3"


async def test_a_tool_that_fails_every_attempt_is_an_error_result_for_the_model(
    agents: agent_pb2_grpc.AgentServiceStub, scripted: ScriptedModelServer
) -> None:
    scripted.set_script(
        [Turn(tool_calls=[ScriptedToolCall("broken", {"name": "the pump"}, id="b1")]), "Alas."]
    )
    run = await _generate(agents, "t-alpha", agent_name="notebook-keeper", prompt="try it")
    (result,) = _tool_results(run)
    assert result["is_error"] and "the pump is broken for good" in result["result"]
    assert run.output.text == "Alas."
    # Its stream tells the watcher too: one tool_result for the call, before the answer.
    events = await collect_events(
        agents.WatchRun(
            agent_pb2.AgentServiceWatchRunRequest(run_id=run.id), metadata=auth("t-alpha")
        )
    )
    kinds = [event.WhichOneof("event") for event in events]
    (streamed,) = [event.tool_result for event in events if event.HasField("tool_result")]
    assert streamed.tool_call_id == "b1" and streamed.is_error
    assert kinds.index("tool_result") < kinds.index("text_delta")


async def test_a_tool_step_of_a_tool_function_is_retried_by_the_tools_policy(
    with_modules: tuple[str, str],
) -> None:
    """`tool_step(tool=broken)`: the step takes the tool's own retry policy (`broken` declares
    2 attempts; a step's default is 3), and the run fails with the tool's error."""
    async with grpc.aio.insecure_channel(with_modules[0]) as channel:
        workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
        run = await start_run(workflows, "t-alpha", "broken-pump", {"name": "the pump"})
        failed = await wait_run(
            workflows, "t-alpha", run.id, has_status(workflow_pb2.WORKFLOW_RUN_STATUS_FAILED)
        )
    (pump,) = failed.steps
    assert pump.step_id == "pump" and pump.status == workflow_pb2.WORKFLOW_STEP_STATUS_FAILED
    assert pump.attempts == 2
    assert "the pump is broken for good" in pump.error.message


async def test_a_module_tool_calls_an_api_with_the_tenants_oauth_connection(
    agents: agent_pb2_grpc.AgentServiceStub,
    with_modules: tuple[str, str],
    scripted: ScriptedModelServer,
    provider: Provider,
    provider_server: tuple[Provider, str],
) -> None:
    _, base = provider_server
    async with grpc.aio.insecure_channel(with_modules[0]) as channel:
        integrations = integration_pb2_grpc.IntegrationServiceStub(channel)
        _, connection_id = await connect(integrations, "t-alpha", provider_server, with_modules[1])
    profiler = agent_pb2.Agent(
        name=unique("profiler").lower(),
        instructions="Look people up.",
        tool_names=["fetch_profile"],
    )
    for token in ("t-alpha", "t-beta"):
        await agents.CreateAgent(agent_pb2.CreateAgentRequest(agent=profiler), metadata=auth(token))
    call = ScriptedToolCall(
        "fetch_profile", {"connection_id": connection_id, "url": f"{base}/api/me"}, id="p1"
    )

    scripted.set_script([Turn(tool_calls=[call]), "That is ada."])
    run = await _generate(agents, "t-alpha", agent_name=profiler.name, prompt="who am I?")
    (profile,) = _tool_results(run)
    assert profile == {"tool_name": "fetch_profile", "result": {"me": "ada"}, "is_error": False}
    assert provider.api_calls and provider.api_calls[-1] in provider.access

    # Another tenant's run cannot use that connection, even by its id.
    calls_before = len(provider.api_calls)
    scripted.set_script([Turn(tool_calls=[call]), "No luck."])
    run = await _generate(agents, "t-beta", agent_name=profiler.name, prompt="who am I?")
    (refused,) = _tool_results(run)
    assert refused["is_error"] and "not found" in refused["result"]
    assert len(provider.api_calls) == calls_before


async def test_a_worker_without_the_module_answers_its_tools_with_an_error(
    embedded: dict[str, str],
    model_server: ScriptedModelServer,
    scripted: ScriptedModelServer,
    notebook: Path,
    tmp_path: Path,
) -> None:
    """The server knows write_note (so an agent can name it); the worker does not: the model
    is not offered it, and a call of it is an error result naming it; the run goes on."""
    with loomwork_processes(
        embedded,
        tmp_path,
        [["server"], ["worker"]],
        env_of={"server": {"LOOMWORK_TOOL_MODULES": MODULE}},
        LOOMWORK_TEST_NOTEBOOK=str(notebook),
        **_model_env(model_server),
    ) as (address, _):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            agent = agent_pb2.Agent(
                name=unique("scribe").lower(), instructions="Write.", tool_names=["write_note"]
            )
            await stub.CreateAgent(
                agent_pb2.CreateAgentRequest(agent=agent), metadata=auth("t-alpha")
            )
            first = len(scripted.requests)
            scripted.set_script(
                [Turn(tool_calls=[ScriptedToolCall("write_note", {"text": "x"}, id="w1")]), "Ok."]
            )
            run = await _generate(stub, "t-alpha", agent_name=agent.name, prompt="write x")
    assert "write_note" not in scripted.requests[first].tool_names
    (missing,) = _tool_results(run)
    assert missing["is_error"] and "write_note" in missing["result"]
    assert "not available on this worker" in missing["result"]
    assert run.output.text == "Ok."


class Args(BaseModel):
    city: str


def test_tool_takes_its_name_description_and_schemas_from_the_function() -> None:
    @tool(description="Weather forecast for a city.")
    async def get_forecast(args: Args, ctx: ToolContext) -> dict[str, float]:
        return {"celsius": 18.0}

    made = tool_of(get_forecast)
    assert made is not None
    assert made.name == "get_forecast" and made.description == "Weather forecast for a city."
    assert made.spec().parameters["properties"]["city"]["type"] == "string"
    assert made.result_schema == {"type": "object", "additionalProperties": {"type": "number"}}


def test_tool_refuses_a_function_it_cannot_describe() -> None:
    async def no_model(args: dict[str, Any], ctx: ToolContext) -> None: ...

    async def undocumented(args: Args, ctx: ToolContext) -> None: ...

    def not_async(args: Args, ctx: ToolContext) -> None: ...

    with pytest.raises(TypeError, match="pydantic model"):
        tool(no_model)
    with pytest.raises(TypeError, match="description"):
        tool(undocumented)
    with pytest.raises(TypeError, match="async"):
        tool(not_async)
    with pytest.raises(TypeError, match="name"):
        tool(name="has spaces", description="x")(undocumented)
