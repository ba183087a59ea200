"""Webhook sources and their deliveries by RPC: per tenant, secrets never returned, paged
listing, bad input refused, and the typed client."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2

from clients import LoomworkClient
from protos.loomwork.v1 import integration_pb2
from tests.support import auth, field_violations
from tests.webhook_support import SECRET, create_source, signed


async def test_sources_are_per_tenant_and_secrets_never_leave(
    integrations, token, other_token, runtime
) -> None:
    source = await create_source(
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
    source = await create_source(integrations, token)
    for i in range(5):
        raw, headers = signed({"type": "ping"}, f"p-{i}")
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
        raw, headers = signed({"type": "ping"}, "c-1")
        assert (await http.post(source.path, content=raw, headers=headers)).status_code == 202
        listed = await client.integrations.list_webhook_deliveries(source.id)
        assert [d.id for d in listed.webhook_deliveries] == ["c-1"]
