"""OAuth connections: the tokens of one authorization, encrypted at rest."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from loomwork.errors import NotFound
from loomwork.integrations.listing import newest_first
from loomwork.integrations.secret_box import SecretBox
from loomwork.storage.database import Database

ConnectionStatus = Literal["active", "needs_reauthorization"]
_COLUMNS = (
    "tenant_id, id, seq, provider_id, status, scopes, label, access_token_enc, "
    "refresh_token_enc, access_token_expire_time, create_time, update_time"
)


class Tokens(BaseModel):
    access_token: str = Field(repr=False)
    refresh_token: str | None = Field(default=None, repr=False)
    expire_time: datetime | None = None


class Connection(BaseModel):
    tenant: str
    id: str
    provider_id: str
    status: ConnectionStatus
    scopes: list[str]
    label: str
    access_token_expire_time: datetime | None
    create_time: datetime
    update_time: datetime


class ConnectionPage(BaseModel):
    connections: list[Connection]
    next_page_token: str = ""


def _connection(row: dict[str, Any]) -> Connection:
    return Connection(
        tenant=row["tenant_id"],
        id=row["id"],
        provider_id=row["provider_id"],
        status=row["status"],
        scopes=list(row["scopes"]),
        label=row["label"],
        access_token_expire_time=row["access_token_expire_time"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


class ConnectionStore:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.box = box

    def _refresh(self, tokens: Tokens) -> bytes | None:
        return self.box.encrypt(tokens.refresh_token) if tokens.refresh_token else None

    async def create(
        self,
        tenant: str,
        connection_id: str,
        provider_id: str,
        scopes: list[str],
        label: str,
        tokens: Tokens,
    ) -> Connection:
        """Store a new connection; a repeat of the same id keeps the first."""
        async with self.db.connection() as conn:
            await conn.execute(
                """
                insert into oauth_connections (tenant_id, id, provider_id, scopes, label,
                    access_token_enc, refresh_token_enc, access_token_expire_time)
                values (%s, %s, %s, %s, %s, %s, %s, %s)
                on conflict (tenant_id, id) do nothing
                """,
                (
                    tenant,
                    connection_id,
                    provider_id,
                    scopes,
                    label,
                    self.box.encrypt(tokens.access_token),
                    self._refresh(tokens),
                    tokens.expire_time,
                ),
            )
        return await self.get(tenant, connection_id)

    async def _row(self, tenant: str, connection_id: str) -> dict[str, Any]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"select {_COLUMNS} from oauth_connections where tenant_id = %s and id = %s",
                (tenant, connection_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"connection {connection_id!r} not found")
        return row

    async def get(self, tenant: str, connection_id: str) -> Connection:
        return _connection(await self._row(tenant, connection_id))

    async def tokens(self, tenant: str, connection_id: str) -> tuple[Connection, Tokens]:
        """The connection and its decrypted tokens."""
        row = await self._row(tenant, connection_id)
        refresh = row["refresh_token_enc"]
        return _connection(row), Tokens(
            access_token=self.box.decrypt(row["access_token_enc"]),
            refresh_token=self.box.decrypt(refresh) if refresh is not None else None,
            expire_time=row["access_token_expire_time"],
        )

    async def store_tokens(self, tenant: str, connection_id: str, tokens: Tokens) -> None:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                """
                update oauth_connections
                set access_token_enc = %s, refresh_token_enc = %s,
                    access_token_expire_time = %s, status = 'active', update_time = now()
                where tenant_id = %s and id = %s
                """,
                (
                    self.box.encrypt(tokens.access_token),
                    self._refresh(tokens),
                    tokens.expire_time,
                    tenant,
                    connection_id,
                ),
            )
        if cur.rowcount == 0:
            raise NotFound(f"connection {connection_id!r} not found")

    async def mark_needs_reauthorization(self, tenant: str, connection_id: str) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                """
                update oauth_connections set status = 'needs_reauthorization', update_time = now()
                where tenant_id = %s and id = %s
                """,
                (tenant, connection_id),
            )

    async def list(
        self, tenant: str, *, provider_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> ConnectionPage:
        rows, token = await newest_first(
            self.db,
            "oauth_connections",
            _COLUMNS,
            tenant,
            page_size=page_size,
            page_token=page_token,
            only=("provider_id", provider_id),
        )
        return ConnectionPage(connections=[_connection(r) for r in rows], next_page_token=token)

    async def delete(self, tenant: str, connection_id: str) -> None:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "delete from oauth_connections where tenant_id = %s and id = %s",
                (tenant, connection_id),
            )
        if cur.rowcount == 0:
            raise NotFound(f"connection {connection_id!r} not found")
