"""Accepting one webhook request: verify, de-duplicate, record, hand over for durable routing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Protocol

from pydantic import BaseModel

from loomwork.errors import AlreadyExists, InvalidArgument
from loomwork.ids import is_valid_client_id
from loomwork.integrations import signatures
from loomwork.integrations.deliveries import DeliveryStore, workflow_id_for
from loomwork.integrations.replay import ReplayGuard
from loomwork.integrations.routing import WebhookEvent
from loomwork.integrations.sources import WebhookSourceStore

MAX_BODY_BYTES = 1024 * 1024


class DeliveryReplayed(AlreadyExists):
    """This delivery id was accepted before; nothing is started again."""


class RoutingStarter(Protocol):
    """Starts durable routing of an accepted event (a Temporal workflow), idempotently."""

    async def start(self, event: WebhookEvent, workflow_id: str) -> None: ...


class Accepted(BaseModel):
    tenant: str
    source_id: str
    delivery_id: str
    event_type: str
    workflow_id: str


class WebhookIntake:
    def __init__(
        self,
        sources: WebhookSourceStore,
        deliveries: DeliveryStore,
        replay: ReplayGuard,
        starter: RoutingStarter,
    ) -> None:
        self.sources = sources
        self.deliveries = deliveries
        self.replay = replay
        self.starter = starter

    async def receive(
        self, source_id: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> Accepted:
        """Accept a request or raise: NotFound (unknown source), SignatureRejected (bad or stale
        signature), InvalidArgument (no delivery id, not a JSON object), DeliveryReplayed.

        Routing is started before the delivery id is claimed, so a crash in between leaves the
        sender's retry free to start it again (the workflow id makes that a no-op)."""
        source = await self.sources.for_delivery(source_id)
        if len(body) > MAX_BODY_BYTES:
            raise InvalidArgument.field("body", f"at most {MAX_BODY_BYTES} bytes")
        signatures.verify(
            headers.get(source.signature_header.lower()),
            source.secret,
            body,
            tolerance_seconds=source.tolerance_seconds,
            now=now,
        )
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise InvalidArgument.field("body", "is not JSON") from exc
        if not isinstance(payload, dict):
            raise InvalidArgument.field("body", "must be a JSON object")
        delivery_id = headers.get(source.delivery_id_header.lower()) or payload.get("id")
        if not isinstance(delivery_id, str) or not is_valid_client_id(delivery_id):
            raise InvalidArgument.field(
                source.delivery_id_header, "a delivery id (header or body `id`) is required"
            )
        event_type = payload.get("type") or headers.get(source.event_type_header.lower()) or ""
        if not isinstance(event_type, str):
            raise InvalidArgument.field("body.type", "must be a string")
        if await self.replay.seen(source.id, delivery_id):
            raise DeliveryReplayed(f"delivery {delivery_id!r} was received before")
        delivery, created = await self.deliveries.record(
            source.tenant, source.id, delivery_id, event_type, payload
        )
        if not created and delivery.status != "received":
            raise DeliveryReplayed(f"delivery {delivery_id!r} was received before")
        event = WebhookEvent(
            tenant=source.tenant,
            source_id=source.id,
            delivery_id=delivery_id,
            event_type=delivery.event_type,
            payload=delivery.payload,
        )
        workflow_id = workflow_id_for(source.tenant, source.id, delivery_id)
        await self.starter.start(event, workflow_id)
        if not await self.replay.claim(
            source.id, delivery_id, tolerance_seconds=source.tolerance_seconds
        ):
            raise DeliveryReplayed(f"delivery {delivery_id!r} was received before")
        return Accepted(
            tenant=source.tenant,
            source_id=source.id,
            delivery_id=delivery_id,
            event_type=event_type,
            workflow_id=workflow_id,
        )
