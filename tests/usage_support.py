"""A server and worker of their own for the usage tests: tenants of their own (so their
usage is only what a test made), a price table and quotas set as an operator sets them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

import grpc

from loomwork.config import Settings
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, usage_pb2, usage_pb2_grpc
from server.transport.grpc_app import build_grpc_app
from tests.support import RunningWorker, auth, own_runtime, unique


@dataclass
class UsageServer:
    """The server's stubs, and the token of each tenant by its role in the tests."""

    agents: agent_pb2_grpc.AgentServiceStub
    usage: usage_pb2_grpc.UsageServiceStub
    channel: grpc.aio.Channel
    address: str
    tokens: dict[str, str]
    tenants: dict[str, str]
    since: datetime  # before any of the tenants' runs

    async def generate(
        self, who: str, agent: str = "assistant", **fields: Any
    ) -> agent_pb2.AgentRun:
        response = await self.agents.Generate(
            agent_pb2.GenerateRequest(agent_name=agent, prompt="hello", **fields),
            metadata=auth(self.tokens[who]),
        )
        return response.run

    async def list_usage(self, who: str, **fields: Any) -> usage_pb2.ListUsageResponse:
        request = usage_pb2.ListUsageRequest(**fields)
        if not request.HasField("start_time"):
            request.start_time.FromDatetime(self.since)
        return await self.usage.ListUsage(request, metadata=auth(self.tokens[who]))


@asynccontextmanager
async def usage_server(
    settings: Settings,
    roles: list[str],
    *,
    prices: dict[str, Any] | None = None,
    quotas: dict[str, Any] | None = None,
) -> AsyncIterator[UsageServer]:
    """A runtime, worker and gRPC server whose tenants (one per role, admins) are new; the
    quotas are by role."""
    tenants = {role: unique(f"usage-{role}") for role in roles}
    tokens = {role: unique(f"t-{role}") for role in roles}
    overrides = {
        "tokens": ",".join(f"{tokens[r]}={tenants[r]}:admin" for r in roles),
        "model_prices": json.dumps(prices or {}),
        "quotas": json.dumps({tenants[r]: q for r, q in (quotas or {}).items()}),
    }
    async with own_runtime(settings, **overrides) as runtime:
        worker = RunningWorker(runtime)
        app = build_grpc_app(runtime, "127.0.0.1:0", health_interval=0.3)
        await app.start()
        address = f"127.0.0.1:{app.port}"
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                yield UsageServer(
                    agent_pb2_grpc.AgentServiceStub(channel),
                    usage_pb2_grpc.UsageServiceStub(channel),
                    channel,
                    address,
                    tokens,
                    tenants,
                    datetime.now(UTC) - timedelta(minutes=1),
                )
        finally:
            await app.stop(grace=1.0)
            await worker.stop()


def next_utc_midnight() -> datetime:
    """When a day's token count starts again."""
    return datetime.combine(datetime.now(UTC).date() + timedelta(days=1), time(), tzinfo=UTC)
