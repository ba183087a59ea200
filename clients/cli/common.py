"""What every client command shares: connection options, running a call, output helpers.

Each command group takes `--address`/`--token`/`--timeout` (env `LOOMWORK_GRPC_ADDRESS`,
`LOOMWORK_TOKEN`) through `connection_callback`, and calls over TLS when `LOOMWORK_TLS_CA`
names the CA to trust (`tls_credentials`); its commands call the server with
`run_with_client`, which turns a failed call into `error: <CODE>: <details>` and its field
violations on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

import grpc
import typer
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message as ProtoMessage
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from clients.client import DEFAULT_ADDRESS, LoomworkClient
from clients.errors import error_details
from protos.loomwork.v1 import run_pb2

__all__ = [
    "ADDRESS_ENV",
    "ADDRESS_OPTION",
    "DEFAULT_TOKEN",
    "FOLLOW_TIMEOUT",
    "TIMEOUT_OPTION",
    "TOKEN_ENV",
    "TOKEN_OPTION",
    "Connection",
    "connection",
    "connection_callback",
    "iso_time",
    "json_inline",
    "keep_alive_line",
    "parse_json_object",
    "parse_statuses",
    "pending_notice",
    "print_items",
    "print_json",
    "proto_inline",
    "report_rpc_error",
    "run_with_client",
    "short_time",
    "status_markup",
    "stderr_console",
    "stdout_console",
    "tidy_numbers",
    "tls_credentials",
    "to_dict",
]

ADDRESS_ENV = "LOOMWORK_GRPC_ADDRESS"
TOKEN_ENV = "LOOMWORK_TOKEN"
# A client's TLS: the CA that signed the server's certificate, and the client's own
# certificate and key when the server requires one (mTLS). PEM file paths.
TLS_CA_ENV = "LOOMWORK_TLS_CA"
TLS_CLIENT_CERT_ENV = "LOOMWORK_TLS_CLIENT_CERT"
TLS_CLIENT_KEY_ENV = "LOOMWORK_TLS_CLIENT_KEY"
DEFAULT_TOKEN = "dev"

T = TypeVar("T")
ProtoT = TypeVar("ProtoT", bound=ProtoMessage)


# -- connection options and error handling


@dataclass
class Connection:
    """Where and as whom the commands of a group call, from the group's options."""

    address: str = DEFAULT_ADDRESS
    token: str = DEFAULT_TOKEN
    timeout: float = 10.0

    def client(self) -> LoomworkClient:
        return LoomworkClient(
            self.address, self.token or None, timeout=self.timeout, credentials=tls_credentials()
        )


def tls_credentials() -> grpc.ChannelCredentials | None:
    """TLS credentials from LOOMWORK_TLS_CA (and LOOMWORK_TLS_CLIENT_CERT/KEY for mTLS);
    None (plaintext) when LOOMWORK_TLS_CA is unset."""
    ca = os.environ.get(TLS_CA_ENV)
    if not ca:
        return None
    cert, key = os.environ.get(TLS_CLIENT_CERT_ENV), os.environ.get(TLS_CLIENT_KEY_ENV)
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if cert and key else None,
        certificate_chain=Path(cert).read_bytes() if cert and key else None,
    )


ADDRESS_OPTION = typer.Option(
    DEFAULT_ADDRESS, "--address", envvar=ADDRESS_ENV, help="gRPC address of Loomwork."
)
TOKEN_OPTION = typer.Option(
    DEFAULT_TOKEN, "--token", envvar=TOKEN_ENV, help="Bearer token (decides the tenant)."
)
TIMEOUT_OPTION = typer.Option(10.0, "--timeout", help="Deadline of each call, in seconds.")
# The deadline of a command that follows a run to its end: the run may wait days for a
# person, and Ctrl-C stops following sooner (`--timeout` is for the calls around it).
FOLLOW_TIMEOUT = 7 * 24 * 3600.0


