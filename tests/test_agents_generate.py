"""Agent runs end to end: gRPC → Temporal workflow → model (scripted, over real HTTP with the
real openai client) → tool activities. Listing, tool calls, model failures and retries,
input validation, step limits."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest

from loomwork.messages import ToolCallPart
from loomwork.testing import Delay, Failure, ScriptedToolCall, Turn
from loomwork.tools import ToolContext
from protos.loomwork.v1 import agent_pb2, message_pb2, run_pb2
from tests.support import auth, field_violations, unique
from workflows.retries import MODEL_CALL


async def test_code_agents_and_tools_are_listed(agents, token) -> None:
    listed = await agents.ListAgents(agent_pb2.ListAgentsRequest(), metadata=auth(token))
    assistant = next(a for a in listed.agents if a.name == "assistant")
    assert assistant.source == agent_pb2.AGENT_SOURCE_CODE
    assert set(assistant.tool_names) == {"add", "word_count", "save_note", "send_email"}
    assert next(
        t
        for t in (await agents.ListTools(agent_pb2.ListToolsRequest(), metadata=auth(token))).tools
        if t.name == "send_email"
    ).requires_approval
    tools = await agents.ListTools(agent_pb2.ListToolsRequest(), metadata=auth(token))
    add = next(t for t in tools.tools if t.name == "add")
    assert "numbers" in add.parameters_schema["properties"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agents.GetAgent(agent_pb2.GetAgentRequest(agent_name="nope"), metadata=auth(token))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_generate_calls_a_tool_and_answers(agents, token, model) -> None:
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("add", {"numbers": [2, 3.5]})]),
            Turn(text="The sum is 5.5."),
        ]
    )
    response = await agents.Generate(
        agent_pb2.GenerateRequest(agent_name="assistant", prompt="What is 2 + 3.5?"),
        metadata=auth(token),
    )
    run = response.run
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert run.output.text == "The sum is 5.5."
    assert run.output.finish_reason == agent_pb2.AGENT_FINISH_REASON_STOP
    assert run.output.steps == 2
    assert run.output.usage.total_tokens > 0
    assert run.temporal_workflow_id.startswith("agent/assistant/alpha/run_")
    roles = [m.role for m in run.output.messages]
    assert roles == [message_pb2.ROLE_ASSISTANT, message_pb2.ROLE_TOOL, message_pb2.ROLE_ASSISTANT]
    result = run.output.messages[1].parts[0].tool_result
    assert not result.is_error and result.result.struct_value["sum"] == 5.5

    first, second = model.requests
    assert {"add", "word_count"} <= set(first.tool_names)
    assert first.messages[0]["role"] == "system"
    assert first.messages[-1] == {"role": "user", "content": "What is 2 + 3.5?"}
    assert second.messages[-1]["role"] == "tool" and "5.5" in second.messages[-1]["content"]


async def test_invalid_tool_arguments_go_back_to_the_model(agents, token, model) -> None:
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("add", {"numbers": "two and three"})]),
            Turn(tool_calls=[ScriptedToolCall("subtract", {"a": 1})]),
            Turn(text="Sorry, I could not add those."),
        ]
    )
    response = await agents.Generate(
        agent_pb2.GenerateRequest(agent_name="assistant", prompt="add two and three"),
        metadata=auth(token),
    )
    run = response.run
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    bad_args, unknown = (run.output.messages[1].parts[0], run.output.messages[3].parts[0])
    assert bad_args.tool_result.is_error and "numbers" in bad_args.tool_result.result.string_value
    assert (
        unknown.tool_result.is_error and "unknown tool" in unknown.tool_result.result.string_value
    )
    assert "invalid arguments" in model.requests[1].messages[-1]["content"]


async def test_model_rejection_fails_the_run_with_the_models_message(agents, token, model) -> None:
    model.set_script([Failure(status=400, message="context length exceeded")])
    response = await agents.Generate(
        agent_pb2.GenerateRequest(agent_name="assistant", prompt="hi"), metadata=auth(token)
    )
    run = response.run
    assert run.status == run_pb2.RUN_STATUS_FAILED
    assert run.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert run.error.reason == "MODEL_REQUEST_REJECTED"
    assert "context length exceeded" in run.error.message
    assert len(model.requests) == 1, "a 400 is not retried"


async def test_rate_limit_is_retried_by_temporal(agents, token, model) -> None:
    model.set_script(
        [
            Turn(text="partial", abort_after_chunks=1),  # the stream breaks mid-way
            Failure(status=429, message="slow down", retry_after=0.2),
            Turn(text="ok"),
        ]
    )
    events = [
        r.event
        async for r in agents.Stream(
            agent_pb2.StreamRequest(agent_name="assistant", prompt="hi"), metadata=auth(token)
        )
    ]
    kinds = [e.WhichOneof("event") for e in events]
    # Each retry is announced, so a client drops the deltas it got from the failed attempt.
    retries = [e.step_retrying for e in events if e.HasField("step_retrying")]
    assert [r.attempt for r in retries] == [2, 3]
    # ... saying what failed and how long until the next attempt: the step's retry policy
    # after the broken stream, the model's Retry-After after the 429.
    broken, limited = retries
    assert (broken.error.code, broken.error.reason) == (
        grpc.StatusCode.UNAVAILABLE.value[0],
        "MODEL_UNAVAILABLE",
    )
    assert broken.backoff.ToTimedelta() == MODEL_CALL.initial_interval
    assert (limited.error.code, limited.error.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        "MODEL_RATE_LIMITED",
    )
    assert "slow down" in limited.error.message
    assert limited.backoff.ToTimedelta() == timedelta(seconds=0.2)
    after_last_retry = kinds[len(kinds) - 1 - kinds[::-1].index("step_retrying") :]
    text = "".join(
        e.text_delta.text
        for e in events[len(events) - len(after_last_retry) :]
        if e.HasField("text_delta")
    )
    assert text == "ok" and events[-1].run_finished.output.text == "ok"
    assert len(model.requests) == 3


async def test_generate_validates_its_input(agents, token) -> None:
    cases = [
        (agent_pb2.GenerateRequest(prompt="hi"), "agent_name"),
        (agent_pb2.GenerateRequest(agent_name="assistant"), "prompt"),
        (
            agent_pb2.GenerateRequest(
                agent_name="assistant",
                prompt="hi",
                messages=[message_pb2.Message(role=message_pb2.ROLE_USER)],
            ),
            "prompt",
        ),
        (
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="hi", max_steps=500),
            "max_steps",
        ),
        (
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="hi", client_run_id="a b"),
            "client_run_id",
        ),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agents.Generate(request, metadata=auth(token))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in field_violations(err.value), field
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name="ghost", prompt="hi"), metadata=auth(token)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_tool_writes_happen_once_per_call_even_when_retried(
    agents, token, model, runtime
) -> None:
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("save_note", {"title": "milk", "body": "buy 2"})]),
            Turn(text="Saved."),
        ]
    )
    run = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="note: buy 2 milk"),
            metadata=auth(token),
        )
    ).run
    assert run.output.text == "Saved."
    note_id = run.output.messages[1].parts[0].tool_result.result.struct_value["note_id"]
    call = run.output.messages[0].parts[0].tool_call

    # A retried activity (e.g. the worker died after the insert) runs the tool again with the
    # same run id and tool call id: it must find the first write, not make a second.
    context = ToolContext(tenant="alpha", run_id=run.id, tool_call_id=call.tool_call_id)
    again = await runtime.tools.call(
        ToolCallPart(
            tool_call_id=call.tool_call_id,
            tool_name="save_note",
            arguments={"title": "milk", "body": "buy 2"},
        ),
        context,
        allowed=["save_note"],
    )
    assert again.result["note_id"] == note_id
    async with runtime.db.connection() as conn:
        cur = await conn.execute(
            "select count(*) as n from notes where tenant_id = 'alpha' and idempotency_key = %s",
            (context.idempotency_key,),
        )
        assert (await cur.fetchone())["n"] == 1


async def test_max_steps_ends_the_run(agents, token, model) -> None:
    model.set_script([Turn(tool_calls=[ScriptedToolCall("add", {"numbers": [1, 1]})])] * 2)
    run = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="loop", max_steps=2),
            metadata=auth(token),
        )
    ).run
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert run.output.finish_reason == agent_pb2.AGENT_FINISH_REASON_MAX_STEPS
    assert run.output.steps == 2 and len(model.requests) == 2


async def test_generate_skips_an_event_kind_this_server_does_not_know(
    agents, token, model, runtime
) -> None:
    """During a rolling upgrade a newer worker may publish a kind of event this server cannot
    read: Generate leaves it out, as streams do, and answers with the run."""
    from loomwork.agents.run_start import event_log_key

    model.set_script([Delay(1.0, then=Turn(text="done"))])
    run_id = unique("newer")
    call = asyncio.ensure_future(
        agents.Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="hi", client_run_id=run_id),
            metadata=auth(token),
        )
    )
    for _ in range(200):  # the run is under way: its model call was made
        if model.requests:
            break
        await asyncio.sleep(0.05)
    await runtime.events.publish(
        event_log_key("alpha", run_id), b'{"type": "from_a_newer_server", "step": 1}'
    )
    run = (await asyncio.wait_for(call, 30)).run
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert run.output.text == "done"
