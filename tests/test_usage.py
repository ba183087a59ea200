"""Usage and cost: every model call's tokens recorded once (whatever Temporal retried) by
tenant, agent, model and run, and ListUsage reporting them by day, agent, model and run,
priced by the operator's price table (a model without a price: cost unknown, said so)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import typer
from typer.testing import CliRunner

from clients import LoomworkClient
from clients.cli import register
from loomwork.agents.payloads import StepInput
from loomwork.agents.run_start import effective_agent
from loomwork.llm.chat import ChatMessage
from loomwork.testing import ChatRequest, ScriptedModelServer, Turn, Usage
from protos.loomwork.v1 import agent_pb2, rag_pb2, run_pb2, usage_pb2, usage_pb2_grpc
from server.runtime import Runtime
from tests.rag_support import ANIMALS, create_index, ingest
from tests.support import agent_run_request, auth, field_violations, unique
from tests.usage_support import UsageServer, usage_server

PRICED, UNPRICED = "model-priced", "model-unpriced"
# Per million tokens: input 2, cached input 0.5, output 8.
PRICES = {PRICED: {"input": 2.0, "output": 8.0, "cached_input": 0.5}}
CLI = typer.Typer()
register(CLI)
DAY, AGENT, MODEL, RUN = (
    usage_pb2.USAGE_DIMENSION_DAY,
    usage_pb2.USAGE_DIMENSION_AGENT,
    usage_pb2.USAGE_DIMENSION_MODEL,
    usage_pb2.USAGE_DIMENSION_RUN,
)


@pytest.fixture(scope="module")
async def server(settings, runtime) -> AsyncIterator[UsageServer]:
    """(The session's runtime applied the migrations.)"""
    async with usage_server(settings, ["costs", "cli"], prices=PRICES) as running:
        yield running


def _by_model(request: ChatRequest) -> Turn:
    if request.model == PRICED:  # 1000 in (400 of them cached), 200 out
        return Turn(text="priced", usage=Usage(1000, 200, cached_tokens=400))
    return Turn(text="unpriced", usage=Usage(300, 50))


async def test_usage_by_day_agent_and_model_is_priced_by_the_table(
    server: UsageServer, model: ScriptedModelServer
) -> None:
    before = datetime.now(UTC)
    for name, model_name in (("writer", PRICED), ("critic", UNPRICED)):
        await server.agents.CreateAgent(
            agent_pb2.CreateAgentRequest(
                agent=agent_pb2.Agent(name=name, instructions="Answer.", model=model_name)
            ),
            metadata=auth(server.tokens["costs"]),
        )
    model.set_script(_by_model)
    runs = [await server.generate("costs", agent) for agent in ("writer", "writer", "critic")]
    assert all(r.status == run_pb2.RUN_STATUS_SUCCEEDED for r in runs)

    listed = await server.list_usage("costs")  # by day, agent and model
    today = datetime.now(UTC).date().isoformat()
    critic, writer = listed.usage
    assert (critic.day, critic.agent_name, critic.model) == (today, "critic", UNPRICED)
    assert critic.run_kind == usage_pb2.USAGE_RUN_KIND_AGENT
    assert (critic.input_tokens, critic.output_tokens, critic.total_tokens) == (300, 50, 350)
    assert not critic.HasField("cost") and list(critic.unpriced_models) == [UNPRICED]
    assert (writer.day, writer.agent_name, writer.model) == (today, "writer", PRICED)
    assert (writer.input_tokens, writer.cached_input_tokens, writer.output_tokens) == (
        2000,
        800,
        400,
    )
    assert (writer.model_calls, writer.runs) == (2, 2)
    # 1200 uncached input at 2/M, 800 cached at 0.5/M, 400 output at 8/M.
    assert writer.cost == pytest.approx((1200 * 2 + 800 * 0.5 + 400 * 8) / 1e6)
    assert list(writer.unpriced_models) == []
    total = listed.total
    assert (total.total_tokens, total.model_calls, total.runs) == (2750, 3, 3)
    assert not total.HasField("cost") and list(total.unpriced_models) == [UNPRICED]

    priced = await server.list_usage("costs", group_by=[MODEL], model=PRICED)
    assert [(u.model, u.day, u.agent_name) for u in priced.usage] == [(PRICED, "", "")]
    assert priced.total.cost == pytest.approx(0.006)

    by_run = await server.list_usage("costs", group_by=[RUN], agent_name="writer")
    assert sorted(u.run_id for u in by_run.usage) == sorted(r.id for r in runs[:2])

    # Paged: one group a page, the same groups in the same order.
    first = await server.list_usage("costs", page_size=1)
    second = await server.list_usage("costs", page_size=1, page_token=first.next_page_token)
    assert [first.usage[0].agent_name, second.usage[0].agent_name] == ["critic", "writer"]
    assert second.next_page_token == ""

    # A range that ends before the runs has none; its cost is a known 0.
    empty = usage_pb2.ListUsageRequest()
    empty.start_time.FromDatetime(before - timedelta(days=2))
    empty.end_time.FromDatetime(before)
    nothing = await server.usage.ListUsage(empty, metadata=auth(server.tokens["costs"]))
    assert list(nothing.usage) == [] and nothing.total.total_tokens == 0
    assert nothing.total.HasField("cost") and nothing.total.cost == 0


async def test_a_retried_step_is_recorded_once_with_the_attempt_the_run_kept(
    runtime: Runtime, worker, channel, token, model: ScriptedModelServer
) -> None:
    """A step's activity that Temporal runs again (its first attempt's model call done, the
    attempt lost after) rewrites the step's one row; the first attempt, ending late, does
    not overwrite the second's."""
    steps = runtime.agent_steps
    assert steps is not None
    request = agent_run_request("count me once")
    agent = effective_agent(await steps.agents.get(request.tenant, "assistant"), request)
    step = StepInput(
        request=request,
        agent=agent,
        plan_model="scripted",
        step=1,
        conversation=[ChatMessage.system("Answer."), ChatMessage.user("count me once")],
    )
    model.push(
        Turn(text="first", usage=Usage(100, 10)),
        Turn(text="second", usage=Usage(120, 12)),
        Turn(text="late", usage=Usage(999, 99)),
    )
    await steps.model_step(step, attempt=1)
    kept = await steps.model_step(step, attempt=2)
    await steps.model_step(step, attempt=1)  # the first attempt, still running, ends now

    usage = usage_pb2_grpc.UsageServiceStub(channel)
    request_usage = usage_pb2.ListUsageRequest(run_id=request.run_id, group_by=[RUN])
    request_usage.start_time.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    listed = await usage.ListUsage(request_usage, metadata=auth(token))
    [row] = listed.usage
    assert row.model_calls == 1
    assert (row.input_tokens, row.output_tokens) == (120, 12)
    assert (kept.usage.prompt_tokens, kept.usage.completion_tokens) == (120, 12)


async def test_a_run_whose_step_was_retried_reports_what_get_run_reports(
    agents, channel, token, model: ScriptedModelServer
) -> None:
    """Through Temporal: the first attempt's stream breaks mid-way, the retry answers; the
    run has one row, whose figures are the run's own usage."""
    model.push(
        Turn(text="a stream that breaks " * 20, chunk_size=4, abort_after_chunks=3),
        Turn(text="Recovered.", usage=Usage(70, 30)),
    )
    run = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="retry me"),
            metadata=auth(token),
        )
    ).run
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    usage = usage_pb2_grpc.UsageServiceStub(channel)
    request = usage_pb2.ListUsageRequest(run_id=run.id, group_by=[AGENT, RUN])
    request.start_time.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    [row] = (await usage.ListUsage(request, metadata=auth(token))).usage
    assert (row.agent_name, row.run_id, row.model_calls) == ("assistant", run.id, 1)
    assert (row.input_tokens, row.output_tokens) == (70, 30)
    reported = run.output.usage
    assert (reported.input_tokens, reported.output_tokens) == (70, 30)


