"""A run is found from durable state: when Redis loses a run's keys (a restart without
persistence, a failover, FLUSHALL, or its 7 days), Temporal visibility still knows it."""

from __future__ import annotations

import grpc
import pytest
from redis.asyncio import Redis

from loomwork.testing import ScriptedToolCall, Turn
from protos.loomwork.v1 import agent_pb2, run_pb2
from server.runtime import Runtime
from tests.support import auth, unique

EMAIL = {"to": "ada@example.com", "subject": "Hi", "body": "Hello Ada"}


async def _forget(redis: Redis, run_id: str) -> int:
    """Delete every Redis key of the run (its directory entry and its event log)."""
    keys = [key async for key in redis.scan_iter(match=f"*{run_id}*")]
    if keys:
        await redis.delete(*keys)
    return len(keys)


async def test_a_waiting_agent_run_is_found_and_resumed_after_redis_lost_its_keys(
    agents, token, model, runtime: Runtime
) -> None:
    model.set_script(
        [Turn(tool_calls=[ScriptedToolCall("send_email", EMAIL, id="call_mail")]), "Sent."]
    )
    run_id = unique("outlives")
    started = await agents.Generate(
        agent_pb2.GenerateRequest(agent_name="assistant", prompt="mail Ada", client_run_id=run_id),
        metadata=auth(token),
    )
    assert started.run.status == run_pb2.RUN_STATUS_WAITING
    assert await _forget(runtime.redis, run_id) >= 2  # the directory entry and the event log

    found = await agents.GetRun(
        agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token)
    )
    assert found.run.status == run_pb2.RUN_STATUS_WAITING
    [pending] = found.run.pending_approvals
    assert pending.tool_call_id == "call_mail"

    await _forget(runtime.redis, run_id)
    await agents.ResumeRun(
        agent_pb2.AgentServiceResumeRunRequest(
            run_id=run_id,
            decisions=[agent_pb2.ApprovalDecision(tool_call_id="call_mail", approve={})],
        ),
        metadata=auth(token),
    )
    await _forget(runtime.redis, run_id)
    watched = agents.WatchRun(
        agent_pb2.AgentServiceWatchRunRequest(run_id=run_id), metadata=auth(token), timeout=30
    )
    events = [response.event async for response in watched]
    assert events[-1].HasField("run_finished")
    assert events[-1].run_finished.output.text == "Sent."


async def test_another_tenant_does_not_find_the_run_through_visibility(
    agents, token, other_token, model, runtime: Runtime
) -> None:
    model.set_script(["Hello."])
    run_id = unique("mine")
    await agents.Generate(
        agent_pb2.GenerateRequest(agent_name="assistant", prompt="hi", client_run_id=run_id),
        metadata=auth(token),
    )
    await _forget(runtime.redis, run_id)
    owner = await agents.GetRun(
        agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token)
    )
    assert owner.run.id == run_id
    await _forget(runtime.redis, run_id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(other_token)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
