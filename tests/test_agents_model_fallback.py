"""Model fallback through gRPC with the scripted model: a step whose model keeps answering
503 until its retries run out goes on with the agent's next model; the step's event, the
run and its usage rows name the model that answered. Agents declare their fallback models
by RPC (validated) or in code."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import field_mask_pb2

from loomwork.agents.definitions import AgentDefinition
from loomwork.config import Settings
from loomwork.testing import Failure, ScriptedModelServer, ScriptedToolCall, Turn
from loomwork.testing.script import ChatRequest
from protos.loomwork.v1 import agent_pb2, run_pb2
from tests.support import auth, collect_events, field_violations, unique

ATTEMPTS = 3  # LOOMWORK_MODEL_CALL_ATTEMPTS here: 1 s + 2 s of backoff before a fallback


@pytest.fixture
def three_attempts(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The session's worker tries a model call 3 times (instead of 10) before falling back."""
    monkeypatch.setattr(settings, "model_call_attempts", ATTEMPTS)
    yield


async def _create(agents, token: str, name: str, **fields) -> agent_pb2.Agent:
    response = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(name=name, instructions="You add numbers.", **fields)
        ),
        metadata=auth(token),
    )
    return response.agent


async def _step_models(agents, token: str, run_id: str) -> list[str]:
    """The model each step_finished event of the run names, in order."""
    events = await collect_events(
        agents.WatchRun(agent_pb2.AgentServiceWatchRunRequest(run_id=run_id), metadata=auth(token))
    )
    return [e.step_finished.model for e in events if e.HasField("step_finished")]


async def _usage_models(runtime, run_id: str) -> dict[str, str]:
    async with runtime.db.connection() as conn:
        cur = await conn.execute(
            "select call_key, model from model_usage where tenant_id = 'alpha' and run_id = %s",
            (run_id,),
        )
        return {row["call_key"]: row["model"] for row in await cur.fetchall()}


async def test_a_first_step_falls_back_to_the_next_model_after_503s(
    agents, token, model: ScriptedModelServer, runtime, three_attempts
) -> None:
    name = unique("fallback")
    created = await _create(
        agents, token, name, model="model-a", fallback_models=["model-b", "model-c"]
    )
    assert list(created.fallback_models) == ["model-b", "model-c"]

    def script(request: ChatRequest) -> Failure | Turn:
        if request.model == "model-a":
            return Failure(status=503, message="model-a is overloaded")
        return Turn(text="Answered by B.")

    model.set_script(script)
    run = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name=name, prompt="2 + 2?"), metadata=auth(token)
        )
    ).run
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert run.output.text == "Answered by B."
    assert run.model == "model-b"
    assert [r.model for r in model.requests] == ["model-a"] * ATTEMPTS + ["model-b"]
    assert await _step_models(agents, token, run.id) == ["model-b"]
    assert await _usage_models(runtime, run.id) == {"step:1": "model-b"}
    # The stream said so: two retries on model-a, then the fallback.
    events = await collect_events(
        agents.WatchRun(agent_pb2.AgentServiceWatchRunRequest(run_id=run.id), metadata=auth(token))
    )
    retries = [e.step_retrying for e in events if e.HasField("step_retrying")]
    assert [r.attempt for r in retries] == [2, 3, 4]
    assert "going on with model model-b" in retries[-1].error.message
    assert "going on with" not in retries[0].error.message


async def test_a_later_step_falls_back_and_the_run_keeps_the_model_that_answered(
    agents, token, model: ScriptedModelServer, runtime, three_attempts
) -> None:
    name = unique("fallback")
    await _create(
        agents, token, name, model="model-a", fallback_models=["model-b"], tool_names=["add"]
    )
    seen: list[str] = []

    def script(request: ChatRequest) -> Failure | Turn:
        seen.append(request.model)
        if len(seen) == 1:  # step 1 on model-a: a tool call
            return Turn(tool_calls=[ScriptedToolCall("add", {"numbers": [40, 2]})])
        if request.model == "model-a":  # step 2 on model-a: overloaded, every time
            return Failure(status=503)
        if request.tool_results:  # step 2 on model-b: another call
            return (
                Turn(text="42.")
                if len(seen) > ATTEMPTS + 2
                else Turn(tool_calls=[ScriptedToolCall("add", {"numbers": [1, 1]})])
            )
        return Turn(text="unexpected")

    model.set_script(script)
    run = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name=name, prompt="40 + 2?"), metadata=auth(token)
        )
    ).run
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED and run.output.text == "42."
    # Step 3 goes straight to model-b: the run keeps the model that answered.
    assert seen == ["model-a"] + ["model-a"] * ATTEMPTS + ["model-b", "model-b"]
    assert run.model == "model-b"
    assert await _step_models(agents, token, run.id) == ["model-a", "model-b", "model-b"]
    assert await _usage_models(runtime, run.id) == {
        "step:1": "model-a",
        "step:2": "model-b",
        "step:3": "model-b",
    }


async def test_a_run_whose_models_all_fail_fails_and_a_rejection_does_not_fall_back(
    agents, token, model: ScriptedModelServer, three_attempts
) -> None:
    name = unique("fallback")
    await _create(agents, token, name, model="model-a", fallback_models=["model-b"])
    model.set_script(lambda request: Failure(status=503, message=f"{request.model} is down"))
    run = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name=name, prompt="hi"), metadata=auth(token)
        )
    ).run
    assert run.status == run_pb2.RUN_STATUS_FAILED
    assert run.error.reason == "RETRIES_EXHAUSTED" and "model-b is down" in run.error.message
    assert [r.model for r in model.requests] == ["model-a"] * ATTEMPTS + ["model-b"] * ATTEMPTS

    model.requests.clear()
    model.set_script([Failure(status=400, message="bad request")])  # not retryable: no fallback
    run = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name=name, prompt="hi"), metadata=auth(token)
        )
    ).run
    assert run.status == run_pb2.RUN_STATUS_FAILED
    assert [r.model for r in model.requests] == ["model-a"]


async def test_fallback_models_are_validated_updated_and_declared_in_code(
    agents, token, runtime
) -> None:
    name = unique("fallback")
    for fallbacks in (["model-b", "model-b"], [""], ["m"] * 9):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _create(agents, token, name, fallback_models=fallbacks)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert any(f.startswith("agent.fallback_models") for f in field_violations(err.value))
    await _create(agents, token, name, model="model-a", fallback_models=["model-b"])
    updated = await agents.UpdateAgent(
        agent_pb2.UpdateAgentRequest(
            agent=agent_pb2.Agent(name=name, fallback_models=["model-c", "model-d"]),
            update_mask=field_mask_pb2.FieldMask(paths=["fallback_models"]),
        ),
        metadata=auth(token),
    )
    assert list(updated.agent.fallback_models) == ["model-c", "model-d"]
    got = await agents.GetAgent(agent_pb2.GetAgentRequest(agent_name=name), metadata=auth(token))
    assert list(got.agent.fallback_models) == ["model-c", "model-d"]
    assert got.agent.model == "model-a"

    in_code = AgentDefinition(
        name="coded", instructions="x", model="model-a", fallback_models=["model-b"]
    )
    assert in_code.models("default") == ["model-a", "model-b"]
    assert AgentDefinition(name="plain", instructions="x").models("default") == ["default"]
