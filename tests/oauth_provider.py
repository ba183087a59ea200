"""A tiny OAuth authorization server with an API behind it, run on uvicorn in the test
process, and the user journey that connects Loomwork to it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from protos.loomwork.v1 import integration_pb2
from tests.support import auth, serving, unique

CLIENT_ID = "loomwork-test"
CLIENT_SECRET = "client-secret-123"


@dataclass
class Provider:
    """A tiny authorization server: codes with PKCE, short-lived tokens, revocable grants."""

    expires_in: int = 3600
    refresh_delay: float = 0.0
    codes: dict[str, str] = field(default_factory=dict)  # code -> code_challenge
    access: dict[str, float] = field(default_factory=dict)  # token -> expiry (epoch)
    refresh: set[str] = field(default_factory=set)
    refreshes: int = 0
    api_calls: list[str] = field(default_factory=list)

    def issue(self, refresh_token: str | None = None) -> dict:
        token = "at-" + secrets.token_hex(12)
        self.access[token] = time.time() + self.expires_in
        refresh_token = refresh_token or "rt-" + secrets.token_hex(12)
        self.refresh.add(refresh_token)
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": refresh_token,
            "scope": "read write",
        }

    def app(self) -> Starlette:
        async def authorize(request: Request) -> Response:
            q = request.query_params
            assert q["client_id"] == CLIENT_ID and q["code_challenge_method"] == "S256"
            code = "code-" + secrets.token_hex(8)
            self.codes[code] = q["code_challenge"]
            query = urlencode({"code": code, "state": q["state"]})
            return RedirectResponse(f"{q['redirect_uri']}?{query}", status_code=302)

        async def token(request: Request) -> Response:
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            if (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET):
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            if form.get("grant_type") == "authorization_code":
                challenge = self.codes.pop(str(form.get("code")), None)
                verifier = str(form.get("code_verifier", ""))
                digest = hashlib.sha256(verifier.encode()).digest()
                if challenge != base64.urlsafe_b64encode(digest).decode().rstrip("="):
                    return JSONResponse({"error": "invalid_grant"}, status_code=400)
                return JSONResponse(self.issue())
            refresh_token = str(form.get("refresh_token"))
            if refresh_token not in self.refresh:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            self.refreshes += 1
            await asyncio.sleep(self.refresh_delay)
            return JSONResponse(self.issue(refresh_token))

        async def api(request: Request) -> Response:
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
            self.api_calls.append(bearer)
            if self.access.get(bearer, 0) < time.time():
                return JSONResponse({"error": "invalid_token"}, status_code=401)
            return JSONResponse({"me": "ada"})

        return Starlette(
            routes=[
                Route("/authorize", authorize),
                Route("/token", token, methods=["POST"]),
                Route("/api/me", api),
            ]
        )


@pytest.fixture(scope="module")
async def provider_server() -> AsyncIterator[tuple[Provider, str]]:
    provider = Provider()
    async with serving(provider.app()) as url:
        yield provider, url


@pytest.fixture
def provider(provider_server) -> Provider:
    p, _ = provider_server
    p.expires_in, p.refresh_delay, p.refreshes = 3600, 0.0, 0
    p.api_calls.clear()
    return p


async def create_provider(stub, token: str, base: str) -> integration_pb2.OAuthProvider:
    request = integration_pb2.CreateOAuthProviderRequest(
        oauth_provider=integration_pb2.OAuthProvider(
            id=unique("prov").lower(),
            authorize_url=f"{base}/authorize",
            token_url=f"{base}/token",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            scopes=["read", "write"],
        )
    )
    return (await stub.CreateOAuthProvider(request, metadata=auth(token))).oauth_provider


async def connect(stub, token: str, provider_server, http_url: str, label: str = "ada"):
    """The whole user journey: StartAuthorization → provider → our callback → a connection."""
    _, base = provider_server
    created = await create_provider(stub, token, base)
    started = await stub.StartAuthorization(
        integration_pb2.StartAuthorizationRequest(oauth_provider_id=created.id, label=label),
        metadata=auth(token),
    )
    assert f"state={started.state}" in started.authorization_url
    async with httpx2.AsyncClient() as browser:
        redirect = await browser.get(started.authorization_url)
        assert redirect.status_code == 302
        location = urlsplit(redirect.headers["location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == created.redirect_uri
        callback = await browser.get(f"{http_url}/oauth/{created.id}/callback?{location.query}")
        assert callback.status_code == 200, callback.text
        assert started.connection_id in callback.text
        # The state is single-use.
        again = await browser.get(f"{http_url}/oauth/{created.id}/callback?{location.query}")
        assert again.status_code == 400
    return created, started.connection_id
