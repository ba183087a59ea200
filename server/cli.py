"""The `loomwork` command: run the stack (`up`, `server`, `worker`) and the client commands."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from loomwork.config import DEFAULT_TOKENS, Settings
from loomwork.errors import LoomworkError
from loomwork.integrations.secret_box import DEV_KEY_FILE
from server.embedded import EmbeddedError, EmbeddedStack
from server.embedded.postgres_settings import parse_settings
from server.healthcheck import check_health
from server.process import Running, serve
from server.runtime import Runtime
from server.servicers.tenancy import current_tenant
from server.telemetry.logs import configure_logging
from server.worker_process import WorkerProcess, WorkerStartFailed

app = typer.Typer(
    name="loomwork",
    help="Durable AI agents, memory, RAG and workflows over gRPC, run on Temporal.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
log = logging.getLogger("loomwork.up")


def _setup_logging(verbose: bool) -> None:
    try:
        log_format = Settings().log_format
    except ValidationError as exc:  # a bad LOOMWORK_LOG_FORMAT, say
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    configure_logging(
        verbose=verbose,
        log_format=log_format,
        console=console,
        rpc_tenant=lambda: current_tenant.get(""),
    )


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _port_free(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or "127.0.0.1", int(port)))
        except OSError:
            return False
    return True


@app.command()
def up(
    demo: bool = typer.Option(
        False,
        "--demo",
        help="Demo mode (as LOOMWORK_DEMO=true: demo tools and agent, example workflows, and "
        "the offline model when no model is configured), and run `loomwork demo` once up.",
    ),
    ui: bool = typer.Option(True, "--ui/--no-ui", help="Serve the Temporal UI."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Start everything in the foreground: embedded servers not configured externally,
    migrations, search attributes, the gRPC server and the worker (a process of its own).
    Ctrl-C stops all."""
    _setup_logging(verbose)
    settings = Settings()
    settings.demo = settings.demo or demo
    if settings.tokens is None:
        settings.tokens = DEFAULT_TOKENS
        os.environ.setdefault("LOOMWORK_TOKENS", DEFAULT_TOKENS)
    try:
        tokens = settings.token_map()
    except LoomworkError as exc:
        _fail(exc.message)
    if not _port_free(settings.grpc_address):
        _fail(
            f"{settings.grpc_address} is already in use (another `loomwork up`?). "
            "Stop it, or set LOOMWORK_GRPC_ADDRESS=127.0.0.1:<port>."
        )
    home = settings.home.resolve()
    started = time.perf_counter()
    try:
        stack = EmbeddedStack(
            home,
            postgres=not settings.database_url,
            redis=not settings.redis_url,
            temporal=not settings.temporal_address,
            temporal_ui=ui,
            postgres_settings=parse_settings(settings.postgres_settings),
        )
        endpoints = stack.start()
    except EmbeddedError as exc:
        _fail(str(exc))
    settings.database_url = settings.database_url or endpoints.database_url
    settings.redis_url = settings.redis_url or endpoints.redis_url
    settings.temporal_address = settings.temporal_address or endpoints.temporal_address

    # The worker in a process of its own: accepting calls never waits behind its model streams.
    worker = WorkerProcess(
        _worker_environment(settings, home),
        verbose=verbose,
        progress=lambda line: log.info("%s", line),
    )

    async def ready(running: Running) -> None:
        runtime = running.runtime
        await asyncio.to_thread(worker.start)
        console.print()
        console.print(f"[bold green]Loomwork is up[/] in {time.perf_counter() - started:.1f}s")
        console.print(f"  gRPC          {running.grpc_address}   (reflection + health on)")
        if running.http_address:
            http_url = f"{running.http_scheme}://{running.http_address}"
            console.print(f"  HTTP          {http_url}   (webhooks, OAuth callbacks)")
            console.print(f"  MCP           {http_url}/mcp   (bearer token)")
        if endpoints.temporal_ui_url:
            console.print(f"  Temporal UI   {endpoints.temporal_ui_url}")
        worker_http = f"   (metrics at http://{worker.http_address}/metrics)"
        console.print(
            f"  worker        process {worker.pid}, task queue {settings.task_queue}"
            f"{worker_http if worker.http_address else ''}"
        )
        console.print(
            f"  Temporal      {settings.temporal_address}  namespace {settings.temporal_namespace}"
        )
        console.print(f"  PostgreSQL    {_redact(settings.database_url or '')}")
        console.print(f"  Redis         {_redact(settings.redis_url or '')}")
        if runtime.store is not None and runtime.store.label != "postgres":
            console.print(f"  memory in     {runtime.store.label}")
        console.print(f"  home          {home}")
        console.print(f"  model         {_model_line(runtime)}")
        if not settings.secret_key:
            console.print(
                f"  secret key    development key in {home / DEV_KEY_FILE} "
                "(set LOOMWORK_SECRET_KEY in production)"
            )
        if runtime.demo is not None:
            console.print(
                "  demo mode     demo tools (send_email sends nothing), agent `assistant`, "
                "example workflows"
            )
        for token, grant in tokens.items():
            roles = f" (roles {', '.join(sorted(grant.roles))})" if grant.roles else ""
            console.print(f"  token         [bold]{token}[/] → tenant {grant.tenant}{roles}")
        if settings.jwt_enabled:
            console.print(f"  JWT           issuer {settings.jwt_issuer}")
        console.print("Press Ctrl-C to stop.\n")
        if demo and running.grpc_address:
            from clients.cli import run_demo

            token = next(iter(tokens))
            tenant = tokens[token].tenant
            other = next((t for t, grant in tokens.items() if grant.tenant != tenant), None)
            try:
                await run_demo(running.grpc_address, token, other_token=other)
            except Exception as exc:  # the demo failing must not take the stack down
                console.print(f"[bold red]demo failed:[/] {exc}")
            console.print(
                "\nThe stack keeps running. Try:\n"
                f"  LOOMWORK_GRPC_ADDRESS={running.grpc_address} loomwork threads list\n"
                f"  grpcurl -plaintext {running.grpc_address} list\n"
                "Press Ctrl-C to stop."
            )

    async def serve_while_servers_live() -> None:
        """Serve until stopped, or until an embedded server died for good."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def lost(message: str) -> None:  # from the stack's watch thread
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                loop.call_soon_threadsafe(stop.set)

        stack.on_server_lost = lost
        worker.on_lost = lost
        if stack.lost:  # lost before the loop ran
            stop.set()
        await serve(
            settings,
            worker=False,
            register_attributes=True,
            on_ready=ready,
            stop=stop,
            health_checks=[("worker", worker.health_problem)],
        )

    try:
        asyncio.run(serve_while_servers_live())
    except LoomworkError as exc:
        _fail(exc.message)
    except WorkerStartFailed as exc:
        _fail(f"{exc} (its log is above)")
    except KeyboardInterrupt:
        pass
    finally:
        # After the server drained its calls (their runs needed the worker), before the
        # servers the worker uses.
        worker.stop()
        console.print("stopping embedded servers…")
        stack.stop()
        console.print("stopped.")
    if why := worker.lost():
        _fail(f"the worker process died and could not be started again ({why}); see its log above")
    for name, why in stack.lost.items():
        _fail(
            f"{name} died and could not be started again ({why}); "
            f"see {home / 'logs' / (name + '.log')}"
        )
    _exit_stopped()


def _worker_environment(settings: Settings, home: Path) -> dict[str, str]:
    """The environment of `up`'s worker process: ours, with the servers, home and demo mode
    `up` settled on, and a free port for its /healthz and /metrics."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=settings.database_url or "",
        REDIS_URL=settings.redis_url or "",
        TEMPORAL_ADDRESS=settings.temporal_address or "",
        LOOMWORK_HOME=str(home),
        LOOMWORK_DEMO="true" if settings.demo else "false",
        LOOMWORK_HTTP_ADDRESS=f"{settings.http_address.rpartition(':')[0] or '127.0.0.1'}:0",
    )
    return env


