"""OAuth authorization code flow and fresh access tokens for tools.

`get_access_token` is the one way tools get a token: expiry check (with skew) → refresh with
the refresh token under a Redis lock (so replicas refresh a connection once) → store →
return. `request` adds the 401 rule: one refresh and one retry. A refresh token the provider
rejects (`invalid_grant`) marks the connection `needs_reauthorization`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx2
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import LockError

from loomwork.errors import FailedPrecondition, InvalidArgument, Unavailable, Violations
from loomwork.ids import new_id
from loomwork.integrations.connections import Connection, ConnectionStore, Tokens
from loomwork.integrations.providers import OAuthProvider, ProviderStore

T = TypeVar("T")
STATE_TTL_SECONDS = 600
_STATE_PREFIX = "loomwork:oauth-state:"
_LOCK_PREFIX = "loomwork:oauth-refresh:"


class NeedsReauthorization(FailedPrecondition):
    """The connection's refresh token no longer works: the user must authorize again."""


class TokenRejected(Exception):
    """Raised by a tool's call when the API answered 401 to the access token."""


class InvalidGrant(Exception):
    """The token endpoint answered `invalid_grant` (revoked or expired grant)."""


class Authorization(BaseModel):
    authorization_url: str
    state: str
    connection_id: str


class _PendingAuthorization(BaseModel):
    tenant: str
    provider_id: str
    connection_id: str
    scopes: list[str]
    label: str
    code_verifier: str


def _code_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def callback_url(public_url: str, provider_id: str) -> str:
    return f"{public_url.rstrip('/')}/oauth/{provider_id}/callback"


