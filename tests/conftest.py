"""Session fixtures: real embedded servers, a real gRPC server and Temporal worker.

Set DATABASE_URL / REDIS_URL / TEMPORAL_ADDRESS to run against external servers
instead; whatever is unset is started embedded, once per test session.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx2
import pytest

from loomwork.config import Settings
from loomwork.testing import ScriptedModelServer
from protos.loomwork.v1 import (
    agent_pb2_grpc,
    integration_pb2_grpc,
    memory_pb2_grpc,
    rag_pb2_grpc,
    workflow_pb2_grpc,
)
from server.embedded import EmbeddedStack
from server.embedded.home import pick_free_port
from server.runtime import Runtime
from server.temporal import register_search_attributes
from server.transport.grpc_app import GrpcApp, build_grpc_app
from server.transport.http import build_http_app
from server.worker import build_worker
from tests.store_support import StoreService, moto_server, store_service
from tests.support import serving

# Fixtures of an OAuth provider the tests run (module-scoped, started when a test asks), and
# the storage adapters of the contract suites.
pytest_plugins = ["tests.oauth_provider", "tests.storage_backends"]

# Both may configure agents and integrations (role admin); t-alpha-user is a plain caller
# of tenant alpha (no role).
TOKENS = "t-alpha=alpha:admin,t-beta=beta:admin,t-alpha-user=alpha"
# What LOOMWORK_MEMORY_STORE may name; tests taking `store` run once on each.
MEMORY_STORES = ("postgres", "redis", "dynamodb")


def free_port() -> int:
    """A free port for a server a test starts, below the kernel's ephemeral range: a port the
    kernel hands out is also what outgoing connections take as their local port, so a
    listener started a moment later could find it taken."""
    return pick_free_port(set())


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """URLs of Postgres, Redis and Temporal: external ones from the environment, else embedded."""
    home = tmp_path_factory.mktemp("loomwork-home")
    stack = EmbeddedStack(
        home,
        postgres=not os.environ.get("DATABASE_URL"),
        redis=not os.environ.get("REDIS_URL"),
        temporal=not os.environ.get("TEMPORAL_ADDRESS"),
        temporal_ui=False,
    )
    endpoints = stack.start()
    try:
        yield {
            "DATABASE_URL": os.environ.get("DATABASE_URL") or endpoints.database_url or "",
            "REDIS_URL": os.environ.get("REDIS_URL") or endpoints.redis_url or "",
            "TEMPORAL_ADDRESS": os.environ.get("TEMPORAL_ADDRESS")
            or endpoints.temporal_address
            or "",
            "LOOMWORK_HOME": str(home),
        }
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def model_server() -> Iterator[ScriptedModelServer]:
    """The scripted OpenAI-compatible model every test's agents talk to (the one seam)."""
    server = ScriptedModelServer()
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop_in_thread()


@pytest.fixture(scope="session")
def settings(embedded: dict[str, str], model_server: ScriptedModelServer) -> Settings:
    return Settings(
        OPENAI_BASE_URL=model_server.base_url,
        OPENAI_API_KEY="test-key",
        LOOMWORK_CHAT_MODEL="scripted",
        # Demo mode, as LOOMWORK_DEMO=true sets it: most agent and workflow tests use the
        # demo tools, the `assistant` agent and the example workflows.
        LOOMWORK_DEMO=True,
        LOOMWORK_HOME=Path(embedded["LOOMWORK_HOME"]),
        DATABASE_URL=embedded["DATABASE_URL"],
        REDIS_URL=embedded["REDIS_URL"],
        TEMPORAL_ADDRESS=embedded["TEMPORAL_ADDRESS"],
        LOOMWORK_TOKENS=TOKENS,
        LOOMWORK_GRPC_ADDRESS="127.0.0.1:0",
        LOOMWORK_TASK_QUEUE="loomwork-test",
        # Workflow code runs in the strict sandbox here: a non-deterministic call fails.
        LOOMWORK_WORKFLOW_SANDBOX="strict",
    )


@pytest.fixture(scope="session")
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = await Runtime.open(settings)
    await register_search_attributes(rt.temporal, settings.temporal_namespace)
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture(scope="session")
async def worker(runtime: Runtime) -> AsyncIterator[None]:
    """A real Temporal worker polling the test task queue for the whole session."""
    temporal_worker = build_worker(runtime, identity="pytest-worker")
    task = asyncio.create_task(temporal_worker.run())
    try:
        yield None
    finally:
        await temporal_worker.shutdown()
        await task


