"""Agent runs started with a client run id: idempotent, never run twice after Temporal
dropped them, started by the repeat when the first start failed, one thread."""

from __future__ import annotations

import grpc
import pytest

from loomwork.testing import Turn
from protos.loomwork.v1 import agent_pb2, memory_pb2
from tests.support import auth, collect_events, message_text, unique


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
    for call in (generate, collect_events(stream)):
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
    assert [message_text(m) for m in stored.messages] == ["remember this", "Kept."]


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
