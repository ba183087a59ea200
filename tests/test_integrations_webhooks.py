"""Webhooks end to end: signed HTTP requests → recorded deliveries → routing on Temporal.

Real Postgres, Redis and Temporal; the only seam is the scripted model behind agent runs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import grpc
import httpx2
import pytest
from google.protobuf import duration_pb2, struct_pb2
from temporalio.service import RPCError, RPCStatusCode

from activities.integrations import TemporalRouteTargets
from clients import LoomworkClient
from loomwork.agents.directory import RunDirectory
from loomwork.integrations import signatures
from loomwork.integrations.routing import DocumentIngest, WorkflowStart, WorkflowStepResume
from loomwork.testing import ScriptedToolCall, Turn
from protos.loomwork.v1 import (
    agent_pb2,
    integration_pb2,
    rag_pb2,
    rag_pb2_grpc,
    run_pb2,
    workflow_pb2,
    workflow_pb2_grpc,
)
from protos.loomwork.v1 import integration_pb2_grpc as integration_grpc
from server.transport.http import build_http_app
from tests.support import (
    RunningWorker,
    another_server,
    auth,
    field_violations,
    own_runtime,
    serving,
    unique,
    wait_agent_run_finished,
)

SECRET = "whsec-0123456789abcdef"


@pytest.fixture(scope="module")
async def http_url(runtime, worker) -> AsyncIterator[str]:
    async with serving(build_http_app(runtime)) as url:
        yield url


@pytest.fixture(scope="module")
async def http(http_url) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=http_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def integrations(channel) -> integration_grpc.IntegrationServiceStub:
    return integration_grpc.IntegrationServiceStub(channel)


async def _source(stub, token: str, *routes: integration_pb2.WebhookRoute, **fields):
    source = integration_pb2.WebhookSource(
        display_name="test", secret=SECRET, routes=list(routes), **fields
    )
    response = await stub.CreateWebhookSource(
        integration_pb2.CreateWebhookSourceRequest(webhook_source=source), metadata=auth(token)
    )
    return response.webhook_source


def _signed(body: dict, delivery: str, *, secret: str = SECRET, timestamp: int | None = None):
    raw = json.dumps(body).encode()
    headers = {
        "Loomwork-Signature": signatures.sign(secret, raw, timestamp),
        "Loomwork-Delivery": delivery,
        "Content-Type": "application/json",
    }
    return raw, headers


async def _deliveries(stub, token: str, source_id: str) -> list[integration_pb2.WebhookDelivery]:
    response = await stub.ListWebhookDeliveries(
        integration_pb2.ListWebhookDeliveriesRequest(webhook_source_id=source_id),
        metadata=auth(token),
    )
    return list(response.webhook_deliveries)


async def _routed(stub, token: str, source_id: str, delivery_id: str):
    for _ in range(300):
        delivery = (
            await stub.GetWebhookDelivery(
                integration_pb2.GetWebhookDeliveryRequest(
                    webhook_source_id=source_id, webhook_delivery_id=delivery_id
                ),
                metadata=auth(token),
            )
        ).webhook_delivery
        if delivery.status != integration_pb2.WEBHOOK_DELIVERY_STATUS_RECEIVED:
            return delivery
        await asyncio.sleep(0.05)
    pytest.fail(f"delivery {delivery_id} was never routed")


async def _workflow_exists(runtime, workflow_id: str) -> bool:
    try:
        await runtime.temporal.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


def test_signature_scheme_round_trip_and_rejections() -> None:
    body = b'{"type":"x"}'
    header = signatures.sign(SECRET, body, 1_700_000_000)
    assert signatures.verify(header, SECRET, body, tolerance_seconds=300, now=1_700_000_100)
    # Rotation: any of several v1 values may match.
    rotated = f"{header.split(',')[0]},v1=deadbeef,{header.split(',')[1]}"
    assert signatures.verify(rotated, SECRET, body, tolerance_seconds=300, now=1_700_000_000)
    for bad, now in (
        (header, 1_700_000_301),  # stale
        (header.replace("t=1700000000", "t=1700000001"), 1_700_000_000),  # timestamp edited
        (signatures.sign("another-secret-value", body, 1_700_000_000), 1_700_000_000),
        ("v1=abc", 1_700_000_000),
        ("", 1_700_000_000),
    ):
        with pytest.raises(signatures.SignatureRejected):
            signatures.verify(bad, SECRET, body, tolerance_seconds=300, now=now)
    with pytest.raises(signatures.SignatureRejected):
        signatures.verify(header, SECRET, body + b" ", tolerance_seconds=300, now=1_700_000_000)


async def test_health(http) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200 and response.text == "ok"


async def test_forged_and_stale_webhooks_are_401_and_start_nothing(
    http, integrations, token, runtime
) -> None:
    source = await _source(integrations, token)
    assert source.path == f"/webhooks/{source.id}" and not source.secret
    body = {"type": "invoice.paid", "data": {"n": 1}}
    cases = {
        "forged": _signed(body, "d-forged", secret="not-the-right-secret"),
        "stale": _signed(body, "d-stale", timestamp=int(time.time()) - 301),
        "future": _signed(body, "d-future", timestamp=int(time.time()) + 301),
    }
    raw, headers = _signed(body, "d-missing")
    del headers["Loomwork-Signature"]
    cases["missing"] = (raw, headers)
    raw, headers = _signed(body, "d-tampered")
    cases["tampered"] = (raw.replace(b"1", b"2"), headers)
    for name, (raw, headers) in cases.items():
        response = await http.post(source.path, content=raw, headers=headers)
        assert response.status_code == 401, name
        assert "signature" in response.json()["error"], name
    assert await _deliveries(integrations, token, source.id) == []
    for delivery in ("d-forged", "d-stale", "d-future", "d-missing", "d-tampered"):
        workflow_id = f"webhook/alpha/{source.id}/{delivery}"
        assert not await _workflow_exists(runtime, workflow_id)
    unknown = await http.post("/webhooks/whs_nope", content=raw, headers=headers)
    assert unknown.status_code == 404


async def test_replayed_delivery_is_409_and_routes_once(http, integrations, token, runtime) -> None:
    source = await _source(integrations, token)
    raw, headers = _signed({"type": "ping"}, "d-1")
    first = await http.post(source.path, content=raw, headers=headers)
    assert first.status_code == 202, first.text
    assert first.json()["workflow_id"] == f"webhook/alpha/{source.id}/d-1"
    replay = await http.post(source.path, content=raw, headers=headers)
    assert replay.status_code == 409
    # A fresh signature does not make an old delivery id new.
    raw, headers = _signed({"type": "ping"}, "d-1")
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 409
    delivery = await _routed(integrations, token, source.id, "d-1")
    assert delivery.status == integration_pb2.WEBHOOK_DELIVERY_STATUS_UNROUTED
    assert "no route" in delivery.result
    # With the Redis claim gone (expired), the stored delivery still refuses the replay.
    await runtime.redis.delete(f"loomwork:webhook-delivery:{source.id}/d-1")
    raw, headers = _signed({"type": "ping"}, "d-1")
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 409
    assert [d.id for d in await _deliveries(integrations, token, source.id)] == ["d-1"]


async def test_concurrent_duplicates_accept_exactly_one(http, integrations, token) -> None:
    source = await _source(integrations, token)
    raw, headers = _signed({"type": "ping", "data": {}}, "d-burst")
    responses = await asyncio.gather(
        *(http.post(source.path, content=raw, headers=headers) for _ in range(6))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [202, 409, 409, 409, 409, 409]
    assert len(await _deliveries(integrations, token, source.id)) == 1


async def test_bad_bodies_are_400(http, integrations, token) -> None:
    source = await _source(integrations, token)
    raw = b"not json"
    headers = {"Loomwork-Signature": signatures.sign(SECRET, raw), "Loomwork-Delivery": "d-x"}
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 400
    raw, headers = _signed({"type": "ping"}, "d-y")
    del headers["Loomwork-Delivery"]
    response = await http.post(source.path, content=raw, headers=headers)
    assert response.status_code == 400 and "Loomwork-Delivery" in response.json()["fields"]
    # The body's `id` stands in for the header.
    raw, headers = _signed({"type": "ping", "id": "evt_1"}, "ignored")
    del headers["Loomwork-Delivery"]
    response = await http.post(source.path, content=raw, headers=headers)
    assert response.status_code == 202 and response.json()["delivery_id"] == "evt_1"


_EMAIL = {"to": "ada@example.com", "subject": "Hi", "body": "Hello Ada"}


async def test_webhook_resumes_a_suspended_agent_approval(
    http, integrations, agents, token, model
) -> None:
    route = integration_pb2.WebhookRoute(
        name="approvals",
        event_type="approval.*",
        resume_agent_approval=integration_pb2.ResumeAgentApprovalAction(),
    )
    source = await _source(integrations, token, route)
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("send_email", _EMAIL, id="call_hook")]),
            Turn(text="Sent it."),
        ]
    )
    run_id = unique("hook")
    # Generate answers as soon as the run stops for approval.
    waiting = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="mail", client_run_id=run_id),
            metadata=auth(token),
        )
    ).run
    assert waiting.status == run_pb2.RUN_STATUS_WAITING
    assert [p.tool_call_id for p in waiting.pending_approvals] == ["call_hook"]
    event = {
        "type": "approval.decided",
        "data": {"run_id": run_id, "decisions": [{"tool_call_id": "call_hook", "approve": True}]},
    }
    raw, headers = _signed(event, f"appr-{run_id}")
    response = await http.post(source.path, content=raw, headers=headers)
    assert response.status_code == 202, response.text
    run = await wait_agent_run_finished(agents, token, run_id)
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    sent = run.output.messages[1].parts[0].tool_result
    assert not sent.is_error and sent.result.struct_value["to"] == "ada@example.com"
    assert run.output.text == "Sent it."
    delivery = await _routed(integrations, token, source.id, f"appr-{run_id}")
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
    source = await _source(integrations, token, *routes)
    unknown_run = {
        "type": "approval.decided",
        "data": {"run_id": "run_missing", "decisions": [{"tool_call_id": "c", "approve": True}]},
    }
    no_decisions = {"type": "approval.decided", "data": {"run_id": "run_missing"}}
    document = {"type": "doc.created", "data": {"id": "doc-1", "text": "hello"}}
    for delivery_id, body in (("f-1", unknown_run), ("f-2", no_decisions), ("f-3", document)):
        raw, headers = _signed(body, delivery_id)
        assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
    first = await _routed(integrations, token, source.id, "f-1")
    assert first.status == integration_pb2.WEBHOOK_DELIVERY_STATUS_FAILED
    assert "NotFound" in first.result and "run_missing" in first.result
    second = await _routed(integrations, token, source.id, "f-2")
    assert second.status == integration_pb2.WEBHOOK_DELIVERY_STATUS_FAILED
    assert "payload.data.decisions" in second.result
    third = await _routed(integrations, token, source.id, "f-3")
    assert third.status == integration_pb2.WEBHOOK_DELIVERY_STATUS_FAILED
    assert "NotFound" in third.result and "kb" in third.result  # no such index


async def test_sources_are_per_tenant_and_secrets_never_leave(
    integrations, token, other_token, runtime
) -> None:
    source = await _source(
        integrations, token, timestamp_tolerance=duration_pb2.Duration(seconds=60)
    )
    assert source.timestamp_tolerance.seconds == 60
    assert source.signature_header == "Loomwork-Signature"
    got = await integrations.GetWebhookSource(
        integration_pb2.GetWebhookSourceRequest(webhook_source_id=source.id), metadata=auth(token)
    )
    assert got.webhook_source.id == source.id and not got.webhook_source.secret
    listed = await integrations.ListWebhookSources(
        integration_pb2.ListWebhookSourcesRequest(page_size=1000), metadata=auth(token)
    )
    assert source.id in [s.id for s in listed.webhook_sources]
    for call in (
        integrations.GetWebhookSource(
            integration_pb2.GetWebhookSourceRequest(webhook_source_id=source.id),
            metadata=auth(other_token),
        ),
        integrations.DeleteWebhookSource(
            integration_pb2.DeleteWebhookSourceRequest(webhook_source_id=source.id),
            metadata=auth(other_token),
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    async with runtime.db.connection() as conn:
        cur = await conn.execute(
            "select secret_enc from webhook_sources where id = %s", (source.id,)
        )
        row = await cur.fetchone()
    assert SECRET.encode() not in bytes(row["secret_enc"])
    await integrations.DeleteWebhookSource(
        integration_pb2.DeleteWebhookSourceRequest(webhook_source_id=source.id),
        metadata=auth(token),
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await integrations.GetWebhookSource(
            integration_pb2.GetWebhookSourceRequest(webhook_source_id=source.id),
            metadata=auth(token),
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_delivery_listing_pages(http, integrations, token) -> None:
    source = await _source(integrations, token)
    for i in range(5):
        raw, headers = _signed({"type": "ping"}, f"p-{i}")
        assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
    seen: list[str] = []
    page_token = ""
    while True:
        page = await integrations.ListWebhookDeliveries(
            integration_pb2.ListWebhookDeliveriesRequest(
                webhook_source_id=source.id, page_size=2, page_token=page_token
            ),
            metadata=auth(token),
        )
        seen += [d.id for d in page.webhook_deliveries]
        page_token = page.next_page_token
        if not page_token:
            break
    assert seen == [f"p-{i}" for i in reversed(range(5))]


def _route(**kwargs) -> integration_pb2.WebhookRoute:
    return integration_pb2.WebhookRoute(**kwargs)


@pytest.mark.parametrize(
    ("source", "field"),
    [
        (integration_pb2.WebhookSource(secret="short"), "webhook_source.secret"),
        (
            integration_pb2.WebhookSource(
                secret=SECRET, timestamp_tolerance=duration_pb2.Duration(seconds=7200)
            ),
            "webhook_source.timestamp_tolerance",
        ),
        (
            integration_pb2.WebhookSource(secret=SECRET, signature_header="Bad Header"),
            "webhook_source.signature_header",
        ),
        (
            integration_pb2.WebhookSource(secret=SECRET, routes=[_route(name="a", event_type="x")]),
            "webhook_source.routes[0].action",
        ),
        (
            integration_pb2.WebhookSource(
                secret=SECRET,
                routes=[
                    _route(
                        name="a",
                        event_type="x",
                        start_workflow=integration_pb2.StartWorkflowAction(),
                    )
                ],
            ),
            "webhook_source.routes[0].start_workflow.workflow_name",
        ),
        (
            integration_pb2.WebhookSource(
                secret=SECRET,
                routes=[
                    _route(
                        name="a",
                        event_type="x*y",
                        resume_agent_approval=integration_pb2.ResumeAgentApprovalAction(),
                    )
                ],
            ),
            "webhook_source.routes[0].event_type",
        ),
        (
            integration_pb2.WebhookSource(
                secret=SECRET,
                routes=[
                    _route(
                        name="same",
                        event_type="a",
                        resume_agent_approval=integration_pb2.ResumeAgentApprovalAction(),
                    ),
                    _route(
                        name="same",
                        event_type="b",
                        resume_agent_approval=integration_pb2.ResumeAgentApprovalAction(),
                    ),
                ],
            ),
            "webhook_source.routes[1].name",
        ),
    ],
)
async def test_create_webhook_source_rejects_bad_input(integrations, token, source, field) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await integrations.CreateWebhookSource(
            integration_pb2.CreateWebhookSourceRequest(webhook_source=source),
            metadata=auth(token),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(err.value)


async def test_webhook_rpcs_reject_bad_input(integrations, token) -> None:
    calls = [
        (
            integrations.CreateWebhookSource(
                integration_pb2.CreateWebhookSourceRequest(), metadata=auth(token)
            ),
            "webhook_source",
        ),
        (
            integrations.GetWebhookSource(
                integration_pb2.GetWebhookSourceRequest(), metadata=auth(token)
            ),
            "webhook_source_id",
        ),
        (
            integrations.DeleteWebhookSource(
                integration_pb2.DeleteWebhookSourceRequest(), metadata=auth(token)
            ),
            "webhook_source_id",
        ),
        (
            integrations.ListWebhookSources(
                integration_pb2.ListWebhookSourcesRequest(page_size=5000), metadata=auth(token)
            ),
            "page_size",
        ),
        (
            integrations.ListWebhookSources(
                integration_pb2.ListWebhookSourcesRequest(page_token="garbage"),
                metadata=auth(token),
            ),
            "page_token",
        ),
        (
            integrations.ListWebhookDeliveries(
                integration_pb2.ListWebhookDeliveriesRequest(page_size=-1), metadata=auth(token)
            ),
            "page_size",
        ),
        (
            integrations.GetWebhookDelivery(
                integration_pb2.GetWebhookDeliveryRequest(webhook_source_id="whs_x"),
                metadata=auth(token),
            ),
            "webhook_delivery_id",
        ),
        (
            integrations.GetWebhookDelivery(
                integration_pb2.GetWebhookDeliveryRequest(webhook_delivery_id="d"),
                metadata=auth(token),
            ),
            "webhook_source_id",
        ),
    ]
    for call, field in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in field_violations(err.value), field


async def test_typed_client_creates_sources_and_lists_deliveries(grpc_address, token, http) -> None:
    async with LoomworkClient(grpc_address, token=token) as client:
        source = await client.integrations.create_webhook_source(SECRET, display_name="from client")
        raw, headers = _signed({"type": "ping"}, "c-1")
        assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
        listed = await client.integrations.list_webhook_deliveries(source.id)
        assert [d.id for d in listed.webhook_deliveries] == ["c-1"]


async def test_serve_runs_the_http_endpoint_beside_grpc(settings) -> None:
    from server.process import Running, serve

    stop = asyncio.Event()
    seen: dict[str, str | None] = {}

    async def ready(running: Running) -> None:
        seen["http"] = running.http_address
        async with httpx2.AsyncClient() as client:
            seen["health"] = (await client.get(f"http://{running.http_address}/healthz")).text
        stop.set()

    local = settings.model_copy(
        update={"grpc_address": "127.0.0.1:0", "http_address": "127.0.0.1:0"}
    )
    await asyncio.wait_for(serve(local, worker=False, on_ready=ready, stop=stop), 60)
    assert seen["health"] == "ok" and seen["http"] and not seen["http"].endswith(":0")


async def test_webhook_resumes_a_suspended_workflow_step(
    http, integrations, channel, token, runtime
) -> None:
    workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
    route = integration_pb2.WebhookRoute(
        name="expense decisions",
        event_type="expense.decided",
        resume_workflow_step=integration_pb2.ResumeWorkflowStepAction(),
    )
    source = await _source(integrations, token, route)
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
    raw, headers = _signed(bad, f"bad-{run.id}")
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
    rejected = await _routed(integrations, token, source.id, f"bad-{run.id}")
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
    raw, headers = _signed(good, f"ok-{run.id}")
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
    delivery = await _routed(integrations, token, source.id, f"ok-{run.id}")
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
    source = await _source(integrations, token, route)
    event = {"type": "ticket.created", "data": {"ticket": {"subject": "Site down"}}}
    raw, headers = _signed(event, "t-1")
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
    delivery = await _routed(integrations, token, source.id, "t-1")
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
    raw, headers = _signed({"type": "ticket.created", "data": {"ticket": {}}}, "t-2")
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
    failed = await _routed(integrations, token, source.id, "t-2")
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
    source = await _source(integrations, token, route)
    article = {
        "type": "article.published",
        "data": {
            "id": "kb-42",
            "text": "Reset a stuck loom by holding the red lever for ten seconds.",
        },
    }
    raw, headers = _signed(article, "a-1")
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
    delivery = await _routed(integrations, token, source.id, "a-1")
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