class OAuthConnections:
    """Authorizations, callbacks and access tokens of every tenant's connections."""

    def __init__(
        self,
        providers: ProviderStore,
        connections: ConnectionStore,
        redis: Redis,
        *,
        public_url: str,
        http: httpx2.AsyncClient | None = None,
        skew_seconds: float = 60.0,
        lock_seconds: float = 30.0,
    ) -> None:
        self.providers = providers
        self.connections = connections
        self.redis = redis
        self.public_url = public_url
        self.http = http or httpx2.AsyncClient(timeout=15.0)
        self.skew = timedelta(seconds=skew_seconds)
        self.lock_seconds = lock_seconds

    async def close(self) -> None:
        await self.http.aclose()

    def redirect_uri(self, provider_id: str) -> str:
        return callback_url(self.public_url, provider_id)

    # -- authorization code flow

    async def start_authorization(
        self, tenant: str, provider_id: str, *, scopes: list[str] | None = None, label: str = ""
    ) -> Authorization:
        v = Violations()
        if not provider_id:
            v.add("oauth_provider_id", "is required")
        for i, scope in enumerate(scopes or []):
            if not scope or " " in scope:
                v.add(f"scopes[{i}]", "must be a non-empty scope without spaces")
        if len(label) > 256:
            v.add("label", "at most 256 characters")
        v.raise_if_any()
        provider = await self.providers.get(tenant, provider_id)
        state = secrets.token_urlsafe(32)
        pending = _PendingAuthorization(
            tenant=tenant,
            provider_id=provider.id,
            connection_id=new_id("con"),
            scopes=list(scopes or provider.scopes),
            label=label,
            code_verifier=secrets.token_urlsafe(48),
        )
        await self.redis.set(_STATE_PREFIX + state, pending.model_dump_json(), ex=STATE_TTL_SECONDS)
        query = {
            "response_type": "code",
            "client_id": provider.client_id,
            "redirect_uri": self.redirect_uri(provider.id),
            "state": state,
            "code_challenge": _code_challenge(pending.code_verifier),
            "code_challenge_method": "S256",
        }
        if pending.scopes:
            query["scope"] = " ".join(pending.scopes)
        separator = "&" if "?" in provider.authorize_url else "?"
        return Authorization(
            authorization_url=f"{provider.authorize_url}{separator}{urlencode(query)}",
            state=state,
            connection_id=pending.connection_id,
        )

    async def complete_authorization(self, provider_id: str, state: str, code: str) -> Connection:
        """The callback: exchange `code` for tokens once per `state`, store the connection."""
        if not state:
            raise InvalidArgument.field("state", "is required")
        if not code:
            raise InvalidArgument.field("code", "is required")
        raw = await self.redis.getdel(_STATE_PREFIX + state)
        if raw is None:
            raise InvalidArgument.field("state", "is unknown, used or expired: start again")
        pending = _PendingAuthorization.model_validate_json(raw)
        if pending.provider_id != provider_id:
            raise InvalidArgument.field("state", "was issued for another provider")
        provider = await self.providers.get(pending.tenant, pending.provider_id, with_secret=True)
        try:
            data = await self._token_request(
                provider,
                {
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": self.redirect_uri(provider.id),
                    "code_verifier": pending.code_verifier,
                },
            )
        except InvalidGrant as exc:
            raise FailedPrecondition(
                f"{provider.id} rejected the authorization code: start again"
            ) from exc
        tokens = _tokens(data, previous_refresh=None)
        granted = data.get("scope")
        scopes = granted.split() if isinstance(granted, str) else pending.scopes
        return await self.connections.create(
            pending.tenant, pending.connection_id, provider.id, scopes, pending.label, tokens
        )

    # -- tokens for tools

    def _fresh(self, tokens: Tokens, rejected: str | None) -> bool:
        if rejected is not None and tokens.access_token == rejected:
            return False
        if tokens.expire_time is None:
            return True
        return tokens.expire_time - self.skew > datetime.now(UTC)

    async def get_access_token(
        self, tenant: str, connection_id: str, *, rejected: str | None = None
    ) -> str:
        """A valid access token; `rejected` is one the API just refused (refresh unless some
        other caller already replaced it)."""
        connection, tokens = await self.connections.tokens(tenant, connection_id)
        _check_usable(connection)
        if self._fresh(tokens, rejected):
            return tokens.access_token
        lock = self.redis.lock(
            f"{_LOCK_PREFIX}{tenant}/{connection_id}",
            timeout=self.lock_seconds,
            blocking_timeout=self.lock_seconds,
        )
        try:
            async with lock:
                # Another replica may have refreshed while this one waited for the lock.
                connection, tokens = await self.connections.tokens(tenant, connection_id)
                _check_usable(connection)
                if self._fresh(tokens, rejected):
                    return tokens.access_token
                return await self._refresh(connection, tokens)
        except LockError as exc:
            raise Unavailable(f"connection {connection_id!r}: refresh lock not acquired") from exc

    async def _refresh(self, connection: Connection, tokens: Tokens) -> str:
        if not tokens.refresh_token:
            await self.connections.mark_needs_reauthorization(connection.tenant, connection.id)
            raise _reauthorize(connection, "its access token expired and it has no refresh token")
        provider = await self.providers.get(
            connection.tenant, connection.provider_id, with_secret=True
        )
        try:
            data = await self._token_request(
                provider, {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token}
            )
        except InvalidGrant as exc:
            await self.connections.mark_needs_reauthorization(connection.tenant, connection.id)
            raise _reauthorize(connection, "the provider revoked its refresh token") from exc
        fresh = _tokens(data, previous_refresh=tokens.refresh_token)
        await self.connections.store_tokens(connection.tenant, connection.id, fresh)
        return fresh.access_token

    async def call_with_token(
        self, tenant: str, connection_id: str, call: Callable[[str], Awaitable[T]]
    ) -> T:
        """Run `call(access_token)`; if it raises TokenRejected, refresh once and retry once."""
        token = await self.get_access_token(tenant, connection_id)
        try:
            return await call(token)
        except TokenRejected:
            token = await self.get_access_token(tenant, connection_id, rejected=token)
            return await call(token)

    async def request(
        self, tenant: str, connection_id: str, method: str, url: str, **kwargs: Any
    ) -> httpx2.Response:
        """An HTTP request with the connection's bearer token (401: one refresh, one retry)."""

        async def send(token: str) -> httpx2.Response:
            headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {token}"}
            response = await self.http.request(method, url, headers=headers, **kwargs)
            if response.status_code == 401:
                raise TokenRejected(url)
            return response

        try:
            return await self.call_with_token(tenant, connection_id, send)
        except TokenRejected as exc:
            raise FailedPrecondition(
                f"{url} rejected a freshly refreshed token of connection {connection_id!r}"
            ) from exc

    async def _token_request(self, provider: OAuthProvider, form: dict[str, str]) -> dict[str, Any]:
        body = {**form, "client_id": provider.client_id, "client_secret": provider.client_secret}
        try:
            response = await self.http.post(
                provider.token_url, data=body, headers={"Accept": "application/json"}
            )
        except httpx2.HTTPError as exc:
            raise Unavailable(f"{provider.id} token endpoint: {exc}") from exc
        try:
            data = response.json()
        except (json.JSONDecodeError, ValueError):
            data = {}
        if response.status_code >= 500:
            raise Unavailable(f"{provider.id} token endpoint answered {response.status_code}")
        if response.status_code >= 400 or "error" in data:
            if isinstance(data, dict) and data.get("error") == "invalid_grant":
                raise InvalidGrant(str(data.get("error_description", "")))
            error = data.get("error", response.status_code) if isinstance(data, dict) else ""
            raise FailedPrecondition(f"{provider.id} token endpoint refused the request: {error}")
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise FailedPrecondition(f"{provider.id} token endpoint sent no access_token")
        return data


def _tokens(data: dict[str, Any], previous_refresh: str | None) -> Tokens:
    expires_in = data.get("expires_in")
    expire_time = None
    if isinstance(expires_in, int | float) and expires_in > 0:
        expire_time = datetime.now(UTC) + timedelta(seconds=float(expires_in))
    refresh = data.get("refresh_token")
    return Tokens(
        access_token=data["access_token"],
        # Providers that do not rotate refresh tokens omit them from refresh answers.
        refresh_token=refresh if isinstance(refresh, str) and refresh else previous_refresh,
        expire_time=expire_time,
    )


def _reauthorize(connection: Connection, why: str) -> NeedsReauthorization:
    return NeedsReauthorization(
        f"connection {connection.id!r} ({connection.provider_id}) needs re-authorization: "
        f"{why}; start a new authorization with StartAuthorization"
    )


def _check_usable(connection: Connection) -> None:
    if connection.status == "needs_reauthorization":
        raise _reauthorize(connection, "its refresh token was revoked")
