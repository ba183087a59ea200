"""Webhook deliveries routed on Temporal: resuming agent approvals and workflow steps,
starting workflows and ingesting documents once per delivery, and failures recorded.

Real Postgres, Redis and Temporal; the only seam is the scripted model behind agent runs."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import struct_pb2

from activities.ingestion_start import IngestionStarter
from activities.integrations import TemporalRouteTargets
from loomwork.agents.directory import RunDirectory
from loomwork.integrations.routing import DocumentIngest, WorkflowStart, WorkflowStepResume
from loomwork.rag.ingestion_models import IngestionRequest
from loomwork.testing import ScriptedToolCall, Turn
from protos.loomwork.v1 import (
    integration_pb2,
    rag_pb2,
    rag_pb2_grpc,
    run_pb2,
    workflow_pb2,
    workflow_pb2_grpc,
)
from server.temporal import start_input
from tests.support import (
    RunningWorker,
    another_server,
    auth,
    generate_until_waiting,
    own_runtime,
    unique,
    wait_agent_run_finished,
)
from tests.webhook_support import create_source, signed, wait_routed

_EMAIL = {"to": "ada@example.com", "subject": "Hi", "body": "Hello Ada"}


async def test_webhook_resumes_a_suspended_agent_approval(
    http, integrations, agents, token, model
) -> None:
    route = integration_pb2.WebhookRoute(
        name="approvals",
        event_type="approval.*",
        resume_agent_approval=integration_pb2.ResumeAgentApprovalAction(),
    )
    source = await create_source(integrations, token, route)
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("send_email", _EMAIL, id="call_hook")]),
            Turn(text="Sent it."),
        ]
    )
    run_id = unique("hook")
    await generate_until_waiting(agents, token, run_id, "call_hook")
    event = {
        "type": "approval.decided",
        "data": {"run_id": run_id, "decisions": [{"tool_call_id": "call_hook", "approve": True}]},
    }
    raw, headers = signed(event, f"appr-{run_id}")
    response = await http.post(source.path, content=raw, headers=headers)
    assert response.status_code == 202, response.text
    run = await wait_agent_run_finished(agents, token, run_id)
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    sent = run.output.messages[1].parts[0].tool_result
    assert not sent.is_error and sent.result.struct_value["to"] == "ada@example.com"
    assert run.output.text == "Sent it."
    delivery = await wait_routed(integrations, token, source.id, f"appr-{run_id}")
    assert delivery.status == integration_pb2.WEBHOOK_DELIVERY_STATUS_ROUTED
    assert delivery.route_name == "approvals" and run_id in delivery.result
    assert delivery.payload["data"]["run_id"] == run_id


async def test_routing_failures_are_recorded_not_retried_forever(http, integrations, token) -> None:
    routes = [
        integration_pb2.WebhookRoute(
            name="approvals",
            event_type="approval.decided",
            resume_agent_approval=integration_pb2.ResumeAgentApprovalAction(),
        ),
        integration_pb2.WebhookRoute(
            name="docs",
            event_type="doc.created",
            ingest_document=integration_pb2.IngestDocumentAction(collection_id="kb"),
        ),
    ]
    source = await create_source(integrations, token, *routes)
    unknown_run = {
        "type": "approval.decided",
        "data": {"run_id": "run_missing", "decisions": [{"tool_call_id": "c", "approve": True}]},
    }
    no_decisions = {"type": "approval.decided", "data": {"run_id": "run_missing"}}
    document = {"type": "doc.created", "data": {"id": "doc-1", "text": "hello"}}
    for delivery_id, body in (("f-1", unknown_run), ("f-2", no_decisions), ("f-3", document)):
        raw, headers = signed(body, delivery_id)
        assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
    first = await wait_routed(integrations, token, source.id, "f-1")
    assert first.status == integration_pb2.WEBHOOK_DELIVERY_STATUS_FAILED
    assert "NotFound" in first.result and "run_missing" in first.result
    second = await wait_routed(integrations, token, source.id, "f-2")
    assert second.status == integration_pb2.WEBHOOK_DELIVERY_STATUS_FAILED
    assert "payload.data.decisions" in second.result
    third = await wait_routed(integrations, token, source.id, "f-3")
    assert third.status == integration_pb2.WEBHOOK_DELIVERY_STATUS_FAILED
    assert "NotFound" in third.result and "kb" in third.result  # no such index


async def test_webhook_resumes_a_suspended_workflow_step(
    http, integrations, channel, token, runtime
) -> None:
    workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
    route = integration_pb2.WebhookRoute(
        name="expense decisions",
        event_type="expense.decided",
        resume_workflow_step=integration_pb2.ResumeWorkflowStepAction(),
    )
    source = await create_source(integrations, token, route)
    expense = struct_pb2.Struct()
    expense.update({"employee": "Grace", "amount": 400.0, "reason": "flights"})
    run = (
        await workflows.StartRun(
            workflow_pb2.WorkflowServiceStartRunRequest(
                workflow_id="expense-approval", input=expense
            ),
            metadata=auth(token),
        )
    ).run

    async def status() -> int:
        got = await workflows.GetRun(
            workflow_pb2.WorkflowServiceGetRunRequest(run_id=run.id), metadata=auth(token)
        )
        return got.run.status

    for _ in range(300):
        if await status() == workflow_pb2.WORKFLOW_RUN_STATUS_SUSPENDED:
            break
        await asyncio.sleep(0.05)
    # Resume data that does not fit the step's resume schema: recorded as failed, run kept.
    bad = {
        "type": "expense.decided",
        "data": {"run_id": run.id, "step_id": "approve", "resume_data": {"approved": "perhaps"}},
    }
    raw, headers = signed(bad, f"bad-{run.id}")
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
    rejected = await wait_routed(integrations, token, source.id, f"bad-{run.id}")
    assert rejected.status == integration_pb2.WEBHOOK_DELIVERY_STATUS_FAILED
    assert "resume_data.approver" in rejected.result
    assert await status() == workflow_pb2.WORKFLOW_RUN_STATUS_SUSPENDED

    good = {
        "type": "expense.decided",
        "data": {
            "run_id": run.id,
            "step_id": "approve",
            "resume_data": {"approved": True, "approver": "Hook"},
        },
    }
    raw, headers = signed(good, f"ok-{run.id}")
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
    delivery = await wait_routed(integrations, token, source.id, f"ok-{run.id}")
    assert delivery.status == integration_pb2.WEBHOOK_DELIVERY_STATUS_ROUTED, delivery.result
    for _ in range(300):
        if await status() == workflow_pb2.WORKFLOW_RUN_STATUS_SUCCEEDED:
            break
        await asyncio.sleep(0.05)
    done = await workflows.GetRun(
        workflow_pb2.WorkflowServiceGetRunRequest(run_id=run.id), metadata=auth(token)
    )
    assert done.run.status == workflow_pb2.WORKFLOW_RUN_STATUS_SUCCEEDED
    assert done.run.output["approver"] == "Hook"
    # The routing retried after the resume let the run finish (its worker died before it
    # reported): the same resume, answered as the first time, not a failed delivery.
    targets = _route_targets(runtime)
    again = WorkflowStepResume(
        run_id=run.id,
        step_id="approve",
        resume_data=good["data"]["resume_data"],
        idempotency_key=f"webhook-{source.id}-ok-{run.id}",
    )
    assert "resumed" in await targets.resume_workflow_step("alpha", again)


async def test_webhook_starts_a_workflow_once_per_delivery(
    http, integrations, channel, token, other_token, runtime
) -> None:
    workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
    route = integration_pb2.WebhookRoute(
        name="new tickets",
        event_type="ticket.created",
        start_workflow=integration_pb2.StartWorkflowAction(
            workflow_name="ticket-triage", input_path="data.ticket"
        ),
    )
    source = await create_source(integrations, token, route)
    event = {"type": "ticket.created", "data": {"ticket": {"subject": "Site down"}}}
    raw, headers = signed(event, "t-1")
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
    delivery = await wait_routed(integrations, token, source.id, "t-1")
    assert delivery.status == integration_pb2.WEBHOOK_DELIVERY_STATUS_ROUTED, delivery.result
    run_id = delivery.result.rsplit(" run ", 1)[1]
    for _ in range(300):
        got = (
            await workflows.GetRun(
                workflow_pb2.WorkflowServiceGetRunRequest(run_id=run_id), metadata=auth(token)
            )
        ).run
        if got.status == workflow_pb2.WORKFLOW_RUN_STATUS_SUCCEEDED:
            break
        await asyncio.sleep(0.05)
    assert got.output["queue"] == "on-call"
    # The routing activity retried after its run finished (its worker died before it
    # reported) starts nothing: still one run for the delivery.
    targets = _route_targets(runtime)
    again = WorkflowStart(
        workflow_name="ticket-triage", input={"subject": "Site down"}, idempotency_key=run_id
    )
    assert await targets.start_workflow("alpha", again) == delivery.result
    latest = await runtime.temporal.get_workflow_handle(got.temporal_workflow_id).describe()
    assert latest.run_id == got.temporal_run_id  # no second execution of its workflow id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await workflows.GetRun(
            workflow_pb2.WorkflowServiceGetRunRequest(run_id=run_id), metadata=auth(other_token)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # A payload that does not fit the input schema fails the delivery, naming the field.
    raw, headers = signed({"type": "ticket.created", "data": {"ticket": {}}}, "t-2")
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
    failed = await wait_routed(integrations, token, source.id, "t-2")
    assert failed.status == integration_pb2.WEBHOOK_DELIVERY_STATUS_FAILED
    assert "input.subject" in failed.result


async def test_a_workflow_a_webhook_starts_is_announced_before_a_worker_takes_it(
    settings, runtime, token
) -> None:
    """As with StartRun: its run_started is event 1 before any worker runs it, a watcher
    hears run_pending while none does, and the rest comes when a worker does."""
    async with (
        own_runtime(settings, pending_notice_seconds=0.5) as own,
        another_server(own) as channel,
    ):
        targets = TemporalRouteTargets(
            own.temporal,
            RunDirectory(own.redis),
            workflows=own.flows,
            task_queue=own.settings.task_queue,
            events=own.events,
        )
        run_id = unique("delivery")
        start = WorkflowStart(
            workflow_name="ticket-triage", input={"subject": "Site down"}, idempotency_key=run_id
        )
        await targets.start_workflow("alpha", start)
        watched = aiter(
            workflow_pb2_grpc.WorkflowServiceStub(channel).WatchRun(
                workflow_pb2.WorkflowServiceWatchRunRequest(run_id=run_id),
                metadata=auth(token),
                timeout=60,
            )
        )
        started = (await asyncio.wait_for(anext(watched), 10)).event
        pending = (await asyncio.wait_for(anext(watched), 10)).event
        assert (started.event_id, started.run_started.workflow_id) == (1, "ticket-triage")
        assert pending.event_id == 2 and pending.HasField("run_pending")
        worker = RunningWorker(own)
        try:
            rest = [response.event async for response in watched]
        finally:
            await worker.stop()
        assert rest[-1].HasField("run_finished")
        assert [e.event_id for e in rest] == list(range(3, len(rest) + 3))
        assert not any(e.HasField("run_started") for e in rest)  # the workflow said none


async def test_webhook_ingests_a_document_into_an_index(
    http, integrations, channel, token, runtime
) -> None:
    rag = rag_pb2_grpc.RagServiceStub(channel)
    index = unique("hooked").replace("-", "_")
    await rag.CreateIndex(
        rag_pb2.CreateIndexRequest(index=rag_pb2.Index(name=index)), metadata=auth(token)
    )
    route = integration_pb2.WebhookRoute(
        name="kb articles",
        event_type="article.published",
        ingest_document=integration_pb2.IngestDocumentAction(collection_id=index),
    )
    source = await create_source(integrations, token, route)
    article = {
        "type": "article.published",
        "data": {
            "id": "kb-42",
            "text": "Reset a stuck loom by holding the red lever for ten seconds.",
        },
    }
    raw, headers = signed(article, "a-1")
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
    delivery = await wait_routed(integrations, token, source.id, "a-1")
    assert delivery.status == integration_pb2.WEBHOOK_DELIVERY_STATUS_ROUTED, delivery.result
    ingestion_id = delivery.result.rsplit("ingestion ", 1)[1]
    for _ in range(600):
        ingestion = (
            await rag.GetIngestion(
                rag_pb2.GetIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
            )
        ).ingestion
        if ingestion.status == rag_pb2.INGESTION_STATUS_SUCCEEDED:
            break
        await asyncio.sleep(0.1)
    assert ingestion.status == rag_pb2.INGESTION_STATUS_SUCCEEDED
    # The routing retried after the ingestion finished starts nothing again.
    handle = runtime.temporal.get_workflow_handle(ingestion.temporal_workflow_id)
    ended = (await handle.describe()).run_id
    targets = _route_targets(runtime)
    again = DocumentIngest(
        collection_id=index,
        document_id="kb-42",
        text=article["data"]["text"],
        idempotency_key=ingestion_id,
    )
    assert await targets.ingest_document("alpha", again) == delivery.result
    assert (await handle.describe()).run_id == ended
    found = await rag.Query(
        rag_pb2.QueryRequest(index_name=index, query="How do I reset a stuck loom?"),
        metadata=auth(token),
    )
    assert found.results[0].chunk.document_id == "kb-42"


def _route_targets(runtime) -> TemporalRouteTargets:  # type: ignore[no-untyped-def]
    """What the session worker's webhook routing activity drives, to call it as a retry would."""
    return TemporalRouteTargets(
        runtime.temporal,
        RunDirectory(runtime.redis),
        workflows=runtime.flows,
        rag=runtime.rag,
        task_queue=runtime.settings.task_queue,
        events=runtime.events,
    )


