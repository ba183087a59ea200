"""The grpc.aio server: servicers, interceptors, health, reflection, graceful shutdown."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from loomwork.memory.index_backlog import IndexBacklog
from protos.loomwork.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    integration_pb2,
    integration_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    rag_pb2,
    rag_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from server.indexing import IndexingSweep, MessageIndexing
from server.runtime import Runtime
from server.servicers.agent import AgentServicer
from server.servicers.integration import IntegrationServicer
from server.servicers.memory import MemoryServicer
from server.servicers.rag import RagServicer
from server.servicers.usage import UsageServicer
from server.servicers.workflow import WorkflowServicer
from server.tls import grpc_server_credentials
from server.transport.bearer import Authenticator
from server.transport.health import ExtraCheck, HealthMonitor
from server.transport.interceptors import (
    AuthInterceptor,
    ErrorInterceptor,
    ValidationInterceptor,
)
from server.transport.rpc_telemetry import RpcTelemetryInterceptor

log = logging.getLogger(__name__)

SERVICE_NAMES = [
    memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    rag_pb2.DESCRIPTOR.services_by_name["RagService"].full_name,
    workflow_pb2.DESCRIPTOR.services_by_name["WorkflowService"].full_name,
    integration_pb2.DESCRIPTOR.services_by_name["IntegrationService"].full_name,
    usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name,
]


@dataclass
class GrpcApp:
    server: grpc.aio.Server
    health: HealthMonitor
    port: int
    # Starts the indexing of stored messages whose start failed (MemoryService).
    indexing_sweep: IndexingSweep | None = None

    async def start(self) -> None:
        await self.server.start()
        await self.health.start()
        if self.indexing_sweep is not None:
            self.indexing_sweep.start()

    async def stop(self, grace: float = 10.0) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish within `grace`."""
        await self.health.stop()
        await self.server.stop(grace)
        if self.indexing_sweep is not None:
            await self.indexing_sweep.stop()


def build_grpc_app(
    runtime: Runtime,
    address: str,
    *,
    health_interval: float = 2.0,
    auth: Authenticator | None = None,
    health_checks: Sequence[ExtraCheck] = (),
) -> GrpcApp:
    """A server bound to `address` (port 0 picks a free one), not yet started; over TLS when
    LOOMWORK_TLS_CERT is set. `auth` authenticates callers (default: from the settings);
    `health_checks`: what else health probes besides the runtime's dependencies."""
    settings = runtime.settings
    credentials = grpc_server_credentials(settings)
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    tracing = runtime.telemetry is not None and runtime.telemetry.tracing
    server = grpc.aio.server(
        # Outermost first: every call traced and measured, errors are mapped for all, requests
        # are checked once authenticated.
        interceptors=[
            RpcTelemetryInterceptor(tracing=tracing),
            ErrorInterceptor(),
            AuthInterceptor(auth or Authenticator.from_settings(settings)),
            ValidationInterceptor(),
        ],
        options=options,
    )
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(runtime), server)
    indexing = MessageIndexing(runtime.temporal, settings.task_queue, IndexBacklog(runtime.db))
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(MemoryServicer(runtime, indexing), server)
    integration_pb2_grpc.add_IntegrationServiceServicer_to_server(
        IntegrationServicer(runtime), server
    )
    workflow_pb2_grpc.add_WorkflowServiceServicer_to_server(WorkflowServicer(runtime), server)
    rag_pb2_grpc.add_RagServiceServicer_to_server(RagServicer(runtime), server)
    usage_pb2_grpc.add_UsageServiceServicer_to_server(UsageServicer(runtime), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}: address in use or not available")
    monitor = HealthMonitor(
        health_servicer,
        SERVICE_NAMES,
        db=runtime.db,
        redis=runtime.redis,
        temporal=runtime.temporal,
        store_check=runtime.store.health_check if runtime.store is not None else None,
        checks=health_checks,
        interval=health_interval,
    )
    sweep = IndexingSweep(indexing, settings.index_sweep_seconds)
    return GrpcApp(server=server, health=monitor, port=port, indexing_sweep=sweep)
