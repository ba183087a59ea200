"""TLS with certificates the test makes: the gRPC server (and mTLS), the HTTP endpoint on the
same certificate, and the connections to Temporal (mTLS and an API key, as Temporal Cloud
wants), Redis (`rediss://`) and PostgreSQL (`sslmode`), each through a TLS-terminating proxy
in front of the session's real server."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx2
import pytest
import typer
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from typer.testing import CliRunner

from clients import LoomworkClient
from clients.cli import register
from loomwork.config import Settings
from loomwork.errors import FailedPrecondition, Unavailable
from loomwork.messages import NewThread
from protos.loomwork.v1 import memory_pb2, memory_pb2_grpc
from server.healthcheck import check_health
from server.runtime import Runtime
from server.temporal import connect_temporal
from server.tls import grpc_server_credentials, temporal_tls
from server.transport.grpc_app import build_grpc_app
from server.transport.http import open_http_server
from tests.support import auth, unique
from tests.tls_support import Issued, TestCA, tls_proxy


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: TestCA
    server: Issued
    client: Issued
    stranger_ca: TestCA
    stranger: Issued  # a client certificate of another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = TestCA(folder / "ca")
    other = TestCA(folder / "other", name="Someone Else's CA")
    return Pki(
        ca,
        ca.issue("server", server=True),
        ca.issue("client", server=False),
        other,
        other.issue("stranger", server=False),
    )


def _with(runtime: Runtime, **settings: Any) -> Runtime:
    """The session's runtime (same connections) as a process with these settings sees it."""
    return dataclasses.replace(runtime, settings=runtime.settings.model_copy(update=settings))


@asynccontextmanager
async def tls_server(runtime: Runtime, pki: Pki, *, mtls: bool) -> AsyncIterator[str]:
    """A gRPC server with LOOMWORK_TLS_CERT/KEY (and LOOMWORK_TLS_CLIENT_CA when `mtls`): its
    address by the name its certificate carries."""
    configured = _with(
        runtime,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=pki.ca.cert_path if mtls else None,
    )
    app = build_grpc_app(configured, "127.0.0.1:0")
    await app.start()
    try:
        yield f"localhost:{app.port}"
    finally:
        await app.stop(grace=1.0)


def _credentials(pki: Pki, client: Issued | None = None) -> grpc.ChannelCredentials:
    key, cert = (
        (None, None) if client is None else (client.key.read_bytes(), client.cert.read_bytes())
    )
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_path.read_bytes(), private_key=key, certificate_chain=cert
    )


