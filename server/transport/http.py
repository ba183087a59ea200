"""The HTTP endpoint (ASGI, Starlette on uvicorn): /healthz, /metrics (Prometheus text),
signed webhooks, OAuth callbacks, and MCP at /mcp (`server.transport.mcp_endpoint`).

`POST /webhooks/{source_id}`: source ids are unique across tenants (`whs_…`), so the id
names the tenant. Answers 202 once routing is started durably on Temporal; 401 for a
missing, wrong or stale signature; 409 for a delivery id seen before; 400 for a body that
is not a JSON object or has no delivery id; 404 for an unknown source. Rejections start
nothing and record nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from loomwork.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LoomworkError,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from loomwork.integrations.components import Integrations
from loomwork.integrations.intake import WebhookIntake
from loomwork.integrations.routing import WebhookEvent
from server.runtime import Runtime
from server.telemetry.metrics import prometheus_text
from server.tls import http_ssl_options
from server.transport.bearer import Authenticator
from server.transport.mcp_endpoint import MCP_PATH, McpEndpoint
from workflows.search_attributes import TENANT
from workflows.webhook_delivery import WebhookDeliveryWorkflow

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[LoomworkError], int]] = [
    (Unauthenticated, 401),
    (AlreadyExists, 409),
    (InvalidArgument, 400),
    (NotFound, 404),
    (Unavailable, 503),
]


class TemporalRoutingStarter:
    """Starts the WebhookDelivery workflow; a second start of one delivery joins the first."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue

    async def start(self, event: WebhookEvent, workflow_id: str) -> None:
        try:
            await self.client.start_workflow(
                WebhookDeliveryWorkflow.run,
                event,
                id=workflow_id,
                task_queue=self.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes(
                    [SearchAttributePair(TENANT, event.tenant)]
                ),
                static_summary=f"webhook {event.event_type} from {event.source_id}",
            )
        except WorkflowAlreadyStartedError:
            pass  # routed before (and finished): nothing to start
        except RPCError as error:
            raise Unavailable(f"Temporal: {error.message}") from error


def _error(error: LoomworkError) -> JSONResponse:
    status = next((code for cls, code in _STATUS if isinstance(error, cls)), 500)
    body: dict[str, object] = {"error": error.message}
    if isinstance(error, InvalidArgument):
        body["fields"] = {v.field: v.description for v in error.violations}
    return JSONResponse(body, status_code=status)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def metrics(request: Request) -> Response:
    body, content_type = prometheus_text()
    return Response(body, media_type=content_type)


# What every process's HTTP endpoint serves, a worker's too.
PROBE_ROUTES = (
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
)


def build_probe_app() -> Starlette:
    """A worker's HTTP endpoint: /healthz and /metrics alone."""
    return Starlette(routes=list(PROBE_ROUTES))


def build_http_app(runtime: Runtime, auth: Authenticator | None = None) -> Starlette:
    """The endpoint's app over `runtime`; `auth` authenticates /mcp (default: from settings)."""
    integrations = runtime.integrations
    assert integrations is not None
    starter = TemporalRoutingStarter(runtime.temporal, runtime.settings.task_queue)
    mcp = McpEndpoint(runtime, auth or Authenticator.from_settings(runtime.settings))
    return build_asgi(integrations, starter, mcp=mcp)


