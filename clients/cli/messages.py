"""`loomwork messages …`: messages of a thread (MemoryService), and how they print."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from google.protobuf import json_format
from rich import box
from rich.markup import escape
from rich.table import Table

from clients.cli.common import (
    connection,
    connection_callback,
    json_inline,
    parse_json_object,
    print_json,
    run_with_client,
    short_time,
    stdout_console,
    tidy_numbers,
    to_dict,
)
from clients.client import LoomworkClient
from clients.messages import parse_role, role_name, text_message
from protos.loomwork.v1 import message_pb2

__all__ = ["message_from_json", "message_table", "messages_app", "register", "render_parts"]


def render_parts(message: message_pb2.Message) -> str:
    """A message's parts as one line each: text, `→ tool(args)` calls, `← tool: result`."""
    lines = []
    for part in message.parts:
        kind = part.WhichOneof("kind")
        if kind == "text":
            lines.append(part.text.text)
        elif kind == "tool_call":
            args = json_inline(to_dict(part.tool_call.arguments))
            lines.append(f"→ {part.tool_call.tool_name}({args}) [{part.tool_call.tool_call_id}]")
        elif kind == "tool_result":
            result = part.tool_result
            value = (
                tidy_numbers(json_format.MessageToDict(result.result))
                if result.HasField("result")
                else None
            )
            marker = "✗" if result.is_error else "←"
            name = result.tool_name or result.tool_call_id
            lines.append(f"{marker} {name}: {json_inline(value)} [{result.tool_call_id}]")
    return "\n".join(lines)


def message_table(messages: list[message_pb2.Message], title: str | None = None) -> Table:
    """Messages as a table: id, role, content (`render_parts`), creation time."""
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
            short_time(message.create_time),
        )
    return table


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


messages_app = typer.Typer(
    name="messages",
    help="Messages of a thread (MemoryService).",
    no_args_is_help=True,
    callback=connection_callback,
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
                role, text, id=message_id, metadata=parse_json_object(metadata, "--metadata")
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--role") from None
        messages = [message]
    stored = run_with_client(
        connection(ctx), lambda c: c.memory.append_messages(thread_id, messages)
    )
    if as_json:
        print_json({"messages": [to_dict(m) for m in stored]})
        return
    stdout_console().print(message_table(stored, title=f"appended to {escape(thread_id)}"))


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
            page = await client.memory.list_messages(
                thread_id, last_n=last, page_size=limit, page_token=page_token
            )
            return list(page.messages), page.next_page_token
        return [m async for m in client.memory.iter_messages(thread_id)], ""

    messages, next_token = run_with_client(connection(ctx), work)
    if as_json:
        print_json({"messages": [to_dict(m) for m in messages], "next_page_token": next_token})
        return
    out = stdout_console()
    out.print(message_table(messages))
    if next_token:
        out.print(f"more: --page-token {escape(next_token)}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Adds `loomwork messages …` to the app."""
    app.add_typer(messages_app, name="messages")
