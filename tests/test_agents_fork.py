"""AgentService.ForkRun: a new run takes the steps before the fork point as recorded (no model
call, no tool call again), calls the model from there on, and leaves the original untouched."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner

from clients.cli import register
from loomwork.agents.definitions import AgentDefinition
from loomwork.errors import NotFound
from loomwork.testing import ScriptedToolCall, Turn
from loomwork.tools import Tool, ToolContext
from protos.loomwork.v1 import agent_pb2, message_pb2, run_pb2
from tests.support import auth, field_violations, unique

# Calls of the tool by key: what a side effect would count.
CALLS: Counter[str] = Counter()
AGENT = "fork-counter-agent"


class _Key(BaseModel):
    key: str


async def _count(args: _Key, ctx: ToolContext) -> dict[str, int]:
    CALLS[args.key] += 1
    return {"count": CALLS[args.key]}


@pytest.fixture(scope="session")
def counter_agent(runtime) -> str:
    try:
        runtime.tools.get("fork_count")
    except NotFound:
        runtime.tools.register(
            Tool(name="fork_count", description="Counts a key.", args=_Key, run=_count)
        )
    try:
        runtime.agents.get(AGENT)
    except NotFound:
        runtime.agents.register(
            AgentDefinition(
                name=AGENT, instructions="Count twice, then answer.", tool_names=["fork_count"]
            )
        )
    return AGENT


def _texts(message: message_pb2.Message) -> str:
    return "".join(p.text.text for p in message.parts if p.HasField("text"))


def _message(role: int, text: str) -> message_pb2.Message:
    return message_pb2.Message(
        role=role, parts=[message_pb2.Part(text=message_pb2.TextPart(text=text))]
    )


def _count_call(key: str, call_id: str) -> Turn:
    return Turn(tool_calls=[ScriptedToolCall("fork_count", {"key": key}, id=call_id)])


async def _events(agents, token, run_id: str) -> list[agent_pb2.AgentRunEvent]:
    return [
        r.event
        async for r in agents.WatchRun(
            agent_pb2.AgentServiceWatchRunRequest(run_id=run_id), metadata=auth(token)
        )
    ]


async def _get(agents, token, run_id: str) -> agent_pb2.AgentRun:
    response = await agents.GetRun(
        agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token)
    )
    return response.run


async def _fork(agents, token, run_id: str, from_step: int, **kw) -> agent_pb2.AgentRun:
    response = await agents.ForkRun(
        agent_pb2.AgentServiceForkRunRequest(run_id=run_id, from_step=from_step, **kw),
        metadata=auth(token),
    )
    return response.run


async def _three_steps(agents, token, model, agent: str, key: str) -> agent_pb2.AgentRun:
    """A run of two tool-call steps (the tool counts `key` twice), then an answer."""
    model.set_script([_count_call(key, "c1"), _count_call(key, "c2"), Turn(text="Counted twice.")])
    response = await agents.Generate(
        agent_pb2.GenerateRequest(agent_name=agent, prompt=f"Count {key} twice."),
        metadata=auth(token),
    )
    run = response.run
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert run.output.steps == 3
    assert CALLS[key] == 2
    return run


async def test_a_fork_calls_the_model_only_from_its_fork_point(
    agents, token, model, counter_agent
) -> None:
    key = unique("k")
    original = await _three_steps(agents, token, model, counter_agent, key)
    assert len(model.requests) == 3
    original_events = await _events(agents, token, original.id)
    step_3_usage = next(e.usage for e in original_events if e.HasField("usage") and e.step == 3)

    model.set_script([Turn(text="Counted twice, again.")])
    forked = await _fork(agents, token, original.id, 3)
    assert forked.id != original.id
    assert forked.forked_from == original.id
    assert forked.reused_steps == 2
    events = await _events(agents, token, forked.id)
    forked = await _get(agents, token, forked.id)

    # One model call more, for step 3, on the very conversation the original's step 3 saw;
    # the tool did not run again.
    assert len(model.requests) == 4
    assert model.requests[3].messages == model.requests[2].messages
    assert CALLS[key] == 2
    assert forked.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert forked.output.text == "Counted twice, again."
    assert forked.output.steps == 3
    # Its output: the two reused steps as recorded, then the new answer.
    said = [(m.role, _texts(m)) for m in forked.output.messages]
    assert len(said) == 5
    assert said[-1] == (message_pb2.ROLE_ASSISTANT, "Counted twice, again.")
    assert list(forked.output.messages)[:4] == list(original.output.messages)[:4]
    # Its stream: the reused steps' step_finished events marked reused, with no usage.
    finished = [(e.step, e.step_finished.reused) for e in events if e.HasField("step_finished")]
    assert finished == [(1, True), (2, True), (3, False)]
    reused_usage = [e.step_finished.usage.total_tokens for e in events if e.step_finished.reused]
    assert reused_usage == [0, 0]
    # Its usage: only the one call it made, whose input (the same conversation) cost what
    # the original's step 3 input cost.
    [own_usage] = [e.usage for e in events if e.HasField("usage")]
    assert forked.output.usage == own_usage
    assert own_usage.input_tokens == step_3_usage.input_tokens

    # The original is untouched.
    again = await _get(agents, token, original.id)
    assert again.forked_from == "" and again.reused_steps == 0
    assert again.output.text == "Counted twice."
    assert list(again.output.messages) == list(original.output.messages)


async def test_edited_messages_change_what_the_model_sees_at_the_fork_point(
    agents, token, model, counter_agent
) -> None:
    key = unique("k")
    original = await _three_steps(agents, token, model, counter_agent, key)
    model.requests.clear()
    model.set_script([Turn(text="Counted once.")])
    edited = message_pb2.Message(
        role=message_pb2.ROLE_USER,
        parts=[message_pb2.Part(text=message_pb2.TextPart(text="Stop."))],
    )
    forked = await _fork(agents, token, original.id, 2, edited_messages=[edited])
    await _events(agents, token, forked.id)
    forked = await _get(agents, token, forked.id)

    assert len(model.requests) == 1
    seen = model.requests[0].messages
    assert seen[0]["role"] == "system" and "Count twice" in str(seen[0]["content"])
    assert [(m["role"], m["content"]) for m in seen[1:]] == [("user", "Stop.")]
    assert CALLS[key] == 2
    assert forked.reused_steps == 1
    assert forked.output.text == "Counted once."
    assert forked.output.steps == 2


async def test_fork_errors_name_the_field(agents, token, other_token, model, counter_agent) -> None:
    key = unique("k")
    original = await _three_steps(agents, token, model, counter_agent, key)
    model.requests.clear()
    for step in (4, 0):  # never reached; not a step at all
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _fork(agents, token, original.id, step)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "from_step" in field_violations(caught.value)
    system = _message(message_pb2.ROLE_SYSTEM, "x")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _fork(agents, token, original.id, 2, edited_messages=[system])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "edited_messages[0].role" in field_violations(caught.value)
    # Another tenant's run is not found, and nothing is started for it.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _fork(agents, other_token, original.id, 2)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(model.requests) == 0
    assert CALLS[key] == 2


async def test_the_cli_forks_a_run_and_follows_it(
    agents, token, grpc_address, model, counter_agent
) -> None:
    key = unique("k")
    original = await _three_steps(agents, token, model, counter_agent, key)
    model.set_script([Turn(text="Forked from the command line.")])
    app = typer.Typer()
    register(app)
    runner = CliRunner(
        env={"LOOMWORK_GRPC_ADDRESS": grpc_address, "LOOMWORK_TOKEN": token, "COLUMNS": "200"}
    )
    forked = await asyncio.to_thread(
        runner.invoke, app, ["agents", "fork", original.id, "3", "--follow"]
    )
    assert forked.exit_code == 0, forked.output
    assert "2 steps reused" in forked.stdout
    assert "step 1 reused from the forked run" in forked.stdout
    assert "Forked from the command line." in forked.stdout
    new_id = forked.stdout.split(" as run ")[1].split()[0]
    shown = await asyncio.to_thread(runner.invoke, app, ["agents", "get", new_id])
    assert shown.exit_code == 0, shown.output
    assert f"forked from run {original.id} (2 steps reused)" in shown.stdout
    assert CALLS[key] == 2


async def test_a_fork_of_a_fork_reuses_what_its_original_reused(
    agents, token, model, counter_agent
) -> None:
    key = unique("k")
    original = await _three_steps(agents, token, model, counter_agent, key)
    model.set_script([Turn(text="First fork.")])
    first = await _fork(agents, token, original.id, 3)
    await _events(agents, token, first.id)
    model.requests.clear()
    model.set_script([Turn(text="Second fork.")])
    second = await _fork(agents, token, first.id, 3)
    events = await _events(agents, token, second.id)
    second = await _get(agents, token, second.id)
    assert len(model.requests) == 1 and CALLS[key] == 2
    assert second.forked_from == first.id and second.reused_steps == 2
    assert second.output.text == "Second fork."
    assert list(second.output.messages)[:4] == list(original.output.messages)[:4]
    finished = [(e.step, e.step_finished.reused) for e in events if e.HasField("step_finished")]
    assert finished == [(1, True), (2, True), (3, False)]
    # Its step 2 was reused, not run: the run it came from is the one to fork there.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _fork(agents, token, first.id, 2)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert original.id in (caught.value.details() or "")