async def test_a_rag_answer_records_its_rerank_and_its_answer(
    rag, channel, token, model: ScriptedModelServer
) -> None:
    index = await create_index(rag, token)
    await ingest(rag, token, index, [rag_pb2.DocumentInput(document_id="a0", text=ANIMALS[0])])

    def script(request: ChatRequest) -> Turn:
        if request.response_format is not None:  # the LLM rerank: JSON scores
            return Turn(text='{"scores": [1]}', usage=Usage(50, 5))
        return Turn(text="Cats sleep in the sun [1].", usage=Usage(300, 40))

    model.set_script(script)
    answer_id = unique("ans")
    retrieval = rag_pb2.RetrievalOptions(
        top_k=1,
        rerank=rag_pb2.RerankOptions(method=rag_pb2.RERANK_METHOD_LLM, model="reranker"),
    )
    async for _ in rag.Answer(
        rag_pb2.AnswerRequest(
            index_name=index, query="cats?", retrieval=retrieval, client_answer_id=answer_id
        ),
        metadata=auth(token),
    ):
        pass
    usage = usage_pb2_grpc.UsageServiceStub(channel)
    request = usage_pb2.ListUsageRequest(run_id=answer_id, group_by=[AGENT, MODEL])
    request.start_time.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    rows = (await usage.ListUsage(request, metadata=auth(token))).usage
    assert [(r.run_kind, r.agent_name, r.model, r.input_tokens, r.output_tokens) for r in rows] == [
        (usage_pb2.USAGE_RUN_KIND_RAG_ANSWER, "", "reranker", 50, 5),
        (usage_pb2.USAGE_RUN_KIND_RAG_ANSWER, "", "scripted", 300, 40),
    ]


