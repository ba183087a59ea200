"""`GET /metrics` after a few runs, parsed with prometheus_client's parser: RPCs by method
and code, runs started and ended by kind and status, model calls and tokens by model, tool
calls by outcome, the event relay's lag and the Temporal SDK's own worker metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import httpx2
import pytest

from loomwork.testing import ScriptedModelServer, ScriptedToolCall, Turn
from loomwork.testing.script import Usage
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from tests.support import MetricSamples, auth, metric_samples, metric_total


async def scrape(http: httpx2.AsyncClient) -> MetricSamples:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return metric_samples(response.text)


async def scrape_until(
    http: httpx2.AsyncClient, ready: Callable[[MetricSamples], bool]
) -> MetricSamples:
    """Scrape until `ready` (the Temporal SDK's metrics are drained once a second)."""
    for _ in range(75):
        samples = await scrape(http)
        if ready(samples):
            return samples
        await asyncio.sleep(0.2)
    raise AssertionError("the metrics never got there")


async def test_metrics_after_a_few_runs(
    agents: agent_pb2_grpc.AgentServiceStub,
    token: str,
    model: ScriptedModelServer,
    http: httpx2.AsyncClient,
) -> None:
    before = await scrape(http)
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("add", {"numbers": [2, 3]})], usage=Usage(11, 5)),
            Turn(text="5", usage=Usage(13, 2)),
            Turn(tool_calls=[ScriptedToolCall("add", {"numbers": "two"})], usage=Usage(11, 5)),
            Turn(text="Sorry.", usage=Usage(13, 2)),
        ]
    )
    run = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="2 + 3?"),
            metadata=auth(token),
        )
    ).run
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    async for _ in agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="two + 3?"), metadata=auth(token)
    ):
        pass
    with pytest.raises(grpc.aio.AioRpcError):
        await agents.GetAgent(agent_pb2.GetAgentRequest(agent_name="nope"), metadata=auth(token))

    def runs_ended(samples: MetricSamples) -> float:
        return metric_total(samples, "loomwork_runs_ended_total", kind="agent", status="succeeded")

    def completed(samples: MetricSamples) -> float:  # the Temporal SDK's count
        return metric_total(samples, "temporal_workflow_completed_total", workflow_type="AgentRun")

    after = await scrape_until(
        http,
        lambda s: runs_ended(s) - runs_ended(before) >= 2 and completed(s) - completed(before) >= 2,
    )

    def delta(name: str, **labels: str) -> float:
        return metric_total(after, name, **labels) - metric_total(before, name, **labels)

    agent_service = {"grpc_service": "loomwork.v1.AgentService"}
    assert delta("grpc_server_handled_total", grpc_method="Generate", grpc_code="OK") == 1
    assert delta("grpc_server_handled_total", grpc_method="Stream", grpc_code="OK") == 1
    assert delta("grpc_server_handled_total", grpc_method="GetAgent", grpc_code="NOT_FOUND") == 1
    assert delta("grpc_server_handling_seconds_count", grpc_method="GetAgent", **agent_service) == 1
    assert delta("loomwork_runs_started_total", kind="agent", workflow_type="AgentRun") == 2
    assert runs_ended(after) - runs_ended(before) == 2
    model_labels = {"gen_ai_request_model": "scripted", "gen_ai_operation_name": "chat"}
    assert delta("gen_ai_client_operation_duration_seconds_count", **model_labels) == 4
    input_tokens = delta("gen_ai_client_token_usage_sum", gen_ai_token_type="input", **model_labels)
    output_tokens = delta(
        "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **model_labels
    )
    assert (input_tokens, output_tokens) == (2 * (11 + 13), 2 * (5 + 2))
    assert delta("loomwork_tool_calls_total", tool="add", outcome="ok") == 1
    assert delta("loomwork_tool_calls_total", tool="add", outcome="error") == 1  # bad arguments
    assert delta("loomwork_event_relay_lag_seconds_count") > 0  # the Stream call's live events
    # The Temporal SDK's own worker metrics, by workflow type and task queue.
    queue = {"task_queue": "loomwork-test"}
    # The SDK counts every AgentRun of the worker: a run an earlier test left may end now.
    assert delta("temporal_workflow_completed_total", workflow_type="AgentRun", **queue) >= 2
    assert delta("temporal_activity_execution_latency_seconds_count", **queue) > 0
    assert metric_total(after, "temporal_worker_task_slots_available", **queue) > 0
    # No tenant label unless LOOMWORK_METRICS_TENANT_LABEL asks for one.
    assert not [labels for _, labels, _ in after if "tenant" in labels]
