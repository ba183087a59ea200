"""`loomwork health`: is this host's Loomwork process healthy? (the image's HEALTHCHECK).

A gRPC server listening on LOOMWORK_GRPC_ADDRESS here must answer SERVING (over TLS, the
same process's HTTP endpoint must answer /healthz); where none listens, a worker of this
host must be polling the task queue (Temporal lists its pollers by identity, `pid@host`).
"""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime, timedelta

import grpc
import httpx2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from loomwork.config import Settings
from loomwork.errors import Unavailable
from server.temporal import connect_temporal
from server.tls import temporal_tls

# A worker polls continuously; one not seen for this long is not polling any more.
POLL_FRESHNESS = timedelta(seconds=70)
TIMEOUT = 5.0


def local_address(address: str) -> tuple[str, int]:
    """Where to reach a listener bound to `address` from this host (0.0.0.0 → 127.0.0.1)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return host, int(port)


def listening(address: str) -> bool:
    try:
        with socket.create_connection(local_address(address), timeout=TIMEOUT):
            return True
    except OSError:
        return False


async def check_health(settings: Settings) -> str:
    """What is healthy here, in a line; Unavailable saying what is not."""
    if listening(settings.grpc_address):
        return await _server_health(settings)
    return await _worker_health(settings)


async def _server_health(settings: Settings) -> str:
    host, port = local_address(settings.grpc_address)
    if settings.tls_cert is not None:
        # TLS (perhaps mTLS): the same process's HTTP endpoint, which asks for no client
        # certificate; this host's own listener, so its certificate need not be verified.
        http_host, http_port = local_address(settings.http_address)
        url = f"https://{http_host}:{http_port}/healthz"
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        try:
            async with httpx2.AsyncClient(verify=unverified, timeout=TIMEOUT) as http:
                response = await http.get(url)
        except httpx2.HTTPError as error:
            raise Unavailable(f"the HTTP endpoint at {url} does not answer: {error}") from error
        if response.status_code != 200:
            raise Unavailable(f"{url} answered {response.status_code}")
        return f"server: {url} ok"
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT
            )
        except grpc.aio.AioRpcError as error:
            raise Unavailable(f"gRPC health at {host}:{port}: {error.details()}") from error
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise Unavailable(f"gRPC server at {host}:{port} is {status}")
    return f"server: gRPC at {host}:{port} {status}"


async def _worker_health(settings: Settings) -> str:
    if not settings.temporal_address:
        raise Unavailable(
            f"no gRPC server listens on {settings.grpc_address}, and TEMPORAL_ADDRESS is not "
            "set to look for a worker"
        )
    client = await connect_temporal(
        settings.temporal_address,
        settings.temporal_namespace,
        tls=temporal_tls(settings),
        api_key=settings.temporal_api_key,
        wait_seconds=TIMEOUT,
    )
    suffix = f"@{socket.gethostname()}"
    now = datetime.now(UTC)
    for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=settings.temporal_namespace,
                task_queue=TaskQueue(name=settings.task_queue),
                task_queue_type=kind,
            ),
            timeout=timedelta(seconds=TIMEOUT),
        )
        fresh = [
            poller
            for poller in described.pollers
            if poller.identity.endswith(suffix)
            and now - poller.last_access_time.ToDatetime(UTC) < POLL_FRESHNESS
        ]
        if not fresh:
            raise Unavailable(
                f"no gRPC server listens on {settings.grpc_address}, and no worker of this "
                f"host ({suffix[1:]}) polls task queue {settings.task_queue!r}"
            )
    return f"worker: polling task queue {settings.task_queue!r}"
