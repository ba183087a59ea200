"""Agent runs and memory: threads read and saved, working memory and semantic recall,
context token limits and per-call memory settings (the first two on each memory store)."""

from __future__ import annotations

import grpc
import pytest

from loomwork.agents.definitions import AgentDefinition
from loomwork.errors import NotFound
from loomwork.memory.models import RecallScope
from loomwork.memory.settings import MemorySettings, SemanticRecallSettings, WorkingMemorySettings
from loomwork.testing import ScriptedToolCall, Turn
from protos.loomwork.v1 import agent_pb2, memory_pb2
from tests.store_support import StoreService
from tests.support import auth, field_violations, message_text, unique


async def test_runs_read_and_save_thread_memory(store: StoreService, token, model) -> None:
    agents, memory_stub = store.agents, store.memory
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
    assert [message_text(m) for m in stored.messages] == [
        "My name is Ada.",
        "Nice to meet you, Ada.",
        "What is my name?",
        "Your name is Ada.",
    ]


def _register(runtime, agent: AgentDefinition) -> None:
    try:
        runtime.agents.get(agent.name)
    except NotFound:
        runtime.agents.register(agent)


async def test_memory_settings_shape_the_context(store: StoreService, token, model) -> None:
    """Working memory (kept through the built-in tool) and semantic recall across a resource's
    threads reach the model; the run reports how its context was assembled (on each store)."""
    agents = store.agents
    _register(
        store.runtime,
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
