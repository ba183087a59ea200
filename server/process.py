"""Running Loomwork's long-lived pieces (gRPC server, worker) until asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from loomwork.config import Settings
from server.first_step_worker import FirstStepWorker
from server.runtime import Runtime
from server.telemetry.tracing import flush_spans
from server.temporal import register_search_attributes
from server.transport.bearer import Authenticator
from server.transport.grpc_app import GrpcApp, build_grpc_app
from server.transport.health import ExtraCheck
from server.transport.http import HttpServer, build_probe_app, open_http_server
from server.worker import build_worker

log = logging.getLogger(__name__)


@dataclass
class Running:
    """What `serve` started, handed to `on_ready`."""

    runtime: Runtime
    grpc: GrpcApp | None
    grpc_address: str | None
    http_address: str | None = None
    # "https" when the HTTP endpoint serves TLS (LOOMWORK_TLS_CERT).
    http_scheme: str = "http"


async def serve(
    settings: Settings,
    *,
    grpc: bool = True,
    worker: bool = True,
    register_attributes: bool = False,
    on_ready: Callable[[Running], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
    health_checks: Sequence[ExtraCheck] = (),
) -> None:
    """Open the runtime, start the requested pieces, run until SIGINT/SIGTERM or `stop`;
    the gRPC server's health also probes `health_checks`."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    # Auth settings that are wrong fail before anything is connected.
    auth = Authenticator.from_settings(settings) if grpc else None
    runtime = await Runtime.open(settings)
    app: GrpcApp | None = None
    http: HttpServer | None = None
    worker_task: asyncio.Task[None] | None = None
    temporal_worker = None
    first_steps: FirstStepWorker | None = None
    first_steps_task: asyncio.Task[None] | None = None
    try:
        if register_attributes:
            await register_search_attributes(runtime.temporal, settings.temporal_namespace)
        if worker:
            temporal_worker = build_worker(runtime)
            worker_task = asyncio.create_task(temporal_worker.run(), name="temporal-worker")
            log.info("worker polling task queue %s", settings.task_queue)
            if settings.speculative_first_step:  # servers without a worker route to it
                first_steps = FirstStepWorker(runtime)
                first_steps_task = asyncio.create_task(first_steps.run(), name="first-steps")
                log.info("first steps routed here on task queue %s", first_steps.queue)
        address = None
        if grpc:
            app = build_grpc_app(
                runtime, settings.grpc_address, auth=auth, health_checks=health_checks
            )
            await app.start()
            host = settings.grpc_address.rsplit(":", 1)[0]
            address = f"{host}:{app.port}"
            log.info("gRPC server listening on %s", address)
            # Webhooks and OAuth callbacks: every gRPC server also serves HTTP.
            http = open_http_server(runtime, auth=auth)
            await http.start()
            log.info(
                "HTTP endpoint (webhooks, OAuth callbacks, MCP at /mcp) listening on %s",
                http.address,
            )
        elif worker:  # a worker alone still answers probes and Prometheus
            http = open_http_server(runtime, build_probe_app())
            await http.start()
            log.info("HTTP endpoint (/healthz, /metrics) listening on %s", http.address)
        # What start-up made (modules, schemas, clients: ~300k objects) lives as long as the
        # process: frozen, no full collection walks it again. Each took ~0.26 s, a pause of
        # every call in flight (bench/RESULTS.md, "Load").
        gc.collect()
        gc.freeze()
        if on_ready:
            await on_ready(
                Running(
                    runtime,
                    app,
                    address,
                    http.address if http else None,
                    http.scheme if http else "http",
                )
            )
        waiter = asyncio.create_task(stop.wait())
        watch = {waiter} | ({worker_task} if worker_task else set())
        done, _ = await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
        if worker_task in done and worker_task is not None:
            worker_task.result()  # surfaces why the worker died
        waiter.cancel()
    finally:
        log.info("shutting down: draining in-flight calls")
        if http:
            await http.stop()
        if app:
            await app.stop(grace=10.0)
        if first_steps is not None and first_steps_task is not None:
            with contextlib.suppress(Exception):
                await first_steps.shutdown()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await first_steps_task
        if temporal_worker is not None and worker_task and not worker_task.done():
            with contextlib.suppress(Exception):
                await temporal_worker.shutdown()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker_task
        await runtime.close()
        flush_spans()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
