"""Helpers of the webhook tests: sources created by RPC, signed request bodies, deliveries
read back."""

from __future__ import annotations

import asyncio
import json

import pytest

from loomwork.integrations import signatures
from protos.loomwork.v1 import integration_pb2
from tests.support import auth

SECRET = "whsec-0123456789abcdef"


async def create_source(stub, token: str, *routes: integration_pb2.WebhookRoute, **fields):
    """Create a webhook source signed with SECRET, with `routes`."""
    source = integration_pb2.WebhookSource(
        display_name="test", secret=SECRET, routes=list(routes), **fields
    )
    response = await stub.CreateWebhookSource(
        integration_pb2.CreateWebhookSourceRequest(webhook_source=source), metadata=auth(token)
    )
    return response.webhook_source


def signed(body: dict, delivery: str, *, secret: str = SECRET, timestamp: int | None = None):
    """The raw JSON body and the headers of a delivery signed with `secret`."""
    raw = json.dumps(body).encode()
    headers = {
        "Loomwork-Signature": signatures.sign(secret, raw, timestamp),
        "Loomwork-Delivery": delivery,
        "Content-Type": "application/json",
    }
    return raw, headers


async def list_deliveries(
    stub, token: str, source_id: str
) -> list[integration_pb2.WebhookDelivery]:
    """The source's recorded deliveries."""
    response = await stub.ListWebhookDeliveries(
        integration_pb2.ListWebhookDeliveriesRequest(webhook_source_id=source_id),
        metadata=auth(token),
    )
    return list(response.webhook_deliveries)


async def wait_routed(stub, token: str, source_id: str, delivery_id: str):
    """Poll the delivery until its routing has ended (routed, unrouted or failed); the delivery."""
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
