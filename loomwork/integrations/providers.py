"""OAuth providers per tenant (authorization code grant); client secrets stored encrypted."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import psycopg
from pydantic import BaseModel, Field

from loomwork.errors import AlreadyExists, NotFound, Violations
from loomwork.integrations.listing import newest_first
from loomwork.integrations.secret_box import SecretBox
from loomwork.storage.database import Database

PROVIDER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_COLUMNS = (
    "tenant_id, id, seq, authorize_url, token_url, client_id, client_secret_enc, scopes, "
    "create_time"
)


class NewOAuthProvider(BaseModel):
    id: str
    authorize_url: str
    token_url: str
    client_id: str
    client_secret: str
    scopes: list[str] = Field(default_factory=list)


class OAuthProvider(BaseModel):
    tenant: str
    id: str
    authorize_url: str
    token_url: str
    client_id: str
    scopes: list[str]
    create_time: datetime
    client_secret: str = Field(default="", repr=False, exclude=True)


class OAuthProviderPage(BaseModel):
    providers: list[OAuthProvider]
    next_page_token: str = ""


def url_problem(url: str) -> str | None:
    """Why `url` cannot be an OAuth endpoint (https, or http on loopback), or None."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return None
    return "must be an https URL (http only on 127.0.0.1/localhost)"


def _check(new: NewOAuthProvider) -> None:
    v = Violations()
    if not PROVIDER_ID.match(new.id):
        v.add("oauth_provider.id", "must be 1..64 characters of [a-z0-9-]")
    for name in ("authorize_url", "token_url"):
        problem = url_problem(getattr(new, name))
        if problem:
            v.add(f"oauth_provider.{name}", problem)
    if not new.client_id or len(new.client_id) > 512:
        v.add("oauth_provider.client_id", "is required (at most 512 characters)")
    if not new.client_secret or len(new.client_secret) > 1024:
        v.add("oauth_provider.client_secret", "is required (at most 1024 characters)")
    for i, scope in enumerate(new.scopes):
        if not scope or " " in scope or len(scope) > 256:
            v.add(f"oauth_provider.scopes[{i}]", "must be a non-empty scope without spaces")
    v.raise_if_any()


class ProviderStore:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.box = box

    def _provider(self, row: dict[str, Any], *, with_secret: bool = False) -> OAuthProvider:
        return OAuthProvider(
            tenant=row["tenant_id"],
            id=row["id"],
            authorize_url=row["authorize_url"],
            token_url=row["token_url"],
            client_id=row["client_id"],
            scopes=list(row["scopes"]),
            create_time=row["create_time"],
            client_secret=self.box.decrypt(row["client_secret_enc"]) if with_secret else "",
        )

    async def create(self, tenant: str, new: NewOAuthProvider) -> OAuthProvider:
        _check(new)
        async with self.db.connection() as conn:
            try:
                cur = await conn.execute(
                    f"""
                    insert into oauth_providers
                        (tenant_id, id, authorize_url, token_url, client_id, client_secret_enc,
                         scopes)
                    values (%s, %s, %s, %s, %s, %s, %s)
                    returning {_COLUMNS}
                    """,
                    (
                        tenant,
                        new.id,
                        new.authorize_url,
                        new.token_url,
                        new.client_id,
                        self.box.encrypt(new.client_secret),
                        new.scopes,
                    ),
                )
            except psycopg.errors.UniqueViolation as exc:
                raise AlreadyExists(f"OAuth provider {new.id!r} exists already") from exc
            row = await cur.fetchone()
        assert row is not None
        return self._provider(row)

    async def get(
        self, tenant: str, provider_id: str, *, with_secret: bool = False
    ) -> OAuthProvider:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"select {_COLUMNS} from oauth_providers where tenant_id = %s and id = %s",
                (tenant, provider_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"OAuth provider {provider_id!r} not found")
        return self._provider(row, with_secret=with_secret)

    async def list(
        self, tenant: str, *, page_size: int = 0, page_token: str = ""
    ) -> OAuthProviderPage:
        rows, token = await newest_first(
            self.db, "oauth_providers", _COLUMNS, tenant, page_size=page_size, page_token=page_token
        )
        return OAuthProviderPage(providers=[self._provider(r) for r in rows], next_page_token=token)

    async def delete(self, tenant: str, provider_id: str) -> None:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "delete from oauth_providers where tenant_id = %s and id = %s",
                (tenant, provider_id),
            )
        if cur.rowcount == 0:
            raise NotFound(f"OAuth provider {provider_id!r} not found")
