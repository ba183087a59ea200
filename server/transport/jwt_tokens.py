"""JWT bearer tokens (pyjwt): the signature checked against a JWKS (cached, fetched again on
an unknown `kid`) or one public key, then issuer, audience and expiry; the tenant and roles
read from their claims."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx2
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from loomwork.config import Settings
from loomwork.errors import FailedPrecondition, Unauthenticated, Unavailable
from server.transport.access import Principal

log = logging.getLogger(__name__)

# Why pyjwt refused a token, as the caller is told it (the first class that matches).
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not valid yet (nbf)"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "signing algorithm not allowed"),
    (jwt.MissingRequiredClaimError, "missing claim"),
)
JWKS_FETCH_TIMEOUT = 5.0


def _reason(error: jwt.PyJWTError) -> str:
    for cls, reason in _REASONS:
        if isinstance(error, cls):
            return f"invalid token: {reason} ({error})"
    return f"invalid token: {error}"


class JwksKeys:
    """The keys of a JWKS URL by `kid`: fetched when first needed, again when older than
    `ttl`, and on an unknown `kid` once the last fetch is older than `min_refresh`.
    Concurrent callers share one fetch."""

    def __init__(
        self,
        url: str,
        *,
        ttl: float,
        min_refresh: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.ttl = ttl
        self.min_refresh = min_refresh
        self.clock = clock
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at: float | None = None
        self.fetches = 0
        self._lock = asyncio.Lock()

    def _age(self) -> float:
        return float("inf") if self.fetched_at is None else self.clock() - self.fetched_at

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The key that signed a token with header `kid`; Unauthenticated when the JWKS has
        none (after fetching it again, if allowed), Unavailable when it cannot be fetched."""
        if self._age() >= self.ttl:
            await self._refresh(lambda: self._age() >= self.ttl)
        found = self._find(kid)
        if found is None and self._age() >= self.min_refresh:
            await self._refresh(lambda: self._find(kid) is None and self._age() >= self.min_refresh)
            found = self._find(kid)
        if found is None:
            if kid is None:
                raise Unauthenticated(
                    "invalid token: no key id (kid) in its header, and the JWKS has "
                    f"{len(self.keys)} keys"
                )
            raise Unauthenticated(f"invalid token: unknown key id (kid) {kid!r}")
        return found

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)

    async def _refresh(self, still_needed: Callable[[], bool]) -> None:
        async with self._lock:
            if not still_needed():  # another caller fetched while this one waited
                return
            try:
                async with httpx2.AsyncClient(timeout=JWKS_FETCH_TIMEOUT) as client:
                    response = await client.get(self.url)
                    response.raise_for_status()
                    keys = jwt.PyJWKSet.from_dict(response.json())
            except (httpx2.HTTPError, ValueError, jwt.PyJWTError) as error:
                self.fetched_at = self.clock()  # the floor holds for failures too
                if self.keys:
                    log.warning("JWKS %s: %s; keeping the keys fetched before", self.url, error)
                    return
                raise Unavailable(f"cannot fetch the JWKS at {self.url}: {error}") from error
            self.fetches += 1
            self.fetched_at = self.clock()
            self.keys = {key.key_id or f"#{i}": key for i, key in enumerate(keys.keys)}
            log.info("JWKS %s: %d keys", self.url, len(self.keys))


class JwtVerifier:
    """Verifies a JWT and reads its caller: tenant and roles from the configured claims."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        algorithms: list[str],
        leeway: float,
        tenant_claim: str,
        roles_claim: str,
        jwks: JwksKeys | None = None,
        public_key: Any = None,
    ) -> None:
        if (jwks is None) == (public_key is None):
            raise ValueError("a JwtVerifier needs a JWKS or a public key")
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms
        self.leeway = leeway
        self.tenant_claim = tenant_claim
        self.roles_claim = roles_claim
        self.jwks = jwks
        self.public_key = public_key

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtVerifier | None:
        """The verifier LOOMWORK_JWT_* describe; None when JWTs are off. A setting missing or
        wrong is FailedPrecondition, so the process refuses to start."""
        if not settings.jwt_enabled:
            return None
        missing = [
            name
            for name, value in (
                ("LOOMWORK_JWT_ISSUER", settings.jwt_issuer),
                ("LOOMWORK_JWT_AUDIENCE", settings.jwt_audience),
            )
            if not value
        ]
        if missing:
            raise FailedPrecondition(f"JWT auth is on: set {' and '.join(missing)}")
        if settings.jwt_jwks_url and settings.jwt_public_key:
            raise FailedPrecondition(
                "set LOOMWORK_JWT_JWKS_URL or LOOMWORK_JWT_PUBLIC_KEY, not both"
            )
        jwks = public_key = None
        if settings.jwt_jwks_url:
            jwks = JwksKeys(
                settings.jwt_jwks_url,
                ttl=settings.jwt_jwks_ttl,
                min_refresh=settings.jwt_jwks_min_refresh,
            )
        else:
            public_key = load_public_key(settings.jwt_public_key or "")
        return cls(
            issuer=settings.jwt_issuer or "",
            audience=settings.jwt_audience or "",
            algorithms=[a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()],
            leeway=settings.jwt_leeway,
            tenant_claim=settings.jwt_tenant_claim,
            roles_claim=settings.jwt_roles_claim,
            jwks=jwks,
            public_key=public_key,
        )

    async def principal(self, token: str) -> Principal:
        """The caller a token names; Unauthenticated with the reason when it is not valid."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise Unauthenticated(_reason(error)) from error
        key: Any = self.public_key
        if self.jwks is not None:
            kid = header.get("kid")
            key = await self.jwks.key(kid if isinstance(kid, str) else None)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated(_reason(error)) from error
        tenant = claim(claims, self.tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated(
                f"invalid token: claim {self.tenant_claim!r} (the tenant) is missing or not a "
                "string"
            )
        return Principal(
            tenant=tenant,
            roles=_roles(claim(claims, self.roles_claim)),
            subject=str(claims.get("sub", "")),
        )


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name; dots reach into objects (`realm_access.roles`)."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _roles(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def load_public_key(value: str) -> Any:
    """A public key from PEM text, or from the PEM file `value` names."""
    text = value.strip()
    source = "LOOMWORK_JWT_PUBLIC_KEY"
    if not text.startswith("-----BEGIN"):
        path = Path(text)
        source = f"LOOMWORK_JWT_PUBLIC_KEY ({path})"
        try:
            text = path.read_text()
        except OSError as error:
            raise FailedPrecondition(f"{source}: {error.strerror or error}") from error
    try:
        return load_pem_public_key(text.encode())
    except ValueError as error:
        raise FailedPrecondition(f"{source} is not a PEM public key: {error}") from error