def connection_callback(
    ctx: typer.Context,
    address: str = ADDRESS_OPTION,
    token: str = TOKEN_OPTION,
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """The callback of every command group: keeps its connection options for its commands."""
    ctx.obj = Connection(address=address, token=token, timeout=timeout)


def connection(ctx: typer.Context) -> Connection:
    """The connection options of the command's group (defaults when it has none)."""
    conn = ctx.find_object(Connection)
    return conn if conn is not None else Connection()


def stdout_console() -> Console:
    """A console on stdout."""
    # Created per call so it writes to whatever sys.stdout is now (CliRunner swaps it).
    return Console(highlight=False)


def stderr_console() -> Console:
    """A console on stderr."""
    return Console(stderr=True, highlight=False)


def report_rpc_error(err: grpc.aio.AioRpcError, address: str, out: Console) -> None:
    """Prints a failed call: its code, details, field violations and a hint where one helps."""
    code = err.code()
    details = err.details() or ""
    out.print(f"[bold red]error:[/] {code.name}: {escape(details)}", soft_wrap=True)
    for field_path, description in error_details(err):
        out.print(f"  [bold]{escape(field_path)}[/]: {escape(description)}", soft_wrap=True)
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
        out.print(
            f"[yellow]hint:[/] nothing answered at {escape(address)}. Start the stack with "
            f"`loomwork up`, or point {ADDRESS_ENV} / --address at a running server.",
            soft_wrap=True,
        )
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        out.print(f"[yellow]hint:[/] check the token ({TOKEN_ENV} / --token).")


def run_with_client(
    conn: Connection, work: Callable[[LoomworkClient], Coroutine[Any, Any, T]]
) -> T:
    """Runs `work` with a client of `conn`; an RPC error exits 1 with a readable message."""

    async def main() -> T:
        async with conn.client() as client:
            return await work(client)

    try:
        return asyncio.run(main())
    except grpc.aio.AioRpcError as err:
        report_rpc_error(err, conn.address, stderr_console())
        raise typer.Exit(1) from None


# -- rendering


def tidy_numbers(value: Any) -> Any:
    """JSON data with whole floats as ints (a Struct holds every number as a double: 18, not
    18.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: tidy_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [tidy_numbers(v) for v in value]
    return value


def to_dict(message: ProtoMessage) -> dict[str, Any]:
    """A proto message as JSON-ready data (proto field names, every field, int64 as int)."""
    data = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    return dict(tidy_numbers(data))


def print_json(data: Any) -> None:
    """Prints data as indented JSON on stdout (the `--json` output)."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def iso_time(ts: timestamp_pb2.Timestamp) -> str:
    """A timestamp in ISO 8601 to the second, UTC ("" when unset)."""
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")


def short_time(ts: timestamp_pb2.Timestamp) -> str:
    """A timestamp as `YYYY-MM-DD HH:MM:SS`, UTC, for tables ("" when unset)."""
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


_STATUS_COLORS = {"SUCCEEDED": "green", "FAILED": "red", "CANCELED": "yellow", "BLOCKED": "red"}


def pending_notice(task_queue: str, waited: duration_pb2.Duration) -> str:
    """The line for a run_pending event (agent and workflow runs alike)."""
    return (
        f"[yellow]waiting for a worker[/]: none has taken the run in "
        f"{waited.ToTimedelta().total_seconds():.0f} s (task queue "
        f"{escape(task_queue)}; start one with `loomwork worker`)"
    )


def keep_alive_line(keep_alive: run_pb2.StreamKeepAlive) -> str:
    """The dim line for a quiet stream's keep-alive (agent and workflow runs alike)."""
    if keep_alive.liveness == run_pb2.RUN_LIVENESS_OPEN:
        return "[dim]… still running[/]"
    if keep_alive.liveness == run_pb2.RUN_LIVENESS_CLOSED:
        return "[dim]… the run has ended; its last event follows[/]"
    return "[dim]… stream alive; Temporal cannot say whether the run is running[/]"


def status_markup(enum: Any, value: int, prefix: str, **colors: str) -> str:
    """A status enum value as colored markup, its name without `prefix`: the ended statuses
    in their usual colors, others cyan unless `colors` names them."""
    name = enum.Name(value).removeprefix(prefix)
    return f"[{colors.get(name) or _STATUS_COLORS.get(name, 'cyan')}]{name}[/]"


def print_items(
    items: Iterable[ProtoT], as_json: bool, table: Table, row: Callable[[ProtoT], Sequence[str]]
) -> None:
    """A list command's output: the items as a JSON list (`--json`), or `table` with one `row`
    per item."""
    if as_json:
        print_json([to_dict(item) for item in items])
        return
    for item in items:
        table.add_row(*row(item))
    stdout_console().print(table)


def json_inline(data: Any) -> str:
    """JSON data, compact on one line."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def proto_inline(message: Any) -> str:
    """A proto message (a Struct, say) as compact JSON on one line."""
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))


# -- argument parsing


def parse_json_object(value: str | None, option: str) -> dict[str, Any] | None:
    """An option's JSON object (None when the option is not given); else a bad parameter."""
    if value is None:
        return None
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint=option) from None
    if not isinstance(data, dict):
        raise typer.BadParameter("must be a JSON object", param_hint=option)
    return data


def parse_statuses(enum: Any, prefix: str, names: list[str]) -> list[Any]:
    """`--status` names (any case) as the enum's values; an unknown one is a bad parameter."""
    values = []
    for name in names:
        key = f"{prefix}{name.upper()}"
        if key not in enum.keys():  # noqa: SIM118 - an enum wrapper
            raise typer.BadParameter(f"unknown status {name!r}", param_hint="--status")
        values.append(enum.Value(key))
    return values
