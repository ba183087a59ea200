"""Agent runs end to end: gRPC → Temporal workflow → model (scripted, over real HTTP with the
real openai client) → tool activities → memory, streamed live through Redis."""

from __future__ import annotations

import asyncio
import shutil
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from loomwork.agents.definitions import AgentDefinition
from loomwork.errors import NotFound
from loomwork.memory.models import RecallScope
from loomwork.memory.settings import (
    MemorySettings,
    SemanticRecallSettings,
    WorkingMemorySettings,
)
from loomwork.messages import ToolCallPart
from loomwork.testing import Delay, Failure, ScriptedToolCall, Turn
from loomwork.tools import ToolContext
from protos.loomwork.v1 import agent_pb2, memory_pb2, message_pb2, run_pb2
from tests.support import auth, field_violations, unique, wait_agent_run_finished


def _texts(message: message_pb2.Message) -> str:
    return "".join(p.text.text for p in message.parts if p.HasField("text"))


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


async def test_stream_sends_numbered_events_live_and_watch_resumes(
    agents, token, other_token, model
) -> None:
    # Chunks that arrive apart are published apart (ones that arrive together may be merged).
    model.set_script(
        [Turn(text="Streaming is fun to watch, token by token.", chunk_size=5, chunk_delay=0.02)]
    )
    events = []
    async for response in agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="Say something"),
        metadata=auth(token),
    ):
        events.append(response.event)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("text_delta") >= 5
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    streamed = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    assert streamed == "Streaming is fun to watch, token by token."
    assert events[-1].run_finished.output.text == streamed

    run_id = events[0].run_id
    watched = [
        r.event
        async for r in agents.WatchRun(
            agent_pb2.AgentServiceWatchRunRequest(run_id=run_id, after_event_id=3),
            metadata=auth(token),
        )
    ]
    assert [e.event_id for e in watched] == [e.event_id for e in events[3:]]
    assert watched == events[3:]

    for bad_token, bad_run in ((other_token, run_id), (token, "run_unknown")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in agents.WatchRun(
                agent_pb2.AgentServiceWatchRunRequest(run_id=bad_run), metadata=auth(bad_token)
            ):
                pass
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_runs_read_and_save_thread_memory(agents, memory_stub, token, model) -> None:
    thread_id = unique("chat")
    model.set_script([Turn(text="Nice to meet you, Ada."), Turn(text="Your name is Ada.")])
    for prompt in ("My name is Ada.", "What is my name?"):
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt=prompt, thread_id=thread_id),
            metadata=auth(token),
        )
    # The second call's model request carried the first exchange from memory.
    contents = [m.get("content") for m in model.requests[1].messages]
    assert contents[1:] == [
        "My name is Ada.",
        "Nice to meet you, Ada.",
        "What is my name?",
    ]
    stored = await memory_stub.ListMessages(
        memory_pb2.ListMessagesRequest(thread_id=thread_id), metadata=auth(token)
    )
    assert [_texts(m) for m in stored.messages] == [
        "My name is Ada.",
        "Nice to meet you, Ada.",
        "What is my name?",
        "Your name is Ada.",
    ]


async def test_client_run_id_makes_generate_idempotent(agents, token, model) -> None:
    model.set_script([Turn(text="Once.")])
    request = agent_pb2.GenerateRequest(
        agent_name="assistant", prompt="hi", client_run_id=unique("job")
    )
    first = await agents.Generate(request, metadata=auth(token))
    again = await agents.Generate(request, metadata=auth(token))
    assert again.run.id == first.run.id == request.client_run_id
    assert again.run.output.text == "Once."
    assert len(model.requests) == 1


async def test_client_run_id_of_a_run_temporal_no_longer_keeps_is_not_run_again(
    agents, token, model, runtime
) -> None:
    """Days later, Temporal's retention has dropped the ended run (the directory still says
    its start reached Temporal): a repeat of its client run id (a client retrying late) is
    refused rather than run again, so the model is not asked and no tool runs twice."""
    from loomwork.agents.directory import RunDirectory

    directory = RunDirectory(runtime.redis)
    model.set_script([Turn(text="Done once.")])
    ran = unique("job")
    request = agent_pb2.GenerateRequest(agent_name="assistant", prompt="hi", client_run_id=ran)
    assert (await agents.Generate(request, metadata=auth(token))).run.output.text == "Done once."
    assert await directory.was_started("alpha", ran)
    # What the directory holds of such a run once Temporal dropped it.
    run_id = unique("job")
    await directory.record("alpha", run_id, f"agent/assistant/alpha/{run_id}")
    await directory.mark_started("alpha", run_id)
    stream = agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="hi", client_run_id=run_id),
        metadata=auth(token),
    )
    generate = agents.Generate(
        agent_pb2.GenerateRequest(agent_name="assistant", prompt="hi", client_run_id=run_id),
        metadata=auth(token),
    )
    for call in (generate, _collect(stream)):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "client_run_id" in (error.value.details() or "")
        assert "no longer kept by Temporal" in (error.value.details() or "")
    assert len(model.requests) == 1


