"""JWT bearer tokens: a JWKS served over HTTP by the test with RSA and EC keys the test made,
tokens the test signed, against a gRPC server (and /mcp) over the session's runtime."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loomwork.config import Settings
from loomwork.errors import FailedPrecondition, Unauthenticated
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, memory_pb2, memory_pb2_grpc
from server.transport.bearer import Authenticator
from server.transport.grpc_app import build_grpc_app
from server.transport.http import build_http_app
from server.transport.jwt_tokens import JwksKeys, JwtVerifier
from tests.support import auth, serving, unique

ISSUER = "https://issuer.test"
AUDIENCE = "loomwork-api"


@dataclass
class SigningKey:
    """A key pair made by the test: signs tokens, and its public half as a JWK."""

    kid: str
    private: Any
    algorithm: str

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        public = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def public_pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def token(self, *, kid: str | None = None, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "user-1",
            "tenant": "alpha",
            "iat": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        headers = {"kid": kid or self.kid}
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers=headers)


@dataclass
class Jwks:
    """The JWKS the test serves: the keys it lists now, and how often it was fetched."""

    keys: list[SigningKey]
    fetches: int = 0
    url: str = ""

    def app(self) -> Starlette:
        async def jwks(request: Request) -> Response:
            self.fetches += 1
            return JSONResponse({"keys": [key.jwk() for key in self.keys]})

        return Starlette(routes=[Route("/.well-known/jwks.json", jwks)])


RSA_KEY = SigningKey.rsa("rsa-1")
EC_KEY = SigningKey.ec("ec-1")


def jwt_settings(settings: Settings, **overrides: Any) -> Settings:
    values = {
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwt_jwks_min_refresh": 0.0,
        **overrides,
    }
    return settings.model_copy(update=values)


@pytest.fixture(scope="module")
async def jwks() -> AsyncIterator[Jwks]:
    served = Jwks([RSA_KEY, EC_KEY])
    async with serving(served.app()) as url:
        served.url = f"{url}/.well-known/jwks.json"
        yield served


@pytest.fixture(scope="module")
async def jwt_channel(runtime, worker, jwks: Jwks) -> AsyncIterator[grpc.aio.Channel]:
    """A gRPC server taking JWTs from the test's JWKS (no floor between refreshes, so a
    rotation is seen at once) and the session's static tokens."""
    auth_ = Authenticator.from_settings(jwt_settings(runtime.settings, jwt_jwks_url=jwks.url))
    app = build_grpc_app(runtime, "127.0.0.1:0", auth=auth_)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield channel
    finally:
        await app.stop(grace=1.0)


async def _refused(channel: grpc.aio.Channel, token: str) -> str:
    stub = memory_pb2_grpc.MemoryServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListThreads(memory_pb2.ListThreadsRequest(), metadata=auth(token))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value.details()
    return err.value.details() or ""


async def test_a_good_token_names_the_tenant(jwt_channel, token, jwks: Jwks) -> None:
    stub = memory_pb2_grpc.MemoryServiceStub(jwt_channel)
    for key in (RSA_KEY, EC_KEY):
        resource = unique("jwt-resource")
        created = await stub.CreateThread(
            memory_pb2.CreateThreadRequest(thread=memory_pb2.Thread(resource_id=resource)),
            metadata=auth(key.token()),
        )
        # The thread is tenant alpha's: the static token of alpha reads it.
        got = await stub.GetThread(
            memory_pb2.GetThreadRequest(thread_id=created.thread.id), metadata=auth(token)
        )
        assert got.thread.resource_id == resource
    # Another tenant's claim is another tenant.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetThread(
            memory_pb2.GetThreadRequest(thread_id=created.thread.id),
            metadata=auth(RSA_KEY.token(tenant="beta")),
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "https://evil.test"}, "issuer"),
        ({"exp": None}, "exp"),
        ({"tenant": None}, "'tenant'"),
    ],
)
async def test_a_bad_token_is_unauthenticated_with_the_reason(
    jwt_channel, claims: dict[str, Any], reason: str
) -> None:
    details = await _refused(jwt_channel, RSA_KEY.token(**claims))
    assert reason in details, details


async def test_a_bad_signature_is_unauthenticated(jwt_channel) -> None:
    impostor = SigningKey.rsa(RSA_KEY.kid)  # claims the kid of a served key
    details = await _refused(jwt_channel, impostor.token())
    assert "signature" in details, details
    # A token that is no JWT at all, and a symmetric one (HS256 with the public key as
    # secret: the classic confusion), are refused too.
    assert "unknown token" in await _refused(jwt_channel, "not-a-jwt")
    forged = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "tenant": "alpha", "exp": int(time.time()) + 60},
        "a-shared-secret-that-is-long-enough-for-hs256",
        algorithm="HS256",
        headers={"kid": RSA_KEY.kid},
    )
    assert "invalid token" in await _refused(jwt_channel, forged)