@app.command("up-worker", hidden=True)
def up_worker(
    ready_fd: int = typer.Option(..., "--ready-fd", help="Where to say it is ready."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """`loomwork up`'s worker process (started and restarted by `up`): the worker alone, on
    the servers `up` gives it in its environment; writes its HTTP address to `--ready-fd`
    once it polls."""
    _setup_logging(verbose)
    settings = Settings()

    async def ready(running: Running) -> None:
        with os.fdopen(ready_fd, "w") as pipe:
            pipe.write(f"{running.http_address or ''}\n")

    try:
        asyncio.run(serve(settings, grpc=False, worker=True, on_ready=ready))
    except LoomworkError as exc:
        _fail(exc.message)
    _exit_stopped()


def _model_line(runtime: Runtime) -> str:
    """The banner's model line: which model agent runs use, or why they fail."""
    settings = runtime.settings
    if runtime.demo is not None and runtime.demo.offline_model is not None:
        return (
            "offline scripted model (demo mode; set OPENAI_API_KEY or OPENAI_BASE_URL for a "
            "real one)"
        )
    if not settings.model_configured:
        return (
            "[bold yellow]none[/]: agent runs fail until OPENAI_API_KEY or OPENAI_BASE_URL is "
            "set (or use `loomwork up --demo` for the offline demo model)"
        )
    return f"{settings.chat_model} at {settings.openai_base_url or 'OpenAI'}"


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}@{host}"
    return url


def _external_settings(role: str) -> Settings:
    settings = Settings()
    missing = [
        name
        for name, value in (
            ("DATABASE_URL", settings.database_url),
            ("REDIS_URL", settings.redis_url),
            ("TEMPORAL_ADDRESS", settings.temporal_address),
        )
        if not value
    ]
    if missing:
        _fail(
            f"`loomwork {role}` needs {', '.join(missing)} set "
            "(use `loomwork up` for the embedded stack)."
        )
    if role == "server" and not settings.tokens and not settings.jwt_enabled:
        _fail(
            "`loomwork server` needs LOOMWORK_TOKENS (token=tenant[:role] pairs, "
            "comma-separated) or JWT auth (LOOMWORK_JWT_JWKS_URL or LOOMWORK_JWT_PUBLIC_KEY)."
        )
    if not settings.secret_key:
        _fail(
            f"`loomwork {role}` needs LOOMWORK_SECRET_KEY: it encrypts webhook secrets and "
            "OAuth tokens at rest, and every server and worker must share it (a Fernet key, "
            "or a passphrase of 16+ characters). Only `loomwork up` makes a development key."
        )
    return settings


def _run_alone(role: str, verbose: bool) -> None:
    """`loomwork server` / `loomwork worker`: one process of one role, external services."""
    _setup_logging(verbose)
    settings = _external_settings(role)
    try:
        asyncio.run(
            serve(
                settings, grpc=role == "server", worker=role == "worker", register_attributes=True
            )
        )
    except LoomworkError as exc:
        _fail(exc.message)
    _exit_stopped()


def _exit_stopped() -> NoReturn:
    """End a process that stopped cleanly without the interpreter's finalization: the
    Temporal SDK's native threads can outlive the event loop and abort a finalizing
    interpreter ("PyGILState_Release: thread state must be current", temporalio/sdk-python
    #300), turning a clean stop into SIGABRT. `serve` has closed everything and flushed
    the spans by now; the logs and the console are flushed here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@app.command()
def server(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the gRPC server alone (production: several behind a load balancer)."""
    _run_alone("server", verbose)


@app.command()
def worker(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run a Temporal worker alone (production: as many as the load needs)."""
    _run_alone("worker", verbose)


@app.command()
def health() -> None:
    """Exit 0 when this host's Loomwork process is healthy (the image's HEALTHCHECK): the gRPC
    server on LOOMWORK_GRPC_ADDRESS serving, or else a worker of this host polling the task
    queue; exit 1 saying what is not."""
    try:
        console.print(asyncio.run(check_health(Settings())))
    except LoomworkError as exc:
        _fail(exc.message)


def _register_client_commands() -> None:
    from clients.cli import register

    register(app)


def _exit_on_early_sigterm() -> None:
    """A SIGTERM before `serve` installs its handlers (still starting) exits cleanly too."""

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)


def main() -> None:
    _exit_on_early_sigterm()
    _register_client_commands()
    app()


if __name__ == "__main__":
    main()