async def test_client_run_id_whose_first_start_failed_runs_with_its_thread(
    agents, memory_stub, token, model, runtime
) -> None:
    """The first call recorded the run, then failed to start it: the repeat starts it as a
    first call would, with its thread (not as a join of a run that does not exist)."""
    from loomwork.agents.directory import RunDirectory

    run_id, thread_id = unique("job"), unique("chat")
    await RunDirectory(runtime.redis).record("alpha", run_id, f"agent/assistant/alpha/{run_id}")
    model.set_script([Turn(text="Kept.")])
    request = agent_pb2.GenerateRequest(
        agent_name="assistant", prompt="remember this", client_run_id=run_id, thread_id=thread_id
    )
    run = (await agents.Generate(request, metadata=auth(token))).run
    assert run.id == run_id and run.thread_id == thread_id
    assert run.output.text == "Kept."
    stored = await memory_stub.ListMessages(
        memory_pb2.ListMessagesRequest(thread_id=thread_id), metadata=auth(token)
    )
    assert [_texts(m) for m in stored.messages] == ["remember this", "Kept."]


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
    assert [e.step_retrying.attempt for e in events if e.HasField("step_retrying")] == [2, 3]
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


async def _wait_waiting(agents, token, run_id: str) -> agent_pb2.AgentRun:
    for _ in range(200):
        try:
            run = (
                await agents.GetRun(
                    agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token)
                )
            ).run
        except grpc.aio.AioRpcError as err:  # the run may not be recorded yet
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
        else:
            if run.status == run_pb2.RUN_STATUS_WAITING:
                return run
        await asyncio.sleep(0.05)
    pytest.fail("the run never waited for approval")


_EMAIL = {"to": "ada@example.com", "subject": "Hi", "body": "Hello Ada"}


async def test_approval_by_resume_run_with_edited_arguments(agents, token, model) -> None:
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("send_email", _EMAIL, id="call_mail")]),
            Turn(text="Sent."),
        ]
    )
    run_id = unique("mail")
    stream = agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="mail Ada", client_run_id=run_id),
        metadata=auth(token),
    )
    collected = asyncio.ensure_future(_collect(stream))
    waiting = await _wait_waiting(agents, token, run_id)
    [pending] = waiting.pending_approvals
    assert (pending.tool_call_id, pending.tool_name) == ("call_mail", "send_email")
    assert pending.arguments["to"] == "ada@example.com"

    async def resume(*decisions: agent_pb2.ApprovalDecision):
        return await agents.ResumeRun(
            agent_pb2.AgentServiceResumeRunRequest(run_id=run_id, decisions=decisions),
            metadata=auth(token),
        )

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await resume(agent_pb2.ApprovalDecision(tool_call_id="call_other", approve={}))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    bad = struct_pb2.Struct()
    bad.update({**_EMAIL, "to": "not-an-address"})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await resume(
            agent_pb2.ApprovalDecision(
                tool_call_id="call_mail", approve=agent_pb2.ToolCallApproval(edited_arguments=bad)
            )
        )
    assert "decisions[0].approve.edited_arguments" in field_violations(err.value)

    edited = struct_pb2.Struct()
    edited.update({**_EMAIL, "to": "bob@example.com"})
    answer = await resume(
        agent_pb2.ApprovalDecision(
            tool_call_id="call_mail", approve=agent_pb2.ToolCallApproval(edited_arguments=edited)
        )
    )
    assert answer.run.status != run_pb2.RUN_STATUS_WAITING
    events = await collected
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds.index("approval_requested") < kinds.index("approval_resolved")
    resolved = next(e.approval_resolved for e in events if e.HasField("approval_resolved"))
    assert resolved.approved and resolved.arguments_edited
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert not result.is_error and result.result.struct_value["to"] == "bob@example.com"
    assert events[-1].run_finished.output.text == "Sent."


