"""Webhook deliveries in Postgres: received, routed, result; one row per (source, delivery id)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from psycopg.types.json import Jsonb
from pydantic import BaseModel

from loomwork.errors import NotFound
from loomwork.integrations.listing import newest_first
from loomwork.integrations.routing import RouteOutcome
from loomwork.storage.database import Database

DeliveryStatus = Literal["received", "routed", "unrouted", "failed"]
_COLUMNS = (
    "source_id, id, tenant_id, seq, event_type, payload, status, route_name, result, "
    "workflow_id, receive_time, route_time"
)


class WebhookDelivery(BaseModel):
    id: str
    source_id: str
    tenant: str
    event_type: str
    payload: dict[str, Any]
    status: DeliveryStatus
    route_name: str = ""
    result: str = ""
    workflow_id: str
    receive_time: datetime
    route_time: datetime | None = None


class DeliveryPage(BaseModel):
    deliveries: list[WebhookDelivery]
    next_page_token: str = ""


def workflow_id_for(tenant: str, source_id: str, delivery_id: str) -> str:
    """The routing workflow's id: one per delivery, so a re-delivery starts nothing new."""
    return f"webhook/{tenant}/{source_id}/{delivery_id}"


def _delivery(row: dict[str, Any]) -> WebhookDelivery:
    return WebhookDelivery(
        id=row["id"],
        source_id=row["source_id"],
        tenant=row["tenant_id"],
        event_type=row["event_type"],
        payload=row["payload"],
        status=row["status"],
        route_name=row["route_name"],
        result=row["result"],
        workflow_id=row["workflow_id"],
        receive_time=row["receive_time"],
        route_time=row["route_time"],
    )


class DeliveryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(
        self,
        tenant: str,
        source_id: str,
        delivery_id: str,
        event_type: str,
        payload: dict[str, Any],
    ) -> tuple[WebhookDelivery, bool]:
        """Record a received delivery; (the stored row, whether it was new)."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""
                insert into webhook_deliveries
                    (source_id, id, tenant_id, event_type, payload, workflow_id)
                values (%s, %s, %s, %s, %s, %s)
                on conflict (source_id, id) do nothing
                returning {_COLUMNS}
                """,
                (
                    source_id,
                    delivery_id,
                    tenant,
                    event_type,
                    Jsonb(payload),
                    workflow_id_for(tenant, source_id, delivery_id),
                ),
            )
            row = await cur.fetchone()
            if row is not None:
                return _delivery(row), True
            cur = await conn.execute(
                f"select {_COLUMNS} from webhook_deliveries where source_id = %s and id = %s",
                (source_id, delivery_id),
            )
            row = await cur.fetchone()
        assert row is not None
        return _delivery(row), False

    async def finish(
        self, tenant: str, source_id: str, delivery_id: str, outcome: RouteOutcome
    ) -> WebhookDelivery:
        """Store the routing outcome once; a repeat keeps the first outcome."""
        async with self.db.connection() as conn:
            await conn.execute(
                """
                update webhook_deliveries
                set status = %s, route_name = %s, result = %s, route_time = now()
                where tenant_id = %s and source_id = %s and id = %s and status = 'received'
                """,
                (
                    outcome.status,
                    outcome.route_name,
                    outcome.result,
                    tenant,
                    source_id,
                    delivery_id,
                ),
            )
        return await self.get(tenant, source_id, delivery_id)

    async def get(self, tenant: str, source_id: str, delivery_id: str) -> WebhookDelivery:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""
                select {_COLUMNS} from webhook_deliveries
                where tenant_id = %s and source_id = %s and id = %s
                """,
                (tenant, source_id, delivery_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"delivery {delivery_id!r} of source {source_id!r} not found")
        return _delivery(row)

    async def list(
        self, tenant: str, *, source_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> DeliveryPage:
        rows, token = await newest_first(
            self.db,
            "webhook_deliveries",
            _COLUMNS,
            tenant,
            page_size=page_size,
            page_token=page_token,
            only=("source_id", source_id),
        )
        return DeliveryPage(deliveries=[_delivery(r) for r in rows], next_page_token=token)
