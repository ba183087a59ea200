"""Client commands of the `loomwork` CLI (threads, messages, demo), on the typed client.

`server/cli.py` mounts them with `register(app)`. Each command group takes `--address`/`--token`
(env `LOOMWORK_GRPC_ADDRESS`, `LOOMWORK_TOKEN`); get/list commands take `--json` for
machine-readable output. A failed call prints `error: <CODE>: <details>` and its field violations
and exits 1, never with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TypeVar

import grpc
import typer
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message as ProtoMessage
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from clients.client import (
    DEFAULT_ADDRESS,
    LoomworkClient,
    StreamedText,
    error_details,
    parse_role,
    role_name,
    text_message,
    tool_call_message,
    tool_result_message,
)
from protos.loomwork.v1 import memory_pb2, message_pb2, run_pb2

__all__ = [
    "DEMO_SECTIONS",
    "DemoContext",
    "DemoSection",
    "demo",
    "messages_app",
    "register",
    "run_demo",
    "threads_app",
]

ADDRESS_ENV = "LOOMWORK_GRPC_ADDRESS"
TOKEN_ENV = "LOOMWORK_TOKEN"
DEFAULT_TOKEN = "dev"

T = TypeVar("T")


# -- connection options and error handling


@dataclass
class Connection:
    """Where and as whom the commands of a group call, from the group's options."""

    address: str = DEFAULT_ADDRESS
    token: str = DEFAULT_TOKEN
    timeout: float = 10.0

    def client(self) -> LoomworkClient:
        return LoomworkClient(self.address, self.token or None, timeout=self.timeout)


_ADDRESS_OPTION = typer.Option(
    DEFAULT_ADDRESS, "--address", envvar=ADDRESS_ENV, help="gRPC address of Loomwork."
)
_TOKEN_OPTION = typer.Option(
    DEFAULT_TOKEN, "--token", envvar=TOKEN_ENV, help="Bearer token (decides the tenant)."
)
_TIMEOUT_OPTION = typer.Option(10.0, "--timeout", help="Deadline of each call, in seconds.")


def _connection_callback(
    ctx: typer.Context,
    address: str = _ADDRESS_OPTION,
    token: str = _TOKEN_OPTION,
    timeout: float = _TIMEOUT_OPTION,
) -> None:
    ctx.obj = Connection(address=address, token=token, timeout=timeout)


def _connection(ctx: typer.Context) -> Connection:
    conn = ctx.find_object(Connection)
    return conn if conn is not None else Connection()


def _out() -> Console:
    # Created per call so it writes to whatever sys.stdout is now (CliRunner swaps it).
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _report_rpc_error(err: grpc.aio.AioRpcError, address: str, console: Console) -> None:
    code = err.code()
    details = err.details() or ""
    console.print(f"[bold red]error:[/] {code.name}: {escape(details)}", soft_wrap=True)
    for field_path, description in error_details(err):
        console.print(f"  [bold]{escape(field_path)}[/]: {escape(description)}", soft_wrap=True)
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
        console.print(
            f"[yellow]hint:[/] nothing answered at {escape(address)}. Start the stack with "
            f"`loomwork up`, or point {ADDRESS_ENV} / --address at a running server.",
            soft_wrap=True,
        )
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        console.print(f"[yellow]hint:[/] check the token ({TOKEN_ENV} / --token).")


def _run(conn: Connection, work: Callable[[LoomworkClient], Coroutine[Any, Any, T]]) -> T:
    """Runs `work` with a client of `conn`; an RPC error exits 1 with a readable message."""

    async def main() -> T:
        async with conn.client() as client:
            return await work(client)

    try:
        return asyncio.run(main())
    except grpc.aio.AioRpcError as err:
        _report_rpc_error(err, conn.address, _err())
        raise typer.Exit(1) from None


# -- rendering


def _tidy(value: Any) -> Any:
    # google.protobuf.Struct holds every number as a double: show 18, not 18.0.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