@pytest.fixture(scope="session")
async def grpc_app(runtime: Runtime, worker: None) -> AsyncIterator[GrpcApp]:
    app = build_grpc_app(runtime, "127.0.0.1:0", health_interval=0.3)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=2.0)


@pytest.fixture(scope="session")
def grpc_address(grpc_app: GrpcApp) -> str:
    return f"127.0.0.1:{grpc_app.port}"


@pytest.fixture(scope="session")
def token() -> str:
    return "t-alpha"


@pytest.fixture(scope="session")
def other_token() -> str:
    return "t-beta"


@pytest.fixture(scope="session")
async def channel(grpc_address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(grpc_address) as ch:
        yield ch


@pytest.fixture(scope="session")
def agents(channel: grpc.aio.Channel) -> agent_pb2_grpc.AgentServiceStub:
    return agent_pb2_grpc.AgentServiceStub(channel)


@pytest.fixture
def model(model_server: ScriptedModelServer) -> Iterator[ScriptedModelServer]:
    """The scripted model with no requests recorded yet; its script is reset afterwards."""
    model_server.requests.clear()
    yield model_server
    model_server.set_script(None)


@pytest.fixture(scope="session")
def memory_stub(channel: grpc.aio.Channel) -> memory_pb2_grpc.MemoryServiceStub:
    return memory_pb2_grpc.MemoryServiceStub(channel)


@pytest.fixture(scope="session")
def workflows(channel: grpc.aio.Channel) -> workflow_pb2_grpc.WorkflowServiceStub:
    return workflow_pb2_grpc.WorkflowServiceStub(channel)


@pytest.fixture(scope="session")
def rag(channel: grpc.aio.Channel) -> rag_pb2_grpc.RagServiceStub:
    return rag_pb2_grpc.RagServiceStub(channel)


@pytest.fixture(scope="session")
def integrations(channel: grpc.aio.Channel) -> integration_pb2_grpc.IntegrationServiceStub:
    return integration_pb2_grpc.IntegrationServiceStub(channel)


@pytest.fixture(scope="session")
async def http_url(runtime: Runtime, worker: None) -> AsyncIterator[str]:
    """Base URL of Loomwork's HTTP endpoint (webhooks, health) over the session runtime."""
    async with serving(build_http_app(runtime)) as url:
        yield url


@pytest.fixture(scope="session")
async def http(http_url: str) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=http_url, timeout=30) as client:
        yield client


# -- memory stores: the session's service is the postgres one; the others start once, when
# a test first asks, each with its own database, worker and gRPC server.


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A local DynamoDB-compatible endpoint (moto's server), with the AWS settings the
    SDK needs to reach it (any credentials and region do)."""
    env = pytest.MonkeyPatch()
    env.setenv("AWS_ACCESS_KEY_ID", "testing")
    env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env.delenv("AWS_SESSION_TOKEN", raising=False)
    env.delenv("AWS_PROFILE", raising=False)
    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    env.setenv("AWS_REGION", "us-east-1")
    try:
        with moto_server() as endpoint:
            yield endpoint
    finally:
        env.undo()


@pytest.fixture(scope="session")
def postgres_store(runtime: Runtime, channel: grpc.aio.Channel) -> StoreService:
    return StoreService("postgres", runtime, channel)


@pytest.fixture(scope="session")
async def redis_store(settings: Settings, runtime: Runtime) -> AsyncIterator[StoreService]:
    async with store_service(settings, "redis") as service:
        yield service


@pytest.fixture(scope="session")
async def dynamodb_store(
    settings: Settings, runtime: Runtime, moto_endpoint: str
) -> AsyncIterator[StoreService]:
    async with store_service(
        settings.model_copy(update={"aws_endpoint_url": moto_endpoint}), "dynamodb"
    ) as service:
        yield service


@pytest.fixture(params=MEMORY_STORES)
def store(request: pytest.FixtureRequest) -> StoreService:
    """Loomwork with its memory in each store in turn (the test runs once per store)."""
    service: StoreService = request.getfixturevalue(f"{request.param}_store")
    return service


@pytest.fixture
def store_memory(store: StoreService) -> memory_pb2_grpc.MemoryServiceStub:
    """`memory_stub` of each store in turn."""
    return store.memory