async def test_the_cli_and_the_client_show_usage_and_quota(
    server: UsageServer, model: ScriptedModelServer
) -> None:
    model.push(Turn(text="hi", usage=Usage(10, 5)))
    run = await server.generate("cli")
    env = {
        "LOOMWORK_GRPC_ADDRESS": server.address,
        "LOOMWORK_TOKEN": server.tokens["cli"],
        "COLUMNS": "200",
    }
    runner = CliRunner(env=env)
    listed = await asyncio.to_thread(
        runner.invoke, CLI, ["usage", "list", "--since", "1h", "--by", "model", "--json"]
    )
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.stdout)
    assert [(u["model"], u["total_tokens"]) for u in data["usage"]] == [("scripted", 15)]
    assert "cost" not in data["total"] and data["total"]["unpriced_models"] == ["scripted"]
    table = await asyncio.to_thread(runner.invoke, CLI, ["usage", "list", "--by", "agent,run"])
    assert table.exit_code == 0, table.output
    assert run.id in table.stdout and "unknown (no price: scripted)" in table.stdout
    quota = await asyncio.to_thread(runner.invoke, CLI, ["usage", "quota", "--json"])
    assert json.loads(quota.stdout)["tenant"] == server.tenants["cli"]
    bad = await asyncio.to_thread(runner.invoke, CLI, ["usage", "list", "--by", "week"])
    assert bad.exit_code == 2 and "--by" in bad.output

    async with LoomworkClient(server.address, server.tokens["cli"]) as client:
        rows = [r async for r in client.usage.iter_usage(start_time=server.since, group_by=["run"])]
        assert [(r.run_id, r.input_tokens, r.output_tokens) for r in rows] == [(run.id, 10, 5)]
        assert (await client.usage.get_quota()).tokens_used_today == 15


async def test_list_usage_says_which_field_is_wrong(server: UsageServer) -> None:
    metadata = auth(server.tokens["cli"])
    cases: list[tuple[usage_pb2.ListUsageRequest, str]] = [
        (usage_pb2.ListUsageRequest(), "start_time")
    ]
    backwards = usage_pb2.ListUsageRequest()
    backwards.start_time.FromDatetime(server.since)
    backwards.end_time.FromDatetime(server.since - timedelta(days=1))
    cases.append((backwards, "end_time"))
    twice = usage_pb2.ListUsageRequest(group_by=[DAY, DAY])
    twice.start_time.FromDatetime(server.since)
    cases.append((twice, "group_by"))
    first = await server.list_usage("cli", page_size=1)
    other = usage_pb2.ListUsageRequest(page_token=first.next_page_token or "bm90LW91cnM", model="x")
    other.start_time.FromDatetime(server.since)
    cases.append((other, "page_token"))
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await server.usage.ListUsage(request, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in field_violations(refused.value), (field, refused.value.details())
