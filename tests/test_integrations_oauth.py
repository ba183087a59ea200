"""OAuth connections: a local authorization server and a local API that requires its tokens,
both run here on uvicorn; real Postgres and Redis behind Loomwork."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx2
import pytest
from redis.asyncio import Redis

from loomwork.errors import FailedPrecondition
from loomwork.integrations.connections import ConnectionStore
from loomwork.integrations.oauth import NeedsReauthorization, OAuthConnections
from loomwork.integrations.providers import ProviderStore
from protos.loomwork.v1 import integration_pb2
from protos.loomwork.v1 import integration_pb2_grpc as integration_grpc
from tests.oauth_provider import CLIENT_ID, CLIENT_SECRET, connect, create_provider
from tests.support import auth, field_violations, unique


@pytest.fixture(scope="module")
def stub(channel) -> integration_grpc.IntegrationServiceStub:
    return integration_grpc.IntegrationServiceStub(channel)


async def test_authorization_creates_a_connection_with_encrypted_tokens(
    stub, token, other_token, provider, provider_server, http_url, runtime
) -> None:
    created, connection_id = await connect(stub, token, provider_server, http_url)
    assert not created.client_secret
    connection = (
        await stub.GetConnection(
            integration_pb2.GetConnectionRequest(connection_id=connection_id), metadata=auth(token)
        )
    ).connection
    assert connection.status == integration_pb2.CONNECTION_STATUS_ACTIVE
    assert connection.label == "ada" and list(connection.scopes) == ["read", "write"]
    assert connection.access_token_expire_time.seconds > time.time() + 3000
    listed = await stub.ListConnections(
        integration_pb2.ListConnectionsRequest(oauth_provider_id=created.id), metadata=auth(token)
    )
    assert [c.id for c in listed.connections] == [connection_id]

    access = runtime.integrations.oauth
    current = await access.get_access_token("alpha", connection_id)
    assert current in provider.access
    async with runtime.db.connection() as conn:
        cur = await conn.execute("select * from oauth_connections where id = %s", (connection_id,))
        row = await cur.fetchone()
        cur = await conn.execute(
            "select client_secret_enc from oauth_providers where id = %s", (created.id,)
        )
        provider_row = await cur.fetchone()
    raw = b"".join(
        bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in row.values()
    )
    assert current.encode() not in raw
    assert not any(r.encode() in raw for r in provider.refresh)
    assert CLIENT_SECRET.encode() not in bytes(provider_row["client_secret_enc"])

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetConnection(
            integration_pb2.GetConnectionRequest(connection_id=connection_id),
            metadata=auth(other_token),
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await stub.DeleteConnection(
        integration_pb2.DeleteConnectionRequest(connection_id=connection_id), metadata=auth(token)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetConnection(
            integration_pb2.GetConnectionRequest(connection_id=connection_id), metadata=auth(token)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _replica(runtime, **kwargs) -> tuple[OAuthConnections, Redis]:
    """A second process's view: its own Redis client and HTTP client, the same database."""
    integrations = runtime.integrations
    redis = Redis.from_url(runtime.settings.redis_url)
    oauth = OAuthConnections(
        ProviderStore(runtime.db, integrations.box),
        ConnectionStore(runtime.db, integrations.box),
        redis,
        public_url="http://127.0.0.1:1",
        **kwargs,
    )
    return oauth, redis


async def test_concurrent_refreshes_across_replicas_happen_once(
    stub, token, provider, provider_server, http_url, runtime
) -> None:
    provider.expires_in = 30  # inside the default 60 s skew: every token counts as expiring
    _, connection_id = await connect(stub, token, provider_server, http_url)
    provider.refresh_delay = 0.3
    one, redis_one = _replica(runtime)
    two, redis_two = _replica(runtime)
    provider.expires_in = 3600
    try:
        tokens = await asyncio.gather(
            *(replica.get_access_token("alpha", connection_id) for replica in (one, two, one, two))
        )
    finally:
        for replica, redis in ((one, redis_one), (two, redis_two)):
            await replica.close()
            await redis.aclose()
    assert provider.refreshes == 1
    assert len(set(tokens)) == 1 and tokens[0] in provider.access


async def test_expiry_during_a_tool_call_refreshes_once_and_retries(
    stub, token, provider, provider_server, http_url, runtime
) -> None:
    _, base = provider_server
    _, connection_id = await connect(stub, token, provider_server, http_url)
    oauth = runtime.integrations.oauth
    first = await oauth.request("alpha", connection_id, "GET", f"{base}/api/me")
    assert first.status_code == 200 and provider.refreshes == 0
    # The provider expires the token early (our stored expiry still says it is valid).
    provider.access[provider.api_calls[-1]] = 0
    second = await oauth.request("alpha", connection_id, "GET", f"{base}/api/me")
    assert second.status_code == 200 and second.json() == {"me": "ada"}
    assert provider.refreshes == 1
    assert provider.api_calls[-2] != provider.api_calls[-1]  # retried with the new token

    # Proactive: a token past its expiry (with skew) is refreshed before the call.
    provider.expires_in = 1
    quick = await oauth.get_access_token("alpha", connection_id, rejected=provider.api_calls[-1])
    assert provider.refreshes == 2
    lazy, redis = _replica(runtime, skew_seconds=0)
    try:
        await asyncio.sleep(1.1)
        provider.expires_in = 3600
        calls = len(provider.api_calls)
        response = await lazy.request("alpha", connection_id, "GET", f"{base}/api/me")
    finally:
        await lazy.close()
        await redis.aclose()
    assert response.status_code == 200
    # Refreshed before calling: the API saw one call, with a new token, and no 401.
    assert provider.refreshes == 3
    assert len(provider.api_calls) == calls + 1 and provider.api_calls[-1] != quick