async def _list_threads(channel: grpc.aio.Channel, token: str) -> grpc.StatusCode:
    try:
        await memory_pb2_grpc.MemoryServiceStub(channel).ListThreads(
            memory_pb2.ListThreadsRequest(), metadata=auth(token), timeout=5
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_grpc_over_tls(runtime, worker, pki: Pki, token: str) -> None:
    async with tls_server(runtime, pki, mtls=False) as address:
        # The typed client over TLS, trusting the test's CA.
        async with LoomworkClient(address, token, credentials=_credentials(pki)) as client:
            thread = await client.memory.create_thread(resource_id=unique("tls"), title="over TLS")
            assert thread.title == "over TLS"
        async with grpc.aio.insecure_channel(address) as plain:  # plaintext: no answer
            assert await _list_threads(plain, token) == grpc.StatusCode.UNAVAILABLE
        untrusted = grpc.ssl_channel_credentials(pki.stranger_ca.cert_path.read_bytes())
        async with grpc.aio.secure_channel(address, untrusted) as channel:
            assert await _list_threads(channel, token) == grpc.StatusCode.UNAVAILABLE


async def test_grpc_with_client_certificates_required(runtime, worker, pki: Pki, token) -> None:
    async with tls_server(runtime, pki, mtls=True) as address:
        async with grpc.aio.secure_channel(address, _credentials(pki, pki.client)) as channel:
            assert await _list_threads(channel, token) == grpc.StatusCode.OK
            # The certificate admits the connection; the bearer token still names the caller.
            assert await _list_threads(channel, "nope") == grpc.StatusCode.UNAUTHENTICATED
        for client in (None, pki.stranger):
            async with grpc.aio.secure_channel(address, _credentials(pki, client)) as channel:
                assert await _list_threads(channel, token) == grpc.StatusCode.UNAVAILABLE


async def test_the_http_endpoint_serves_https_on_the_same_certificate(
    runtime, worker, pki: Pki, token: str
) -> None:
    configured = _with(
        runtime,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=pki.ca.cert_path,  # mTLS is for gRPC: webhooks come without certificates
        http_address="127.0.0.1:0",
    )
    server = open_http_server(configured)
    await server.start()
    try:
        url = f"https://localhost:{server.port}"
        trusting = ssl.create_default_context(cafile=str(pki.ca.cert_path))
        async with httpx2.AsyncClient(verify=trusting, timeout=10) as http:
            assert (await http.get(f"{url}/healthz")).text == "ok"
            listed = await http.post(
                f"{url}/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
                headers={
                    "Authorization": f"Bearer {token}",
                    "Accept": "application/json, text/event-stream",
                    "MCP-Protocol-Version": "2025-06-18",
                },
            )
            assert listed.status_code == 200, listed.text
        async with httpx2.AsyncClient(timeout=10) as http:
            with pytest.raises(httpx2.HTTPError):  # plain HTTP on the TLS port
                await http.get(f"http://localhost:{server.port}/healthz")
    finally:
        await server.stop()


def _temporal_settings(settings: Settings, pki: Pki, client: Issued | None) -> Settings:
    return settings.model_copy(
        update={
            "temporal_tls_ca": pki.ca.cert_path,
            "temporal_tls_server_name": "localhost",
            "temporal_tls_cert": client.cert if client else None,
            "temporal_tls_key": client.key if client else None,
            "temporal_api_key": "test-api-key",
        }
    )


async def test_temporal_over_mtls_with_an_api_key(embedded, settings: Settings, pki: Pki) -> None:
    async with tls_proxy(
        embedded["TEMPORAL_ADDRESS"], pki.server, client_ca=pki.ca.cert_path, alpn=["h2"]
    ) as proxy:
        configured = _temporal_settings(settings, pki, pki.client)
        client = await connect_temporal(
            proxy.address,
            "default",
            tls=temporal_tls(configured),
            api_key=configured.temporal_api_key,
            wait_seconds=10,
        )
        info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
        assert info.server_version
        assert client.api_key == "test-api-key"
        assert proxy.handshakes >= 1
        # Without the client certificate the proxy (as Temporal Cloud would) refuses it.
        bare = _temporal_settings(settings, pki, None)
        with pytest.raises(Unavailable, match="cannot reach Temporal"):
            await connect_temporal(
                proxy.address, "default", tls=temporal_tls(bare), wait_seconds=0.5
            )


async def test_runtime_opens_over_tls_to_temporal_redis_and_postgres(
    embedded, settings: Settings, pki: Pki
) -> None:
    """A process's settings pass TLS through: TEMPORAL_TLS_*, a `rediss://` REDIS_URL and a
    DATABASE_URL with `sslmode=verify-full` each reach a TLS server and work."""
    database = urlsplit(embedded["DATABASE_URL"])
    redis = urlsplit(embedded["REDIS_URL"])
    ca = pki.ca.cert_path
    async with (
        tls_proxy(embedded["TEMPORAL_ADDRESS"], pki.server, alpn=["h2"]) as temporal,
        tls_proxy(redis.netloc, pki.server) as valkey,
        # libpq's direct TLS (sslnegotiation=direct) names its protocol by ALPN.
        tls_proxy(database.netloc.rpartition("@")[2], pki.server, alpn=["postgresql"]) as pg,
    ):
        user = database.netloc.rpartition("@")[0]
        configured = _temporal_settings(settings, pki, None).model_copy(
            update={
                "temporal_address": temporal.address,
                "redis_url": f"rediss://{valkey.address}{redis.path}?ssl_ca_certs={ca}",
                "database_url": (
                    f"postgresql://{user}@{pg.address}{database.path}"
                    f"?sslmode=verify-full&sslrootcert={ca}&sslnegotiation=direct"
                ),
                "task_queue": unique("tls-queue"),
            }
        )
        runtime = await Runtime.open(configured, migrate=False)
        try:
            assert await runtime.redis.ping()
            async with runtime.db.connection() as conn:
                row = await (await conn.execute("SELECT 1 AS one")).fetchone()
            assert row == {"one": 1}
            thread = await runtime.memory.create_thread(
                "alpha", NewThread(resource_id=unique("tls"), title="through TLS")
            )
            assert (await runtime.memory.get_thread("alpha", thread.id)).title == "through TLS"
            await runtime.temporal.count_workflows()
        finally:
            await runtime.close()
        assert temporal.handshakes >= 1 and valkey.handshakes >= 1 and pg.handshakes >= 1


def test_tls_settings_that_do_not_fit_refuse_to_start(settings: Settings, pki: Pki) -> None:
    with pytest.raises(FailedPrecondition, match="LOOMWORK_TLS_KEY"):
        grpc_server_credentials(settings.model_copy(update={"tls_cert": pki.server.cert}))
    with pytest.raises(FailedPrecondition, match="LOOMWORK_TLS_CERT"):
        grpc_server_credentials(
            settings.model_copy(
                update={"tls_cert": Path("/nonexistent.pem"), "tls_key": pki.server.key}
            )
        )
    with pytest.raises(FailedPrecondition, match="TEMPORAL_TLS_KEY"):
        temporal_tls(settings.model_copy(update={"temporal_tls_cert": pki.client.cert}))
    assert temporal_tls(settings) is False
    assert temporal_tls(settings.model_copy(update={"temporal_api_key": "k"})) is True


async def test_the_cli_calls_over_tls_with_a_client_certificate(
    runtime, worker, pki: Pki, token: str
) -> None:
    app = typer.Typer()
    register(app)
    async with tls_server(runtime, pki, mtls=True) as address:
        env = {
            "LOOMWORK_GRPC_ADDRESS": address,
            "LOOMWORK_TOKEN": token,
            "LOOMWORK_TLS_CA": str(pki.ca.cert_path),
            "LOOMWORK_TLS_CLIENT_CERT": str(pki.client.cert),
            "LOOMWORK_TLS_CLIENT_KEY": str(pki.client.key),
        }
        args = ["threads", "create", "--resource", unique("cli-tls"), "--title", "cli over mTLS"]
        made = await asyncio.to_thread(CliRunner(env=env).invoke, app, args)
        assert made.exit_code == 0, made.output
        assert "cli over mTLS" in made.output
        without = {k: v for k, v in env.items() if "CLIENT" not in k}
        refused = await asyncio.to_thread(CliRunner(env=without).invoke, app, args)
        assert refused.exit_code == 1 and "UNAVAILABLE" in refused.output, refused.output


async def test_the_health_check_of_a_tls_server(runtime, worker, pki: Pki) -> None:
    """`loomwork health` where the gRPC server requires client certificates: the same
    process's HTTPS endpoint answers for it."""
    configured = _with(
        runtime,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=pki.ca.cert_path,
        http_address="127.0.0.1:0",
    )
    http = open_http_server(configured)
    await http.start()
    try:
        async with tls_server(runtime, pki, mtls=True) as address:
            here = configured.settings.model_copy(
                update={"grpc_address": address, "http_address": http.address}
            )
            assert "/healthz ok" in await check_health(here)
    finally:
        await http.stop()