def to_dict(message: ProtoMessage) -> dict[str, Any]:
    """A proto message as JSON-ready data (proto field names, every field, int64 as int)."""
    data = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    return dict(_tidy(data))


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _time(ts: timestamp_pb2.Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")


def _short_time(ts: timestamp_pb2.Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


_STATUS_COLORS = {"SUCCEEDED": "green", "FAILED": "red", "CANCELED": "yellow"}


def _pending_notice(task_queue: str, waited: duration_pb2.Duration) -> str:
    """The line for a run_pending event (agent and workflow runs alike)."""
    return (
        f"[yellow]waiting for a worker[/]: none has taken the run in "
        f"{waited.ToTimedelta().total_seconds():.0f} s (task queue "
        f"{escape(task_queue)}; start one with `loomwork worker`)"
    )


def _status_markup(enum: Any, value: int, prefix: str, **colors: str) -> str:
    """A status enum value as colored markup, its name without `prefix`: the ended statuses
    in their usual colors, others cyan unless `colors` names them."""
    name = enum.Name(value).removeprefix(prefix)
    return f"[{colors.get(name) or _STATUS_COLORS.get(name, 'cyan')}]{name}[/]"


def _statuses(enum: Any, prefix: str, names: list[str]) -> list[Any]:
    """`--status` names (any case) as the enum's values; an unknown one is a bad parameter."""
    values = []
    for name in names:
        key = f"{prefix}{name.upper()}"
        if key not in enum.keys():  # noqa: SIM118 - an enum wrapper
            raise typer.BadParameter(f"unknown status {name!r}", param_hint="--status")
        values.append(enum.Value(key))
    return values


def _json_inline(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _proto_inline(message: Any) -> str:
    """A proto message (a Struct, say) as compact JSON on one line."""
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))


def _thread_table(threads: list[memory_pb2.Thread], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True, style="cyan")
    table.add_column("resource", overflow="fold", min_width=8)
    table.add_column("title", overflow="fold", min_width=8)
    table.add_column("msgs", justify="right")
    table.add_column("created (UTC)", no_wrap=True)
    for thread in threads:
        table.add_row(
            escape(thread.id),
            escape(thread.resource_id),
            escape(thread.title),
            str(thread.message_count),
            _short_time(thread.create_time),
        )
    return table


def _thread_details(thread: memory_pb2.Thread) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column()
    metadata = to_dict(thread.metadata) if thread.metadata.fields else {}
    for key, value in (
        ("id", thread.id),
        ("resource", thread.resource_id),
        ("title", thread.title),
        ("messages", str(thread.message_count)),
        ("created", _time(thread.create_time)),
        ("updated", _time(thread.update_time)),
        ("metadata", _json_inline(metadata) if metadata else ""),
    ):
        table.add_row(key, escape(value))
    return table


def render_parts(message: message_pb2.Message) -> str:
    """A message's parts as one line each: text, `→ tool(args)` calls, `← tool: result`."""
    lines = []
    for part in message.parts:
        kind = part.WhichOneof("kind")
        if kind == "text":
            lines.append(part.text.text)
        elif kind == "tool_call":
            args = _json_inline(to_dict(part.tool_call.arguments))
            lines.append(f"→ {part.tool_call.tool_name}({args}) [{part.tool_call.tool_call_id}]")
        elif kind == "tool_result":
            result = part.tool_result
            value = (
                _tidy(json_format.MessageToDict(result.result))
                if result.HasField("result")
                else None
            )
            marker = "✗" if result.is_error else "←"
            name = result.tool_name or result.tool_call_id
            lines.append(f"{marker} {name}: {_json_inline(value)} [{result.tool_call_id}]")
    return "\n".join(lines)


def _message_table(messages: list[message_pb2.Message], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("id", style="cyan", overflow="fold")
    table.add_column("role", no_wrap=True)
    table.add_column("content", overflow="fold", ratio=1)
    table.add_column("created (UTC)", no_wrap=True)
    for message in messages:
        table.add_row(
            escape(message.id),
            role_name(message.role),
            escape(render_parts(message)),
            _short_time(message.create_time),
        )
    return table


# -- argument parsing


def _json_object(value: str | None, option: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint=option) from None
    if not isinstance(data, dict):
        raise typer.BadParameter("must be a JSON object", param_hint=option)
    return data


def message_from_json(data: Any, index: int = 0) -> message_pb2.Message:
    """One message from JSON: the proto JSON form, with two shortcuts.

    `{"role": "user", "text": "hi"}` is a text message (roles may be lower-case names), and
    `{"role": "ROLE_USER", "parts": [{"text": {"text": "hi"}}]}` is the proto JSON form.
    """
    where = f"message {index}"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: must be a JSON object")
    data = dict(data)
    role = data.get("role")
    if isinstance(role, str) and role and not role.upper().startswith("ROLE_"):
        data["role"] = message_pb2.Role.Name(parse_role(role))
    if "text" in data:
        text = data.pop("text")
        if not isinstance(text, str):
            raise ValueError(f"{where}: `text` must be a string")
        data["parts"] = [{"text": {"text": text}}, *data.get("parts", [])]
    message = message_pb2.Message()
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return message


def _messages_from_file(path: str) -> list[message_pb2.Message]:
    try:
        raw = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
    except OSError as exc:
        raise typer.BadParameter(str(exc), param_hint="--file") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="--file") from None
    items = data if isinstance(data, list) else [data]
    try:
        return [message_from_json(item, i) for i, item in enumerate(items)]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--file") from None


# -- threads

threads_app = typer.Typer(
    name="threads",
    help="Conversation threads (MemoryService).",
    no_args_is_help=True,
    callback=_connection_callback,
)


@threads_app.command("create")
def threads_create(
    ctx: typer.Context,
    resource: str = typer.Option("", "--resource", "-r", help="Resource id the thread belongs to."),
    title: str = typer.Option("", "--title", "-t"),
    metadata: str | None = typer.Option(None, "--metadata", help="A JSON object."),
    thread_id: str = typer.Option("", "--id", help="Client-chosen thread id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create a thread."""
    meta = _json_object(metadata, "--metadata")
    thread = _run(
        _connection(ctx),
        lambda c: c.create_thread(
            resource_id=resource, title=title, metadata=meta, thread_id=thread_id
        ),
    )
    if as_json:
        _print_json(to_dict(thread))
        return
    out = _out()
    out.print(f"[green]created thread[/] [cyan]{escape(thread.id)}[/]")
    out.print(_thread_details(thread))


@threads_app.command("get")
def threads_get(
    ctx: typer.Context,
    thread_id: str = typer.Argument(..., help="Thread id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one thread."""
    thread = _run(_connection(ctx), lambda c: c.get_thread(thread_id))
    if as_json:
        _print_json(to_dict(thread))
    else:
        _out().print(_thread_details(thread))


@threads_app.command("list")
def threads_list(
    ctx: typer.Context,
    resource: str = typer.Option("", "--resource", "-r", help="Only threads of this resource."),
    limit: int = typer.Option(0, "--limit", "-n", min=0, help="Page size (0: server default)."),
    page_token: str = typer.Option("", "--page-token", help="Continue from a previous page."),
    all_pages: bool = typer.Option(False, "--all", help="Fetch every page."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List threads, most recently created first."""

    async def work(client: LoomworkClient) -> tuple[list[memory_pb2.Thread], str]:
        if all_pages:
            threads = [t async for t in client.iter_threads(resource_id=resource, page_size=limit)]
            return threads, ""
        page = await client.list_threads(
            resource_id=resource, page_size=limit, page_token=page_token
        )
        return list(page.threads), page.next_page_token

    threads, next_token = _run(_connection(ctx), work)
    if as_json:
        _print_json({"threads": [to_dict(t) for t in threads], "next_page_token": next_token})
        return
    out = _out()
    out.print(_thread_table(threads))
    if next_token:
        out.print(f"more: --page-token {escape(next_token)}  (or --all)", soft_wrap=True)


@threads_app.command("update")
def threads_update(
    ctx: typer.Context,
    thread_id: str = typer.Argument(..., help="Thread id."),
    title: str | None = typer.Option(None, "--title", "-t", help="New title."),
    metadata: str | None = typer.Option(None, "--metadata", help="New metadata (JSON object)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Change a thread's title and/or metadata."""
    meta = _json_object(metadata, "--metadata")
    if title is None and meta is None:
        raise typer.BadParameter("give --title and/or --metadata")
    thread = _run(
        _connection(ctx), lambda c: c.update_thread(thread_id, title=title, metadata=meta)
    )
    if as_json:
        _print_json(to_dict(thread))
        return
    out = _out()
    out.print(f"[green]updated thread[/] [cyan]{escape(thread.id)}[/]")
    out.print(_thread_details(thread))


@threads_app.command("delete")
def threads_delete(
    ctx: typer.Context,
    thread_id: str = typer.Argument(..., help="Thread id."),
) -> None:
    """Delete a thread and all its messages."""
    _run(_connection(ctx), lambda c: c.delete_thread(thread_id))
    _out().print(f"[green]deleted thread[/] [cyan]{escape(thread_id)}[/]")


# -- messages

messages_app = typer.Typer(
    name="messages",
    help="Messages of a thread (MemoryService).",
    no_args_is_help=True,
    callback=_connection_callback,
)


@messages_app.command("append")
def messages_append(
    ctx: typer.Context,
    thread_id: str = typer.Argument(..., help="Thread id."),
    role: str = typer.Option("user", "--role", help="system, user, assistant or tool."),
    text: str | None = typer.Option(None, "--text", help="The message text."),
    message_id: str = typer.Option("", "--id", help="Message id (appending it again is a no-op)."),
    metadata: str | None = typer.Option(None, "--metadata", help="A JSON object."),
    file: str | None = typer.Option(
        None,
        "--file",
        "-f",
        help='JSON file ("-" for stdin): a message or a list, e.g. [{"role":"user","text":"hi"}].',
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Append a text message (or the messages of a JSON file) to a thread."""
    if file is not None:
        if text is not None:
            raise typer.BadParameter("give either --text or --file, not both")
        messages = _messages_from_file(file)
    else:
        if text is None:
            raise typer.BadParameter("give --text (or --file)")
        try:
            message = text_message(
                role, text, id=message_id, metadata=_json_object(metadata, "--metadata")
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--role") from None
        messages = [message]
    stored = _run(_connection(ctx), lambda c: c.append_messages(thread_id, messages))
    if as_json:
        _print_json({"messages": [to_dict(m) for m in stored]})
        return
    _out().print(_message_table(stored, title=f"appended to {escape(thread_id)}"))


@messages_app.command("list")
def messages_list(
    ctx: typer.Context,
    thread_id: str = typer.Argument(..., help="Thread id."),
    last: int = typer.Option(0, "--last", min=0, help="Only the newest N messages."),
    limit: int = typer.Option(0, "--limit", "-n", min=0, help="One page of N, oldest first."),
    page_token: str = typer.Option("", "--page-token", help="Continue from a previous page."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List a thread's messages: all oldest first, one page (--limit), or the newest (--last)."""
    if last and (limit or page_token):
        raise typer.BadParameter("--last cannot be combined with --limit/--page-token")

    async def work(client: LoomworkClient) -> tuple[list[message_pb2.Message], str]:
        if last or limit or page_token:
            page = await client.list_messages(
                thread_id, last_n=last, page_size=limit, page_token=page_token
            )
            return list(page.messages), page.next_page_token
        return [m async for m in client.iter_messages(thread_id)], ""

    messages, next_token = _run(_connection(ctx), work)
    if as_json:
        _print_json({"messages": [to_dict(m) for m in messages], "next_page_token": next_token})
        return
    out = _out()
    out.print(_message_table(messages))
    if next_token:
        out.print(f"more: --page-token {escape(next_token)}", soft_wrap=True)


# -- demo


@dataclass
class DemoContext:
    """What the demo's sections share: the client, the console and what earlier sections made."""

    client: LoomworkClient
    console: Console
    address: str
    token: str
    other_token: str | None = None
    thread_id: str = ""
    state: dict[str, Any] = field(default_factory=dict)

    def ok(self, text: str) -> None:
        self.console.print(f"  [green]✓[/] {text}")

    def note(self, text: str) -> None:
        self.console.print(f"  [dim]{text}[/]")

    async def expect_error(
        self, call: Awaitable[Any], code: grpc.StatusCode
    ) -> grpc.aio.AioRpcError | None:
        """Awaits a call that should fail with `code`; prints what came back either way."""
        try:
            await call
        except grpc.aio.AioRpcError as err:
            mark = "[green]✓[/]" if err.code() == code else "[red]✗[/]"
            self.console.print(f"  {mark} {err.code().name}: {escape(err.details() or '')}")
            for field_path, description in error_details(err):
                self.console.print(
                    f"      field [bold]{escape(field_path)}[/]: {escape(description)}"
                )
            return err
        self.console.print(f"  [red]✗ expected {code.name}, but the call succeeded[/]")
        return None


@dataclass(frozen=True)
class DemoSection:
    title: str
    run: Callable[[DemoContext], Awaitable[None]]


def _mid(ctx: DemoContext, name: str) -> str:
    # Message ids are unique per tenant: a random prefix per run keeps reruns from colliding.
    prefix = ctx.state.setdefault("message_id_prefix", f"demo-{secrets.token_hex(3)}")
    return f"{prefix}.{name}"


async def _demo_threads_and_messages(ctx: DemoContext) -> None:
    thread = await ctx.client.create_thread(
        resource_id="demo-user", title="Weather chat", metadata={"source": "loomwork demo"}
    )
    ctx.thread_id = thread.id
    ctx.ok(f"created thread [cyan]{escape(thread.id)}[/] for resource demo-user")
    messages = [
        text_message("system", "You are a helpful weather assistant.", id=_mid(ctx, "system")),
        text_message("user", "What's the weather in Paris?", id=_mid(ctx, "user-1")),
        tool_call_message(
            "call_1",
            "get_weather",
            {"city": "Paris"},
            text="Let me check.",
            id=_mid(ctx, "assistant-1"),
        ),
        tool_result_message(
            "call_1",
            {"temperature_c": 18, "sky": "clear"},
            tool_name="get_weather",
            id=_mid(ctx, "tool-1"),
        ),
        text_message("assistant", "It is 18 °C and clear in Paris.", id=_mid(ctx, "assistant-2")),
    ]
    stored = await ctx.client.append_messages(thread.id, messages)
    ctx.ok(f"appended {len(stored)} messages (system, user, assistant tool call, tool, assistant)")
    ctx.console.print(_message_table(stored))


async def _demo_idempotency(ctx: DemoContext) -> None:
    before = (await ctx.client.get_thread(ctx.thread_id)).message_count
    again = text_message("user", "What's the weather in Paris?", id=_mid(ctx, "user-1"))
    stored = await ctx.client.append_messages(ctx.thread_id, [again])
    after = (await ctx.client.get_thread(ctx.thread_id)).message_count
    if after == before:
        ctx.ok(
            f"appended message {escape(again.id)} again: the thread still has {after} messages "
            "— appends are idempotent by message id"
        )
    else:
        ctx.console.print(
            f"  [red]✗ message count went from {before} to {after}: not idempotent[/]"
        )
    ctx.note(f"the call returned the message as first stored, at {_time(stored[0].create_time)}")


async def _demo_reading(ctx: DemoContext) -> None:
    newest = await ctx.client.list_messages(ctx.thread_id, last_n=3)
    ctx.console.print(_message_table(list(newest.messages), title="newest 3 (last_n=3)"))
    page_token = ""
    page_number = 0
    while True:
        page = await ctx.client.list_messages(ctx.thread_id, page_size=2, page_token=page_token)
        page_number += 1
        ids = ", ".join(m.id.rsplit(".", 1)[-1] for m in page.messages)
        ctx.ok(f"page {page_number} (page_size=2, oldest first): {escape(ids)}")
        if not page.next_page_token:
            break
        page_token = page.next_page_token


async def _demo_recall(ctx: DemoContext) -> None:
    query = "is it sunny in the French capital?"
    ctx.note(f"searching the thread by meaning: {query!r}")
    for _ in range(100):  # indexing runs on the worker a moment after the append
        found = await ctx.client.search_messages(
            query, thread_id=ctx.thread_id, top_k=2, message_range=1
        )
        if len(found.hits) >= 2:
            break
        await asyncio.sleep(0.1)
    if not found.hits:
        ctx.console.print("  [red]✗ nothing found: is the worker running?[/]")
        return
    for hit in found.hits:
        text = " ".join(p.text.text for p in hit.message.parts if p.HasField("text"))
        ctx.ok(f"{hit.score:.2f}  {escape(text or hit.message.id)}")
    ctx.note(f"the best hit came with {len(found.hits[0].context)} neighbouring message(s)")


async def _demo_agent(ctx: DemoContext) -> None:
    prompt = "What is 17 + 25?"
    ctx.note(f"streaming agent 'assistant' on {prompt!r} (a durable Temporal run):")
    text = StreamedText()
    run_id, last_event = "", 0
    async for event in ctx.client.stream("assistant", prompt):
        run_id, last_event = event.run_id, event.event_id
        text.add(event)
        kind = event.WhichOneof("event")
        if kind == "tool_call":
            args = json.dumps(json_format.MessageToDict(event.tool_call.arguments))
            ctx.ok(f"#{event.event_id} model calls tool {event.tool_call.tool_name}({args})")
        elif kind == "tool_result":
            result = json.dumps(json_format.MessageToDict(event.tool_result.result))
            ctx.ok(f"#{event.event_id} tool result: {escape(result)}")
        elif kind == "run_finished":
            ctx.ok(f"#{event.event_id} answer streamed: {escape(str(text))}")
        elif kind == "run_failed":
            ctx.console.print(f"  [red]✗ run failed: {escape(event.run_failed.message)}[/]")
    replay = [e.event_id async for e in ctx.client.watch_run(run_id, after_event_id=2)]
    ctx.ok(
        f"run {escape(run_id)}: {last_event} numbered events; WatchRun after #2 replays "
        f"{len(replay)} (#{replay[0]}..#{replay[-1]})"
        if replay
        else f"run {run_id}"
    )
    ctx.note(f"find it in the Temporal UI as workflow agent/assistant/<tenant>/{run_id}")


async def _demo_approval(ctx: DemoContext) -> None:
    prompt = "Please email ada@example.com: the report is ready"
    ctx.note(f"send_email needs a person's approval; streaming {prompt!r}:")
    text = StreamedText()
    async for event in ctx.client.stream("assistant", prompt):
        text.add(event)
        kind = event.WhichOneof("event")
        if kind == "approval_requested":
            pending = event.approval_requested
            to = pending.arguments["to"] if "to" in pending.arguments else "?"  # noqa: SIM401
            ctx.ok(f"#{event.event_id} run is WAITING: {pending.tool_name} to {escape(str(to))}")
            run = await ctx.client.get_run(event.run_id)
            ctx.ok(
                f"GetRun: status {run_pb2.RunStatus.Name(run.status)}, "
                f"{len(run.pending_approvals)} pending approval"
            )
            await ctx.client.approve(event.run_id, pending.tool_call_id)
            ctx.ok("approved by ResumeRun (a Temporal Update; a `resume` signal works too)")
        elif kind == "approval_resolved":
            ctx.ok(
                f"#{event.event_id} approval resolved: approved={event.approval_resolved.approved}"
            )
        elif kind == "tool_result":
            result = json.dumps(json_format.MessageToDict(event.tool_result.result))
            ctx.ok(f"#{event.event_id} tool result: {escape(result)}")
        elif kind == "run_finished":
            ctx.ok(f"#{event.event_id} answer: {escape(str(text))}")
        elif kind == "run_failed":
            ctx.console.print(f"  [red]✗ run failed: {escape(event.run_failed.message)}[/]")


async def _demo_workflows(ctx: DemoContext) -> None:
    from clients.workflow_cli import demo_workflows  # it builds on this module

    await demo_workflows(ctx)


async def _demo_rag(ctx: DemoContext) -> None:
    from clients.rag_cli import demo_rag  # it builds on this module

    await demo_rag(ctx)


async def _demo_update(ctx: DemoContext) -> None:
    thread = await ctx.client.update_thread(
        ctx.thread_id,
        title="Weather in Paris",
        metadata={"source": "loomwork demo", "city": "Paris"},
    )
    ctx.ok(f"title is now {escape(repr(thread.title))}")
    ctx.console.print(_thread_details(thread))


async def _demo_bad_input(ctx: DemoContext) -> None:
    no_role = message_pb2.Message(
        parts=[message_pb2.Part(text=message_pb2.TextPart(text="who am I?"))]
    )
    ctx.note("appending a message whose role is unspecified:")
    await ctx.expect_error(
        ctx.client.append_messages(ctx.thread_id, [no_role]), grpc.StatusCode.INVALID_ARGUMENT
    )
    ctx.note("reading a thread that does not exist:")
    await ctx.expect_error(ctx.client.get_thread("thr_does_not_exist"), grpc.StatusCode.NOT_FOUND)


async def _demo_tenants(ctx: DemoContext) -> None:
    if not ctx.other_token:
        ctx.note("skipped: pass --other-token <a token of another tenant> to see isolation")
        return
    async with LoomworkClient(ctx.address, ctx.other_token, timeout=ctx.client.timeout) as other:
        ctx.note("another tenant reads the thread:")
        await ctx.expect_error(other.get_thread(ctx.thread_id), grpc.StatusCode.NOT_FOUND)
        page = await other.list_threads(resource_id="demo-user")
        visible = [t.id for t in page.threads]
        if ctx.thread_id in visible:
            ctx.console.print("  [red]✗ the other tenant lists the thread[/]")
        else:
            ctx.ok("the other tenant's list of demo-user threads does not include it")


async def _demo_delete(ctx: DemoContext) -> None:
    await ctx.client.delete_thread(ctx.thread_id)
    ctx.ok(f"deleted thread [cyan]{escape(ctx.thread_id)}[/] and its messages")
    await ctx.expect_error(ctx.client.get_thread(ctx.thread_id), grpc.StatusCode.NOT_FOUND)
    ctx.thread_id = ""


# Later flows (agents, workflows, RAG) append their sections here.
DEMO_SECTIONS: list[DemoSection] = [
    DemoSection("Memory: a thread and its messages", _demo_threads_and_messages),
    DemoSection("Memory: idempotent appends", _demo_idempotency),
    DemoSection("Memory: reading messages back", _demo_reading),
    DemoSection("Memory: semantic recall", _demo_recall),
    DemoSection("Memory: updating a thread", _demo_update),
    DemoSection("Agents: a durable run with a tool, streamed", _demo_agent),
    DemoSection("Agents: a tool call waits for approval", _demo_approval),
    DemoSection("Workflows: linear, branching, suspend/resume", _demo_workflows),
    DemoSection("RAG: ingest, search, a cited answer", _demo_rag),
    DemoSection("Errors: bad input names the field", _demo_bad_input),
    DemoSection("Tenants: isolation", _demo_tenants),
    DemoSection("Memory: deleting the thread", _demo_delete),
]


async def run_demo(
    address: str,
    token: str,
    *,
    other_token: str | None = None,
    console: Console | None = None,
    sections: list[DemoSection] | None = None,
) -> None:
    """Walks the main flows against a running stack, printing what happens.

    gRPC errors propagate (the `demo` command reports them); the demo thread is deleted
    even when a section fails.
    """
    console = console or Console(highlight=False)
    console.print(f"[bold]Loomwork demo[/] against {escape(address)}")
    async with LoomworkClient(address, token or None) as client:
        ctx = DemoContext(client, console, address, token, other_token=other_token or None)
        try:
            for section in DEMO_SECTIONS if sections is None else sections:
                console.print(Rule(f"[bold]{escape(section.title)}[/]", align="left"))
                await section.run(ctx)
        finally:
            if ctx.thread_id:  # a section failed before the delete section: clean up
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await client.delete_thread(ctx.thread_id, timeout=5)
    console.print(Rule())
    console.print("[bold green]demo finished[/]")


def demo(
    address: str = _ADDRESS_OPTION,
    token: str = _TOKEN_OPTION,
    other_token: str | None = typer.Option(
        None,
        "--other-token",
        envvar="LOOMWORK_OTHER_TOKEN",
        help="A token of another tenant, to show that it cannot see the demo's data.",
    ),
) -> None:
    """Walk the main flows against a running stack (`loomwork up`) and print what happens."""
    try:
        asyncio.run(run_demo(address, token, other_token=other_token, console=_out()))
    except grpc.aio.AioRpcError as err:
        _report_rpc_error(err, address, _err())
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Adds the client commands (threads, messages, demo) to the main `loomwork` app."""
    app.add_typer(threads_app, name="threads")
    app.add_typer(messages_app, name="messages")
    from clients.agent_cli import agents_app  # these build on this module
    from clients.workflow_cli import workflows_app

    app.add_typer(agents_app, name="agents")
    app.add_typer(workflows_app, name="workflows")
    from clients.rag_cli import rag_app

    app.add_typer(rag_app, name="rag")
    app.command("demo")(demo)
