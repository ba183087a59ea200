"""Webhook sources per tenant: secret (encrypted), signature headers, tolerance, routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field

from loomwork.errors import NotFound, Violations
from loomwork.ids import new_id
from loomwork.integrations.listing import newest_first
from loomwork.integrations.routing import Route, check_routes
from loomwork.integrations.secret_box import SecretBox
from loomwork.storage.database import Database

DEFAULT_SIGNATURE_HEADER = "Loomwork-Signature"
DEFAULT_DELIVERY_ID_HEADER = "Loomwork-Delivery"
DEFAULT_EVENT_TYPE_HEADER = "Loomwork-Event"
DEFAULT_TOLERANCE_SECONDS = 300
_HEADER_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_COLUMNS = (
    "id, tenant_id, seq, display_name, secret_enc, signature_header, delivery_id_header, "
    "event_type_header, tolerance_seconds, routes, create_time"
)


class NewWebhookSource(BaseModel):
    display_name: str = ""
    secret: str
    signature_header: str = ""
    delivery_id_header: str = ""
    event_type_header: str = ""
    tolerance_seconds: int = 0
    routes: list[Route] = Field(default_factory=list)


class WebhookSource(BaseModel):
    """A stored source; the secret is only in `secret` when read for verification."""

    id: str
    tenant: str
    display_name: str
    signature_header: str
    delivery_id_header: str
    event_type_header: str
    tolerance_seconds: int
    routes: list[Route]
    create_time: datetime
    secret: str = Field(default="", repr=False, exclude=True)

    @property
    def path(self) -> str:
        return f"/webhooks/{self.id}"


class WebhookSourcePage(BaseModel):
    sources: list[WebhookSource]
    next_page_token: str = ""


def _check(new: NewWebhookSource) -> None:
    v = Violations()
    if len(new.display_name) > 256:
        v.add("webhook_source.display_name", "at most 256 characters")
    if not 16 <= len(new.secret) <= 256:
        v.add("webhook_source.secret", "must be 16..256 characters")
    for name in ("signature_header", "delivery_id_header", "event_type_header"):
        value = getattr(new, name)
        if value and (len(value) > 64 or not set(value) <= _HEADER_CHARS):
            v.add(f"webhook_source.{name}", "must be a header name (letters, digits, - and _)")
    if new.tolerance_seconds and not 1 <= new.tolerance_seconds <= 3600:
        v.add("webhook_source.timestamp_tolerance", "must be between 1s and 1h")
    v.raise_if_any()
    check_routes(new.routes, "webhook_source.routes")


class WebhookSourceStore:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.box = box

    def _source(self, row: dict[str, Any], *, with_secret: bool = False) -> WebhookSource:
        return WebhookSource(
            id=row["id"],
            tenant=row["tenant_id"],
            display_name=row["display_name"],
            signature_header=row["signature_header"],
            delivery_id_header=row["delivery_id_header"],
            event_type_header=row["event_type_header"],
            tolerance_seconds=row["tolerance_seconds"],
            routes=[Route.model_validate(r) for r in row["routes"]],
            create_time=row["create_time"],
            secret=self.box.decrypt(row["secret_enc"]) if with_secret else "",
        )

    async def create(self, tenant: str, new: NewWebhookSource) -> WebhookSource:
        _check(new)
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""
                insert into webhook_sources (id, tenant_id, display_name, secret_enc,
                    signature_header, delivery_id_header, event_type_header, tolerance_seconds,
                    routes)
                values (%s, %s, %s, %s, %s, %s, %s, %s, %s)
                returning {_COLUMNS}
                """,
                (
                    new_id("whs"),
                    tenant,
                    new.display_name,
                    self.box.encrypt(new.secret),
                    new.signature_header or DEFAULT_SIGNATURE_HEADER,
                    new.delivery_id_header or DEFAULT_DELIVERY_ID_HEADER,
                    new.event_type_header or DEFAULT_EVENT_TYPE_HEADER,
                    new.tolerance_seconds or DEFAULT_TOLERANCE_SECONDS,
                    Jsonb([r.model_dump() for r in new.routes]),
                ),
            )
            row = await cur.fetchone()
        assert row is not None
        return self._source(row)

    async def get(self, tenant: str, source_id: str) -> WebhookSource:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"select {_COLUMNS} from webhook_sources where tenant_id = %s and id = %s",
                (tenant, source_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"webhook source {source_id!r} not found")
        return self._source(row)

    async def for_delivery(self, source_id: str) -> WebhookSource:
        """The source (any tenant) with its decrypted secret, to verify a request."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"select {_COLUMNS} from webhook_sources where id = %s", (source_id,)
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"webhook source {source_id!r} not found")
        return self._source(row, with_secret=True)

    async def list(
        self, tenant: str, *, page_size: int = 0, page_token: str = ""
    ) -> WebhookSourcePage:
        rows, token = await newest_first(
            self.db, "webhook_sources", _COLUMNS, tenant, page_size=page_size, page_token=page_token
        )
        return WebhookSourcePage(sources=[self._source(r) for r in rows], next_page_token=token)

    async def delete(self, tenant: str, source_id: str) -> None:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "delete from webhook_sources where tenant_id = %s and id = %s",
                (tenant, source_id),
            )
        if cur.rowcount == 0:
            raise NotFound(f"webhook source {source_id!r} not found")