def build_asgi(
    integrations: Integrations,
    starter: TemporalRoutingStarter,
    *,
    mcp: McpEndpoint | None = None,
) -> Starlette:
    """The ASGI app over an `Integrations` and a routing starter, with `mcp` at /mcp."""
    intake = WebhookIntake(
        integrations.sources, integrations.deliveries, integrations.replay, starter
    )

    async def webhook(request: Request) -> Response:
        source_id = request.path_params["source_id"]
        body = await request.body()
        try:
            accepted = await intake.receive(source_id, request.headers, body)
        except LoomworkError as error:
            log.info("webhook %s rejected: %s", source_id, error.message)
            return _error(error)
        log.info(
            "webhook accepted",
            extra={
                "tenant": accepted.tenant,
                "workflow_id": accepted.workflow_id,
                "delivery_id": accepted.delivery_id,
            },
        )
        return JSONResponse(
            {
                "status": "accepted",
                "delivery_id": accepted.delivery_id,
                "workflow_id": accepted.workflow_id,
            },
            status_code=202,
        )

    async def oauth_callback(request: Request) -> Response:
        provider_id = request.path_params["provider_id"]
        params = request.query_params
        if params.get("error"):
            reason = params.get("error_description") or params["error"]
            return HTMLResponse(
                f"<h1>Authorization failed</h1><p>{html.escape(reason)}</p>", status_code=400
            )
        try:
            connection = await integrations.oauth.complete_authorization(
                provider_id, params.get("state", ""), params.get("code", "")
            )
        except LoomworkError as error:
            status = next((code for cls, code in _STATUS if isinstance(error, cls)), 400)
            return HTMLResponse(
                f"<h1>Authorization failed</h1><p>{html.escape(error.message)}</p>",
                status_code=400 if status == 404 else status,
            )
        log.info("OAuth connection %s created for tenant %s", connection.id, connection.tenant)
        return HTMLResponse(
            f"<h1>Connected</h1><p>Connection <code>{html.escape(connection.id)}</code> to "
            f"{html.escape(provider_id)} is ready. You can close this window.</p>"
        )

    routes = [
        *PROBE_ROUTES,
        Route("/webhooks/{source_id}", webhook, methods=["POST"]),
        Route("/oauth/{provider_id}/callback", oauth_callback, methods=["GET"]),
    ]
    if mcp is None:
        return Starlette(routes=routes)
    routes.append(Route(MCP_PATH, mcp))  # GET, POST and DELETE: the SDK answers each
    return Starlette(routes=routes, lifespan=lambda app: mcp.lifespan())


def open_http_server(
    runtime: Runtime, app: Starlette | None = None, auth: Authenticator | None = None
) -> HttpServer:
    """The process's HTTP endpoint on LOOMWORK_HTTP_ADDRESS (HTTPS with LOOMWORK_TLS_CERT):
    `app`, by default the whole endpoint (`auth` authenticates its /mcp). When that variable
    is unset and the default port is taken, a free port is used instead (logged); when it is
    set and taken, FailedPrecondition says so."""
    settings = runtime.settings
    app = app or build_http_app(runtime, auth)
    ssl_options = http_ssl_options(settings)
    try:
        return HttpServer(app, settings.http_address, **ssl_options)
    except OSError as exc:
        if "http_address" in settings.model_fields_set:
            raise FailedPrecondition(
                f"LOOMWORK_HTTP_ADDRESS {settings.http_address}: {exc}. "
                "Stop what uses it, or set LOOMWORK_HTTP_ADDRESS=127.0.0.1:<port>."
            ) from exc
        host = settings.http_address.rpartition(":")[0] or "127.0.0.1"
        log.warning("%s is in use: serving HTTP on a free port instead", settings.http_address)
        return HttpServer(app, f"{host}:0", **ssl_options)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the process (server/process.py) owns SIGINT/SIGTERM


class HttpServer:
    """uvicorn serving an ASGI app on a socket bound up front (a taken port is an OSError);
    `ssl_options` (uvicorn.Config's `ssl_*` arguments) serve HTTPS."""

    def __init__(self, app: Starlette, address: str, **ssl_options: Any) -> None:
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it each response waits ~40 ms for a delayed ACK (Nagle).
        self.sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((self.host, int(port)))
        except OSError as exc:
            self.sock.close()
            raise OSError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
        self.sock.listen(2048)
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            # The lifespan runs what an app serves inside (MCP's task group).
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
            **ssl_options,
        )
        self.scheme = "https" if ssl_options else "http"
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name="http")
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise OSError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sock.close()