async def test_revoked_refresh_token_needs_reauthorization(
    stub, token, provider, provider_server, http_url, runtime
) -> None:
    provider.expires_in = 5
    _, connection_id = await connect(stub, token, provider_server, http_url)
    provider.refresh.clear()  # the user revoked the app at the provider
    oauth = runtime.integrations.oauth
    with pytest.raises(NeedsReauthorization) as err:
        await oauth.get_access_token("alpha", connection_id)
    assert isinstance(err.value, FailedPrecondition)
    assert "re-authorization" in err.value.message and connection_id in err.value.message
    connection = (
        await stub.GetConnection(
            integration_pb2.GetConnectionRequest(connection_id=connection_id), metadata=auth(token)
        )
    ).connection
    assert connection.status == integration_pb2.CONNECTION_STATUS_NEEDS_REAUTHORIZATION
    with pytest.raises(NeedsReauthorization):  # without asking the provider again
        await oauth.get_access_token("alpha", connection_id)


async def test_callback_rejects_unknown_state_and_provider_errors(
    stub, token, provider_server, http_url
) -> None:
    async with httpx2.AsyncClient() as browser:
        unknown = await browser.get(f"{http_url}/oauth/x/callback?state=nope&code=c")
        assert unknown.status_code == 400 and "state" in unknown.text
        denied = await browser.get(f"{http_url}/oauth/x/callback?error=access_denied&state=s")
        assert denied.status_code == 400 and "access_denied" in denied.text
    # A state issued for one provider does not complete another.
    _, base = provider_server
    created = await create_provider(stub, token, base)
    started = await stub.StartAuthorization(
        integration_pb2.StartAuthorizationRequest(oauth_provider_id=created.id),
        metadata=auth(token),
    )
    state = parse_qs(urlsplit(started.authorization_url).query)["state"][0]
    async with httpx2.AsyncClient() as browser:
        wrong = await browser.get(f"{http_url}/oauth/other/callback?state={state}&code=c")
    assert wrong.status_code == 400


async def test_oauth_rpcs_reject_bad_input(stub, token, provider_server) -> None:
    _, base = provider_server

    def provider(**overrides) -> integration_pb2.CreateOAuthProviderRequest:
        fields = {
            "id": "good-id",
            "authorize_url": f"{base}/authorize",
            "token_url": f"{base}/token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }
        fields.update(overrides)
        return integration_pb2.CreateOAuthProviderRequest(
            oauth_provider=integration_pb2.OAuthProvider(**fields)
        )

    pb, md = integration_pb2, auth(token)
    calls = [
        (stub.CreateOAuthProvider(pb.CreateOAuthProviderRequest(), metadata=md), "oauth_provider"),
        (stub.CreateOAuthProvider(provider(id="Bad Id"), metadata=md), "oauth_provider.id"),
        (
            stub.CreateOAuthProvider(provider(authorize_url="http://example.com/a"), metadata=md),
            "oauth_provider.authorize_url",
        ),
        (
            stub.CreateOAuthProvider(provider(token_url="ftp://x"), metadata=md),
            "oauth_provider.token_url",
        ),
        (
            stub.CreateOAuthProvider(provider(client_id=""), metadata=md),
            "oauth_provider.client_id",
        ),
        (
            stub.CreateOAuthProvider(provider(client_secret=""), metadata=md),
            "oauth_provider.client_secret",
        ),
        (
            stub.CreateOAuthProvider(provider(scopes=["a b"]), metadata=md),
            "oauth_provider.scopes[0]",
        ),
        (
            stub.ListOAuthProviders(pb.ListOAuthProvidersRequest(page_size=1001), metadata=md),
            "page_size",
        ),
        (
            stub.DeleteOAuthProvider(pb.DeleteOAuthProviderRequest(), metadata=md),
            "oauth_provider_id",
        ),
        (stub.StartAuthorization(pb.StartAuthorizationRequest(), metadata=md), "oauth_provider_id"),
        (
            stub.StartAuthorization(
                pb.StartAuthorizationRequest(oauth_provider_id="p", scopes=[""]), metadata=md
            ),
            "scopes[0]",
        ),
        (
            stub.ListConnections(pb.ListConnectionsRequest(page_token="zzz"), metadata=md),
            "page_token",
        ),
        (stub.GetConnection(pb.GetConnectionRequest(), metadata=md), "connection_id"),
        (stub.DeleteConnection(pb.DeleteConnectionRequest(), metadata=md), "connection_id"),
    ]
    for call, field_name in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field_name
        assert field_name in field_violations(err.value), field_name
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StartAuthorization(
            integration_pb2.StartAuthorizationRequest(oauth_provider_id="missing"),
            metadata=auth(token),
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    created = await stub.CreateOAuthProvider(provider(id=unique("dup")), metadata=auth(token))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateOAuthProvider(provider(id=created.oauth_provider.id), metadata=auth(token))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = await stub.ListOAuthProviders(
        integration_pb2.ListOAuthProvidersRequest(page_size=1000), metadata=auth(token)
    )
    assert created.oauth_provider.id in [p.id for p in listed.oauth_providers]
    await stub.DeleteOAuthProvider(
        integration_pb2.DeleteOAuthProviderRequest(oauth_provider_id=created.oauth_provider.id),
        metadata=auth(token),
    )