async def test_a_webhooks_ingestion_runs_with_the_workers_ingestion_settings(
    channel, token, runtime
) -> None:
    rag = rag_pb2_grpc.RagServiceStub(channel)
    index = unique("tuned").replace("-", "_")
    await rag.CreateIndex(
        rag_pb2.CreateIndexRequest(index=rag_pb2.Index(name=index)), metadata=auth(token)
    )
    # What server/worker.py builds, from settings a deployment tuned.
    tuned = runtime.settings.model_copy(
        update={"ingest_parallelism": 2, "ingest_continue_after": 7}
    )
    targets = TemporalRouteTargets(
        runtime.temporal,
        RunDirectory(runtime.redis),
        rag=runtime.rag,
        task_queue=runtime.settings.task_queue,
        events=runtime.events,
        ingestions=IngestionStarter.from_settings(runtime.temporal, tuned),
    )
    action = DocumentIngest(
        collection_id=index,
        document_id="kb-7",
        text="Oil the loom's shuttle once a week.",
        idempotency_key=unique("delivery"),
    )
    result = await targets.ingest_document("alpha", action)
    ingestion_id = result.rsplit("ingestion ", 1)[1]
    ingestion = (
        await rag.GetIngestion(
            rag_pb2.GetIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
        )
    ).ingestion
    handle = runtime.temporal.get_workflow_handle(ingestion.temporal_workflow_id)
    started = await start_input(handle, runtime.temporal.data_converter, IngestionRequest)
    assert started is not None
    assert (started.parallelism, started.continue_after) == (2, 7)
    await handle.result()
    done = await rag.GetIngestion(
        rag_pb2.GetIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
    )
    assert done.ingestion.status == rag_pb2.INGESTION_STATUS_SUCCEEDED
