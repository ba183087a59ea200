"""Agents defined by RPC: created, read, listed, updated and deleted per tenant, and run end to
end like agents defined in code."""

from __future__ import annotations

import re

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from loomwork.testing import ScriptedToolCall, Turn
from protos.loomwork.v1 import agent_pb2, run_pb2
from tests.support import ROOT, auth, field_violations, unique


def _struct(value: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def _agent(name: str, **fields) -> agent_pb2.Agent:
    return agent_pb2.Agent(
        name=name,
        instructions=fields.pop("instructions", "You are a careful calculator."),
        **fields,
    )


async def _create(agents, token, agent: agent_pb2.Agent) -> agent_pb2.Agent:
    response = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(agent=agent), metadata=auth(token)
    )
    return response.agent


async def test_create_get_list_update_delete(agents, token, other_token) -> None:
    name = unique("calc")
    created = await _create(
        agents,
        token,
        _agent(
            name,
            description="adds things",
            model="gpt-test",
            tool_names=["add"],
            memory=agent_pb2.AgentMemorySettings(last_messages=7),
            max_steps=3,
            metadata=_struct({"team": "maths"}),
        ),
    )
    assert created.source == agent_pb2.AGENT_SOURCE_API
    assert created.create_time.seconds > 0
    assert (created.memory.last_messages, created.max_steps) == (7, 3)

    got = (
        await agents.GetAgent(agent_pb2.GetAgentRequest(agent_name=name), metadata=auth(token))
    ).agent
    assert got == created

    # The tenant sees its own agent next to those defined in code; another tenant does not.
    listed = await agents.ListAgents(agent_pb2.ListAgentsRequest(), metadata=auth(token))
    names = [a.name for a in listed.agents]
    assert name in names and "assistant" in names and names == sorted(names)
    only_api = await agents.ListAgents(
        agent_pb2.ListAgentsRequest(source=agent_pb2.AGENT_SOURCE_API), metadata=auth(token)
    )
    assert {a.source for a in only_api.agents} == {agent_pb2.AGENT_SOURCE_API}
    theirs = await agents.ListAgents(agent_pb2.ListAgentsRequest(), metadata=auth(other_token))
    assert name not in [a.name for a in theirs.agents]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agents.GetAgent(
            agent_pb2.GetAgentRequest(agent_name=name), metadata=auth(other_token)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # A masked update changes only the named fields, sub-paths included.
    updated = (
        await agents.UpdateAgent(
            agent_pb2.UpdateAgentRequest(
                agent=_agent(
                    name,
                    instructions="Now answer in French.",
                    description="ignored: not in the mask",
                    memory=agent_pb2.AgentMemorySettings(last_messages=2),
                ),
                update_mask=field_mask_pb2.FieldMask(
                    paths=["instructions", "memory.last_messages"]
                ),
            ),
            metadata=auth(token),
        )
    ).agent
    assert updated.instructions == "Now answer in French."
    assert updated.description == "adds things"
    assert updated.memory.last_messages == 2 and updated.max_steps == 3
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()

    # Without a mask every field set in `agent` is replaced.
    again = (
        await agents.UpdateAgent(
            agent_pb2.UpdateAgentRequest(agent=_agent(name, tool_names=["word_count"])),
            metadata=auth(token),
        )
    ).agent
    assert list(again.tool_names) == ["word_count"]
    assert again.instructions == "You are a careful calculator." and again.model == "gpt-test"

    with pytest.raises(grpc.aio.AioRpcError) as err:  # not theirs to delete
        await agents.DeleteAgent(
            agent_pb2.DeleteAgentRequest(agent_name=name), metadata=auth(other_token)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await agents.DeleteAgent(agent_pb2.DeleteAgentRequest(agent_name=name), metadata=auth(token))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agents.GetAgent(agent_pb2.GetAgentRequest(agent_name=name), metadata=auth(token))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _documented_defaults(message: str) -> dict[str, float]:
    """{field: N} for each field of `message` whose comment in agent.proto says `Default N.`"""
    proto = (ROOT / "protos/loomwork/v1/agent.proto").read_text()
    body = proto.split(f"message {message} {{", 1)[1].split("\n}", 1)[0]
    defaults: dict[str, float] = {}
    comment = ""
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("//"):
            comment += " " + line.removeprefix("//")
            continue
        field = re.match(r"(?:optional )?\w+ (\w+) = \d+", line)
        said = re.search(r"Default (\d+(?:\.\d+)?)\.", comment)
        if field and said:
            defaults[field.group(1)] = float(said.group(1))
        comment = ""
    return defaults


async def test_memory_settings_left_unset_take_the_defaults_the_proto_documents(
    agents, token
) -> None:
    recall = _documented_defaults("SemanticRecallSettings")
    assert set(recall) == {"top_k", "message_range", "min_score"}
    created = await _create(
        agents,
        token,
        _agent(
            unique("recaller"),
            memory=agent_pb2.AgentMemorySettings(
                semantic_recall=agent_pb2.SemanticRecallSettings(enabled=True)
            ),
        ),
    )
    got = (
        await agents.GetAgent(
            agent_pb2.GetAgentRequest(agent_name=created.name), metadata=auth(token)
        )
    ).agent.memory
    assert {name: getattr(got.semantic_recall, name) for name in recall} == recall
    assert got.last_messages == _documented_defaults("AgentMemorySettings")["last_messages"]


async def test_list_agents_pages(agents, other_token) -> None:
    prefix = unique("page")
    for i in range(5):
        await _create(agents, other_token, _agent(f"{prefix}-{i}"))
    seen: list[str] = []
    token = ""
    tokens: list[str] = []
    while True:
        page = await agents.ListAgents(
            agent_pb2.ListAgentsRequest(
                page_size=2, page_token=token, source=agent_pb2.AGENT_SOURCE_API
            ),
            metadata=auth(other_token),
        )
        assert len(page.agents) <= 2
        seen += [a.name for a in page.agents]
        token = page.next_page_token
        if not token:
            break
        tokens.append(token)
    mine = [n for n in seen if n.startswith(prefix)]
    assert mine == [f"{prefix}-{i}" for i in range(5)]
    assert len(seen) == len(set(seen))
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a token belongs to its own filter
        await agents.ListAgents(
            agent_pb2.ListAgentsRequest(page_token=tokens[0]),
            metadata=auth(other_token),
        )
    assert "page_token" in field_violations(err.value)


async def test_code_agents_are_read_only(agents, token) -> None:
    for call in (
        agents.UpdateAgent(
            agent_pb2.UpdateAgentRequest(agent=_agent("assistant", description="mine now")),
            metadata=auth(token),
        ),
        agents.DeleteAgent(
            agent_pb2.DeleteAgentRequest(agent_name="assistant"), metadata=auth(token)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _create(agents, token, _agent("assistant"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_create_and_update_validate_their_input(agents, token) -> None:
    name = unique("strict")
    cases = [
        (_agent("1-starts-with-a-digit"), "agent.name"),
        (agent_pb2.Agent(name=name), "agent.instructions"),
        (_agent(name, tool_names=["add", "teleport"]), "agent.tool_names[1]"),
        (_agent(name, tool_names=["add", "add"]), "agent.tool_names"),
        (_agent(name, max_steps=101), "agent.max_steps"),
        (_agent(name, output_schema=_struct({"type": "array"})), "agent.output_schema"),
        (
            _agent(name, output_schema=_struct({"type": "object", "properties": 3})),
            "agent.output_schema",
        ),
        (
            _agent(name, memory=agent_pb2.AgentMemorySettings(last_messages=-1)),
            "agent.memory.last_messages",
        ),
        (
            _agent(name, model_settings=run_pb2.ModelSettings(temperature=3.0)),
            "agent.model_settings.temperature",
        ),
    ]
    for agent, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _create(agents, token, agent)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in field_violations(err.value), (field, field_violations(err.value))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agents.CreateAgent(agent_pb2.CreateAgentRequest(), metadata=auth(token))
    assert "agent" in field_violations(err.value)

    await _create(agents, token, _agent(name))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _create(agents, token, _agent(name))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    bad_updates = [
        (
            agent_pb2.UpdateAgentRequest(
                agent=_agent(name), update_mask=field_mask_pb2.FieldMask(paths=["name"])
            ),
            "update_mask.paths[0]",
        ),
        (
            agent_pb2.UpdateAgentRequest(
                agent=_agent(name), update_mask=field_mask_pb2.FieldMask(paths=["memory.nope"])
            ),
            "update_mask",
        ),
        (
            agent_pb2.UpdateAgentRequest(agent=_agent(name, tool_names=["teleport"])),
            "agent.tool_names[0]",
        ),
        (agent_pb2.UpdateAgentRequest(agent=agent_pb2.Agent()), "agent.name"),
    ]
    for request, field in bad_updates:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agents.UpdateAgent(request, metadata=auth(token))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in field_violations(err.value), (field, field_violations(err.value))
    for bad in (agent_pb2.GetAgentRequest(), agent_pb2.DeleteAgentRequest()):
        call = agents.GetAgent if isinstance(bad, agent_pb2.GetAgentRequest) else agents.DeleteAgent
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(bad, metadata=auth(token))
        assert "agent_name" in field_violations(err.value)


async def test_a_stored_agent_runs_end_to_end(agents, token, other_token, model) -> None:
    name = unique("stored")
    await _create(
        agents,
        token,
        _agent(
            name,
            instructions="You add numbers with the add tool.",
            tool_names=["add"],
            model="stored-model",
            model_settings=run_pb2.ModelSettings(temperature=0.25, max_output_tokens=300),
        ),
    )
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("add", {"numbers": [40, 2]})]),
            Turn(text="42."),
        ]
    )
    run = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name=name, prompt="40 + 2?"), metadata=auth(token)
        )
    ).run
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED and run.output.text == "42."
    assert run.temporal_workflow_id.startswith(f"agent/{name}/alpha/")
    first = model.requests[0]
    assert first.messages[0] == {"role": "system", "content": "You add numbers with the add tool."}
    assert first.tool_names == ["add"]
    assert first.model == "stored-model"
    assert first.body["temperature"] == 0.25 and first.body["max_completion_tokens"] == 300

    # An update applies to the next run.
    await agents.UpdateAgent(
        agent_pb2.UpdateAgentRequest(
            agent=_agent(name, instructions="Answer in one word."),
            update_mask=field_mask_pb2.FieldMask(paths=["instructions"]),
        ),
        metadata=auth(token),
    )
    model.set_script([Turn(text="Done.")])
    await agents.Generate(
        agent_pb2.GenerateRequest(agent_name=name, prompt="hi"), metadata=auth(token)
    )
    assert model.requests[-1].messages[0]["content"] == "Answer in one word."

    with pytest.raises(grpc.aio.AioRpcError) as err:  # another tenant cannot run it
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name=name, prompt="hi"), metadata=auth(other_token)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_run_keeps_the_definition_it_started_with(agents, token, model) -> None:
    """Deleted while its run waits for an approval, the agent's run still finishes."""
    name = unique("mailer")
    await _create(
        agents, token, _agent(name, instructions="You send mail.", tool_names=["send_email"])
    )
    model.set_script(
        [
            Turn(
                tool_calls=[
                    ScriptedToolCall(
                        "send_email", {"to": "a@b.c", "subject": "s", "body": "b"}, id="m1"
                    )
                ]
            ),
            Turn(text="Mail sent."),
        ]
    )
    stream = agents.Stream(
        agent_pb2.StreamRequest(agent_name=name, prompt="mail them"), metadata=auth(token)
    )
    events = []
    async for response in stream:
        events.append(response.event)
        if response.event.HasField("approval_requested"):
            await agents.DeleteAgent(
                agent_pb2.DeleteAgentRequest(agent_name=name), metadata=auth(token)
            )
            await agents.ResumeRun(
                agent_pb2.AgentServiceResumeRunRequest(
                    run_id=response.event.run_id,
                    decisions=[agent_pb2.ApprovalDecision(tool_call_id="m1", approve={})],
                ),
                metadata=auth(token),
            )
    assert events[-1].run_finished.output.text == "Mail sent."
    assert model.requests[1].messages[0]["content"] == "You send mail."
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agents.GetAgent(agent_pb2.GetAgentRequest(agent_name=name), metadata=auth(token))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_tools_pages(agents, token) -> None:
    everything = await agents.ListTools(agent_pb2.ListToolsRequest(), metadata=auth(token))
    names = [t.name for t in everything.tools]
    assert names == sorted(names) and {"add", "save_note", "send_email"} <= set(names)
    paged: list[str] = []
    page_token = ""
    while True:
        page = await agents.ListTools(
            agent_pb2.ListToolsRequest(page_size=2, page_token=page_token), metadata=auth(token)
        )
        assert len(page.tools) <= 2
        paged += [t.name for t in page.tools]
        page_token = page.next_page_token
        if not page_token:
            break
    assert paged == names
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agents.ListTools(agent_pb2.ListToolsRequest(page_size=-1), metadata=auth(token))
    assert "page_size" in field_violations(err.value)