async def test_an_unknown_kid_is_refused_until_the_jwks_serves_it(jwt_channel, jwks: Jwks) -> None:
    rotated = SigningKey.ec(unique("rotated"))
    details = await _refused(jwt_channel, rotated.token())
    assert "unknown key id" in details and rotated.kid in details, details
    jwks.keys = [*jwks.keys, rotated]  # the identity provider rotates its keys
    stub = memory_pb2_grpc.MemoryServiceStub(jwt_channel)
    listed = await stub.ListThreads(memory_pb2.ListThreadsRequest(), metadata=auth(rotated.token()))
    assert listed is not None


async def test_the_jwks_is_cached_and_refetched_at_most_once_per_floor(jwks: Jwks) -> None:
    now = [1000.0]
    keys = JwksKeys(jwks.url, ttl=600, min_refresh=30, clock=lambda: now[0])
    verifier = JwtVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=["RS256", "ES256"],
        leeway=0,
        tenant_claim="tenant",
        roles_claim="roles",
        jwks=keys,
    )
    before = jwks.fetches
    for _ in range(3):
        assert (await verifier.principal(RSA_KEY.token())).tenant == "alpha"
    assert jwks.fetches - before == 1  # cached
    stranger = SigningKey.ec(unique("stranger"))
    for _ in range(5):  # a burst of unknown kids: no fetch within the floor
        with pytest.raises(Unauthenticated, match="unknown key id"):
            await verifier.principal(stranger.token())
    assert jwks.fetches - before == 1
    now[0] += 31  # past the floor: one unknown kid fetches again, and finds it
    jwks.keys = [*jwks.keys, stranger]
    assert (await verifier.principal(stranger.token())).tenant == "alpha"
    assert jwks.fetches - before == 2
    now[0] += 601  # past the TTL: fetched again on the next token
    await verifier.principal(RSA_KEY.token())
    assert jwks.fetches - before == 3


async def test_roles_come_from_the_token(jwt_channel) -> None:
    stub = agent_pb2_grpc.AgentServiceStub(jwt_channel)
    request = agent_pb2.CreateAgentRequest(
        agent=agent_pb2.Agent(name=unique("jwt-agent"), description="d", instructions="i")
    )
    for roles in (None, [], ["reader"], "reader writer"):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.CreateAgent(request, metadata=auth(EC_KEY.token(roles=roles)))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'admin'" in (denied.value.details() or "")
    created = await stub.CreateAgent(request, metadata=auth(EC_KEY.token(roles=["admin"])))
    assert created.agent.name == request.agent.name
    # A space-separated string (as `scope` is) works too.
    await stub.DeleteAgent(
        agent_pb2.DeleteAgentRequest(agent_name=request.agent.name),
        metadata=auth(EC_KEY.token(roles="reader admin")),
    )


async def test_claim_names_and_a_pem_public_key_are_configurable(runtime, worker) -> None:
    settings = jwt_settings(
        runtime.settings,
        jwt_public_key=RSA_KEY.public_pem(),
        jwt_tenant_claim="org",
        jwt_roles_claim="realm_access.roles",
    )
    app = build_grpc_app(runtime, "127.0.0.1:0", auth=Authenticator.from_settings(settings))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            good = RSA_KEY.token(tenant=None, org="alpha", realm_access={"roles": ["admin"]})
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            name = unique("pem-agent")
            await stub.CreateAgent(
                agent_pb2.CreateAgentRequest(
                    agent=agent_pb2.Agent(name=name, description="d", instructions="i")
                ),
                metadata=auth(good),
            )
            got = await stub.GetAgent(
                agent_pb2.GetAgentRequest(agent_name=name),
                metadata=auth(RSA_KEY.token(tenant=None, org="alpha")),
            )
            assert got.agent.name == name
            other = SigningKey.rsa(RSA_KEY.kid)
            assert "signature" in await _refused(channel, other.token(org="alpha"))
    finally:
        await app.stop(grace=1.0)


def test_jwt_settings_missing_or_wrong_refuse_to_start(settings: Settings) -> None:
    with pytest.raises(FailedPrecondition, match="LOOMWORK_JWT_AUDIENCE"):
        Authenticator.from_settings(
            settings.model_copy(update={"jwt_jwks_url": "http://x", "jwt_issuer": ISSUER})
        )
    with pytest.raises(FailedPrecondition, match="not a PEM public key"):
        Authenticator.from_settings(jwt_settings(settings, jwt_public_key="-----BEGIN nonsense"))


async def test_mcp_takes_the_same_tokens(runtime, worker, jwks: Jwks) -> None:
    auth_ = Authenticator.from_settings(jwt_settings(runtime.settings, jwt_jwks_url=jwks.url))
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"},
        },
    }
    headers = {"Accept": "application/json, text/event-stream"}
    async with serving(build_http_app(runtime, auth_)) as url, httpx2.AsyncClient() as http:
        expired = RSA_KEY.token(exp=int(time.time()) - 3600)
        response = await http.post(
            f"{url}/mcp", json=initialize, headers=headers | {"Authorization": f"Bearer {expired}"}
        )
        assert response.status_code == 401 and "expired" in response.json()["error"]
        response = await http.post(
            f"{url}/mcp",
            json=initialize,
            headers=headers | {"Authorization": f"Bearer {RSA_KEY.token()}"},
        )
        assert response.status_code == 200