async def test_rejection_by_plain_temporal_signal(agents, token, model, runtime, settings) -> None:
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("send_email", _EMAIL, id="call_x")]),
            Turn(text="Understood, I did not send it."),
        ]
    )
    run_id = unique("mail")
    # Generate answers as soon as the run stops for approval.
    waiting = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="mail", client_run_id=run_id),
            metadata=auth(token),
        )
    ).run
    assert waiting.status == run_pb2.RUN_STATUS_WAITING
    assert [p.tool_call_id for p in waiting.pending_approvals] == ["call_x"]
    payload = '{"decisions": [{"tool_call_id": "call_x", "approve": false, "reason": "not now"}]}'
    proc = await asyncio.create_subprocess_exec(
        _temporal_cli(),
        "workflow",
        "signal",
        "--address",
        settings.temporal_address,
        "--workflow-id",
        waiting.temporal_workflow_id,
        "--name",
        "resume",
        "--input",
        payload,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    run = await wait_agent_run_finished(agents, token, run_id)
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    rejected = run.output.messages[1].parts[0].tool_result
    assert rejected.is_error and "not now" in rejected.result.string_value
    assert run.output.text == "Understood, I did not send it."


async def test_cancel_run_stops_the_model_call(agents, token, model) -> None:
    model.set_script([Delay(30, then=Turn(text="too late"))])
    run_id = unique("long")
    stream = agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="think", client_run_id=run_id),
        metadata=auth(token),
    )
    collected = asyncio.ensure_future(_collect(stream))
    for _ in range(200):
        if model.requests:
            break
        await asyncio.sleep(0.05)
    cancelled = await agents.CancelRun(
        agent_pb2.AgentServiceCancelRunRequest(run_id=run_id, reason="user left"),
        metadata=auth(token),
    )
    assert cancelled.run.id == run_id
    events = await asyncio.wait_for(collected, 20)
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_CANCELED
    final = (
        await agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token)
        )
    ).run
    assert final.status == run_pb2.RUN_STATUS_CANCELED
    assert final.output.finish_reason == agent_pb2.AGENT_FINISH_REASON_CANCELED
    for _ in range(100):  # the in-flight HTTP call was aborted, not left to finish
        if model.requests[0].disconnected:
            break
        await asyncio.sleep(0.05)
    assert model.requests[0].disconnected
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agents.CancelRun(
            agent_pb2.AgentServiceCancelRunRequest(run_id=run_id), metadata=auth(token)
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def _collect(stream) -> list[agent_pb2.AgentRunEvent]:
    return [response.event async for response in stream]


def _temporal_cli() -> str:
    found = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    assert Path(found).exists()
    return found


def _register(runtime, agent: AgentDefinition) -> None:
    try:
        runtime.agents.get(agent.name)
    except NotFound:
        runtime.agents.register(agent)


async def test_memory_settings_shape_the_context(agents, token, model, runtime) -> None:
    """Working memory (kept through the built-in tool) and semantic recall across a resource's
    threads reach the model; the run reports how its context was assembled."""
    _register(
        runtime,
        AgentDefinition(
            name="rememberer",
            instructions="You remember users.",
            memory=MemorySettings(
                last_messages=4,
                semantic_recall=SemanticRecallSettings(
                    top_k=3, message_range=0, scope=RecallScope.RESOURCE
                ),
                working_memory=WorkingMemorySettings(
                    template="# User\n- favourite colour:\n", scope=RecallScope.RESOURCE
                ),
            ),
        ),
    )
    resource = unique("person")
    model.set_script(
        [
            Turn(
                tool_calls=[
                    ScriptedToolCall(
                        "update_working_memory", {"markdown": "# User\n- favourite colour: teal"}
                    )
                ]
            ),
            Turn(text="Noted."),
            Turn(text="You like teal."),
        ]
    )
    first = await agents.Generate(
        agent_pb2.GenerateRequest(
            agent_name="rememberer", prompt="My favourite colour is teal.", resource_id=resource
        ),
        metadata=auth(token),
    )
    assert first.run.output.messages[1].parts[0].tool_result.result.struct_value["updated"]
    assert "update_working_memory" in model.requests[0].tool_names
    assert "favourite colour:\n" in model.requests[0].messages[0]["content"]  # the template

    second = await agents.Generate(
        agent_pb2.GenerateRequest(
            agent_name="rememberer", prompt="Which colour do I like best?", resource_id=resource
        ),
        metadata=auth(token),
    )
    assert second.run.thread_id != first.run.thread_id  # a new thread of the same resource
    sent = model.requests[2].messages
    assert "favourite colour: teal" in sent[0]["content"]  # working memory, resource-scoped
    assert any(m.get("content") == "My favourite colour is teal." for m in sent[1:])  # recalled
    context = second.run.output.context
    assert context.messages_recalled >= 1 and context.tokens_in_context > 0


async def test_context_token_limit_trims_oldest_messages(agents, token, model, runtime) -> None:
    _register(
        runtime,
        AgentDefinition(
            name="forgetful",
            instructions="Be brief.",
            memory=MemorySettings(last_messages=50, context_token_limit=60),
        ),
    )
    thread_id = unique("long-chat")
    model.set_script([Turn(text=f"answer {i}") for i in range(4)])
    for i in range(4):
        run = (
            await agents.Generate(
                agent_pb2.GenerateRequest(
                    agent_name="forgetful",
                    prompt=f"question number {i} with a few more words in it",
                    thread_id=thread_id,
                ),
                metadata=auth(token),
            )
        ).run
    assert run.output.context.messages_trimmed > 0
    assert run.output.context.tokens_in_context <= 60
    last_request = model.requests[-1].messages
    assert last_request[-1]["content"] == "question number 3 with a few more words in it"
    assert len(last_request) < 1 + 7  # system + fewer than all 7 earlier messages + the new one


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


async def test_repeated_client_run_id_creates_no_second_thread(
    agents, memory_stub, token, model
) -> None:
    model.set_script([Turn(text="Hello.")])
    resource = unique("who")
    request = agent_pb2.GenerateRequest(
        agent_name="assistant", prompt="hi", resource_id=resource, client_run_id=unique("job")
    )
    first = await agents.Generate(request, metadata=auth(token))
    again = await agents.Generate(request, metadata=auth(token))
    assert again.run.thread_id == first.run.thread_id != ""
    threads = await memory_stub.ListThreads(
        memory_pb2.ListThreadsRequest(resource_id=resource), metadata=auth(token)
    )
    assert [t.id for t in threads.threads] == [first.run.thread_id]


async def test_per_call_memory_override(agents, token, model) -> None:
    """A call can switch memory features for itself: here last_messages=0 hides the history
    and working memory is turned on with a template of the caller's choosing."""
    thread_id = unique("override")
    model.set_script([Turn(text="first answer"), Turn(text="second answer")])
    await agents.Generate(
        agent_pb2.GenerateRequest(agent_name="assistant", prompt="first", thread_id=thread_id),
        metadata=auth(token),
    )
    override = agent_pb2.AgentMemorySettings(
        last_messages=0,
        working_memory=agent_pb2.WorkingMemorySettings(
            enabled=True, scope=memory_pb2.MEMORY_SCOPE_THREAD, template="# Trip\n- city:\n"
        ),
    )
    await agents.Generate(
        agent_pb2.GenerateRequest(
            agent_name="assistant", prompt="second", thread_id=thread_id, memory=override
        ),
        metadata=auth(token),
    )
    sent = model.requests[1]
    assert [m.get("content") for m in sent.messages[1:]] == ["second"]  # no history
    assert "# Trip\n- city:" in sent.messages[0]["content"]
    assert "update_working_memory" in sent.tool_names

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agents.Generate(
            agent_pb2.GenerateRequest(
                agent_name="assistant",
                prompt="x",
                memory=agent_pb2.AgentMemorySettings(last_messages=5000),
            ),
            metadata=auth(token),
        )
    assert "memory.last_messages" in field_violations(err.value)


async def test_structured_working_memory_follows_its_json_schema(
    agents, token, model, runtime, memory_stub
) -> None:
    """Data that breaks the agent's working-memory schema goes back to the model as an error
    naming the field, and is not stored; data that fits is."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name"],
    }
    _register(
        runtime,
        AgentDefinition(
            name="profiler",
            instructions="Keep a profile of the user.",
            memory=MemorySettings(
                working_memory=WorkingMemorySettings(json_schema=schema, scope=RecallScope.THREAD)
            ),
        ),
    )
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("update_working_memory", {"data": {"age": -3}})]),
            Turn(
                tool_calls=[
                    ScriptedToolCall("update_working_memory", {"data": {"name": "Ada", "age": 36}})
                ]
            ),
            Turn(text="Saved."),
        ]
    )
    thread = (
        await memory_stub.CreateThread(memory_pb2.CreateThreadRequest(), metadata=auth(token))
    ).thread
    run = (
        await agents.Generate(
            agent_pb2.GenerateRequest(
                agent_name="profiler", prompt="I am Ada, 36.", thread_id=thread.id
            ),
            metadata=auth(token),
        )
    ).run
    results = [
        part.tool_result
        for message in run.output.messages
        for part in message.parts
        if part.HasField("tool_result")
    ]
    rejected = results[0]
    assert rejected.is_error
    text = rejected.result.string_value
    assert "data.age" in text and "data" in text and "'name' is a required property" in text
    assert not results[1].is_error
    stored = await memory_stub.GetWorkingMemory(
        memory_pb2.GetWorkingMemoryRequest(
            scope=memory_pb2.MEMORY_SCOPE_THREAD, thread_id=thread.id
        ),
        metadata=auth(token),
    )
    assert dict(stored.working_memory.data) == {"name": "Ada", "age": 36}


async def test_watch_after_events_expired_sends_the_terminal_event(
    agents, token, model, runtime
) -> None:
    from loomwork.agents.steps import event_log_key

    model.set_script([Turn(text="Short answer.")])
    run = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="hi"), metadata=auth(token)
        )
    ).run
    every = await _collect(
        agents.WatchRun(agent_pb2.AgentServiceWatchRunRequest(run_id=run.id), metadata=auth(token))
    )
    terminal = every[-1]
    assert terminal.HasField("run_finished")
    # What the retention TTL does a day after the run ended.
    key = event_log_key("alpha", run.id)
    await runtime.redis.delete(runtime.events.meta_key(key), runtime.events.stream_key(key))
    rebuilt = await asyncio.wait_for(
        _collect(
            agents.WatchRun(
                agent_pb2.AgentServiceWatchRunRequest(run_id=run.id), metadata=auth(token)
            )
        ),
        30,
    )
    assert [e.event_id for e in rebuilt] == [terminal.event_id]
    assert rebuilt[0].run_finished == terminal.run_finished
    after = agent_pb2.AgentServiceWatchRunRequest(run_id=run.id, after_event_id=terminal.event_id)
    assert await _collect(agents.WatchRun(after, metadata=auth(token))) == []
    got = await agents.GetRun(
        agent_pb2.AgentServiceGetRunRequest(run_id=run.id), metadata=auth(token)
    )
    assert got.run.last_event_id == terminal.event_id == run.last_event_id


async def test_a_run_without_a_thread_is_not_offered_the_working_memory_tool(
    agents, token, model, runtime
) -> None:
    _register(
        runtime,
        AgentDefinition(
            name="noter",
            instructions="Keep notes.",
            memory=MemorySettings(
                working_memory=WorkingMemorySettings(template="# Notes\n", scope=RecallScope.THREAD)
            ),
        ),
    )
    model.set_script([Turn(text="ok")])
    await agents.Generate(
        agent_pb2.GenerateRequest(agent_name="noter", prompt="hi"), metadata=auth(token)
    )
    assert "update_working_memory" not in model.requests[-1].tool_names  # nowhere to keep it


async def test_watch_skips_an_event_kind_this_server_does_not_know(agents, token, runtime) -> None:
    """During a rolling upgrade a newer server may publish a kind of event an older one cannot
    read: it is left out (with a warning), and the rest of the run still arrives."""
    from loomwork.agents.directory import RunDirectory
    from loomwork.agents.events import RunFinished, RunStarted, encode_event
    from loomwork.agents.run_models import RunOutcome
    from loomwork.agents.steps import event_log_key

    run_id = f"run_future_{uuid.uuid4().hex[:8]}"
    key = event_log_key("alpha", run_id)
    await RunDirectory(runtime.redis).record("alpha", run_id, f"agent/assistant/alpha/{run_id}")
    started = RunStarted(agent_name="assistant", model="scripted", max_steps=1)
    await runtime.events.append(key, encode_event(started))
    await runtime.events.append(key, b'{"type": "from_the_future", "step": 0}')
    outcome = RunOutcome(
        run_id=run_id, agent_name="assistant", status="succeeded", finish_reason="stop"
    )
    await runtime.events.append(key, encode_event(RunFinished(outcome=outcome)), terminal=True)

    watched = await asyncio.wait_for(
        _collect(
            agents.WatchRun(
                agent_pb2.AgentServiceWatchRunRequest(run_id=run_id), metadata=auth(token)
            )
        ),
        30,
    )
    assert [(e.event_id, e.WhichOneof("event")) for e in watched] == [
        (1, "run_started"),
        (3, "run_finished"),
    ]
