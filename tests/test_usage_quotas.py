"""Per-tenant quotas as an operator sets them (LOOMWORK_QUOTAS): a run that would start past
the tenant's tokens per day or concurrent runs is RESOURCE_EXHAUSTED, naming the quota and
when it resets; GetQuota says where the tenant stands."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2

from clients.errors import rich_status
from loomwork.errors import FailedPrecondition
from loomwork.testing import ChatRequest, ScriptedModelServer, ScriptedToolCall, Turn, Usage
from loomwork.usage.prices import PriceTable
from loomwork.usage.quotas import Quota, QuotaTable
from protos.loomwork.v1 import agent_pb2, run_pb2, usage_pb2, workflow_pb2_grpc
from tests.support import auth, wait_agent_run_finished
from tests.usage_support import UsageServer, next_utc_midnight, usage_server
from tests.workflow_support import ORDER, start_run

LOOKUP = agent_pb2.ClientTool(name="lookup", description="Looks a thing up, at the caller.")
LOOKUP.parameters_schema.update({"type": "object", "properties": {"q": {"type": "string"}}})


@pytest.fixture(scope="module")
async def server(settings, runtime) -> AsyncIterator[UsageServer]:
    """(The session's runtime applied the migrations.)"""
    quotas = {"tokens": {"tokens_per_day": 100}, "runs": {"concurrent_runs": 2}}
    async with usage_server(settings, ["tokens", "runs"], quotas=quotas) as running:
        yield running


def _details(error: grpc.aio.AioRpcError) -> dict[str, object]:
    """The google.rpc details of a failed call, by type name."""
    status = rich_status(error)
    assert status is not None
    found: dict[str, object] = {}
    for kind in (
        error_details_pb2.QuotaFailure,
        error_details_pb2.ErrorInfo,
        error_details_pb2.RetryInfo,
    ):
        for detail in status.details:
            message = kind()
            if detail.Unpack(message):
                found[kind.__name__] = message
    return found


async def _quota(server: UsageServer, who: str) -> usage_pb2.Quota:
    response = await server.usage.GetQuota(
        usage_pb2.GetQuotaRequest(), metadata=auth(server.tokens[who])
    )
    return response.quota


async def test_a_tenant_past_its_tokens_per_day_cannot_start_a_run_until_midnight(
    server: UsageServer, model: ScriptedModelServer
) -> None:
    model.push(Turn(text="A long answer.", usage=Usage(80, 40)))  # 120 tokens of 100
    assert (await server.generate("tokens")).status == run_pb2.RUN_STATUS_SUCCEEDED

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.generate("tokens")
    error = refused.value
    resets = next_utc_midnight()
    reset_text = resets.isoformat().replace("+00:00", "Z")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    message = error.details() or ""
    assert "tokens_per_day" in message and "120 of 100" in message and reset_text in message
    details = _details(error)
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "QUOTA_EXCEEDED"
    assert dict(info.metadata) == {
        "quota": "tokens_per_day",
        "limit": "100",
        "used": "120",
        "reset_time": reset_text,
    }
    failure = details["QuotaFailure"]
    assert isinstance(failure, error_details_pb2.QuotaFailure)
    assert failure.violations[0].subject == f"tenant:{server.tenants['tokens']}"
    retry = details["RetryInfo"]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert timedelta(0) < retry.retry_delay.ToTimedelta() <= timedelta(days=1)
    assert len(model.requests) == 1  # the refused run never reached the model

    quota = await _quota(server, "tokens")
    assert (quota.tokens_per_day, quota.tokens_used_today) == (100, 120)
    assert quota.tokens_reset_time.ToDatetime().isoformat() + "Z" == reset_text
    assert quota.concurrent_runs == 0  # no limit on runs for this tenant


def _waits_for_the_caller(request: ChatRequest) -> Turn:
    if request.tool_results:
        return Turn(text="done")
    return Turn(tool_calls=[ScriptedToolCall("lookup", {"q": "x"}, id="call_1")])


async def test_a_tenant_at_its_concurrent_runs_starts_one_more_once_a_run_ends(
    server: UsageServer, model: ScriptedModelServer
) -> None:
    model.set_script(_waits_for_the_caller)
    first, second = [await server.generate("runs", client_tools=[LOOKUP]) for _ in range(2)]
    assert first.status == second.status == run_pb2.RUN_STATUS_WAITING

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.generate("runs", client_tools=[LOOKUP])
    error = refused.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "concurrent_runs" in (error.details() or "") and "2 of 2" in (error.details() or "")
    details = _details(error)
    assert "RetryInfo" not in details  # it frees when a run ends, not at a time
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.metadata["quota"] == "concurrent_runs" and "reset_time" not in info.metadata
    # A workflow run takes a slot as well: refused too.
    workflows = workflow_pb2_grpc.WorkflowServiceStub(server.channel)
    with pytest.raises(grpc.aio.AioRpcError) as also_refused:
        await start_run(workflows, server.tokens["runs"], "order-pipeline", ORDER)
    assert also_refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    quota = await _quota(server, "runs")
    assert (quota.concurrent_runs, quota.runs_under_way) == (2, 2)

    # The caller answers the first run's tool call: it ends, and its slot is free again.
    await server.agents.SubmitToolResults(
        agent_pb2.SubmitToolResultsRequest(
            run_id=first.id,
            results=[
                agent_pb2.ClientToolResult(
                    tool_call_id="call_1", result=json_format.ParseDict(1, struct_pb2.Value())
                )
            ],
        ),
        metadata=auth(server.tokens["runs"]),
    )
    ended = await wait_agent_run_finished(server.agents, server.tokens["runs"], first.id)
    assert ended.status == run_pb2.RUN_STATUS_SUCCEEDED
    third = await server.generate("runs", client_tools=[LOOKUP])
    assert third.status == run_pb2.RUN_STATUS_WAITING
    assert (await _quota(server, "runs")).runs_under_way == 2
    for run in (second, third):
        await server.agents.CancelRun(
            agent_pb2.AgentServiceCancelRunRequest(run_id=run.id),
            metadata=auth(server.tokens["runs"]),
        )


def test_quotas_and_prices_read_as_the_operator_wrote_them(tmp_path) -> None:
    table = QuotaTable.parse(
        '{"default": {"tokens_per_day": 1000, "concurrent_runs": 5},'
        ' "acme": {"tokens_per_day": 50}, "internal": {"concurrent_runs": null}}'
    )
    assert table.of("acme") == Quota(tokens_per_day=50, concurrent_runs=5)
    assert table.of("internal") == Quota(tokens_per_day=1000, concurrent_runs=None)
    assert table.of("anyone") == Quota(tokens_per_day=1000, concurrent_runs=5)
    for bad, says in (
        ('{"acme": {"tokens_per_day": 0}}', "'acme': tokens_per_day"),
        ('{"acme": {"tokens": 5}}', "'acme': tokens"),
        ("[1]", "expected a JSON object of tenants"),
        ("{", "not JSON"),
    ):
        with pytest.raises(FailedPrecondition) as error:
            QuotaTable.parse(bad)
        assert error.value.message.startswith("LOOMWORK_QUOTAS: ") and says in error.value.message

    prices = tmp_path / "prices.json"
    prices.write_text('{"m": {"input": 1.5, "output": 6}}')
    price = PriceTable.parse(str(prices)).price("m")
    assert price is not None and (price.input, price.output, price.cached_input) == (1.5, 6, None)
    with pytest.raises(FailedPrecondition) as error:
        PriceTable.parse('{"m": {"input": -1, "output": 1}}')
    assert error.value.message.startswith("LOOMWORK_MODEL_PRICES: 'm': input")
    with pytest.raises(FailedPrecondition) as error:
        PriceTable.parse(str(tmp_path / "missing.json"))
    assert "cannot read" in error.value.message
