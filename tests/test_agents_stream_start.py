"""Stream answers run_started as the run is accepted, Temporal starting it meanwhile: a
start that fails still reaches the caller as a status, and one client run id is one run
however many calls name it at once."""

from __future__ import annotations

import asyncio

from loomwork.testing import Turn
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc
from tests.support import another_server, auth, own_runtime, unique


async def test_stream_whose_start_temporal_refuses_ends_with_run_failed(
    settings, runtime, token
) -> None:
    # A namespace Temporal does not have: every start is refused.
    async with (
        own_runtime(settings, temporal_namespace=unique("no-such-namespace")) as refusing,
        another_server(refusing) as channel,
    ):
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        events = [
            r.event
            async for r in stub.Stream(
                agent_pb2.StreamRequest(agent_name="assistant", prompt="hello"),
                metadata=auth(token),
                timeout=60,
            )
        ]
    assert [e.WhichOneof("event") for e in events] == ["run_started", "run_failed"]
    assert "Temporal did not start run" in events[-1].run_failed.message
    assert "not found" in events[-1].run_failed.message


async def test_streams_naming_one_client_run_id_at_once_share_one_run(agents, token, model) -> None:
    model.set_script([Turn(text="Only once.", chunk_size=3, chunk_delay=0.02)])
    run_id = unique("job")
    request = agent_pb2.StreamRequest(agent_name="assistant", prompt="once", client_run_id=run_id)

    async def stream() -> list[agent_pb2.AgentRunEvent]:
        return [r.event async for r in agents.Stream(request, metadata=auth(token), timeout=60)]

    first, second = await asyncio.gather(stream(), stream())
    assert first == second
    assert {e.run_id for e in first} == {run_id}
    kinds = [e.WhichOneof("event") for e in first]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert first[-1].run_finished.output.text == "Only once."
    assert len([r for r in model.requests if r.last_user_text == "once"]) == 1
