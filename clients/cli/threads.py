"""`loomwork threads …`: conversation threads (MemoryService)."""

from __future__ import annotations

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from clients.cli.common import (
    connection,
    connection_callback,
    iso_time,
    json_inline,
    parse_json_object,
    print_json,
    run_with_client,
    short_time,
    stdout_console,
    to_dict,
)
from clients.client import LoomworkClient
from protos.loomwork.v1 import memory_pb2

__all__ = ["register", "thread_details", "thread_table", "threads_app"]


def thread_table(threads: list[memory_pb2.Thread], title: str | None = None) -> Table:
    """Threads as a table: id, resource, title, message count, creation time."""
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
            short_time(thread.create_time),
        )
    return table


def thread_details(thread: memory_pb2.Thread) -> Table:
    """One thread, a field per line."""
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column()
    metadata = to_dict(thread.metadata) if thread.metadata.fields else {}
    for key, value in (
        ("id", thread.id),
        ("resource", thread.resource_id),
        ("title", thread.title),
        ("messages", str(thread.message_count)),
        ("created", iso_time(thread.create_time)),
        ("updated", iso_time(thread.update_time)),
        ("metadata", json_inline(metadata) if metadata else ""),
    ):
        table.add_row(key, escape(value))
    return table


def _show_thread(thread: memory_pb2.Thread, as_json: bool, headline: str = "") -> None:
    """A thread as JSON (`--json`), or its details under a headline such as "created thread"."""
    if as_json:
        print_json(to_dict(thread))
        return
    out = stdout_console()
    if headline:
        out.print(f"[green]{headline}[/] [cyan]{escape(thread.id)}[/]")
    out.print(thread_details(thread))


threads_app = typer.Typer(
    name="threads",
    help="Conversation threads (MemoryService).",
    no_args_is_help=True,
    callback=connection_callback,
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
    meta = parse_json_object(metadata, "--metadata")
    thread = run_with_client(
        connection(ctx),
        lambda c: c.memory.create_thread(
            resource_id=resource, title=title, metadata=meta, thread_id=thread_id
        ),
    )
    _show_thread(thread, as_json, "created thread")


@threads_app.command("get")
def threads_get(
    ctx: typer.Context,
    thread_id: str = typer.Argument(..., help="Thread id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one thread."""
    thread = run_with_client(connection(ctx), lambda c: c.memory.get_thread(thread_id))
    _show_thread(thread, as_json)


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
            threads = [
                t async for t in client.memory.iter_threads(resource_id=resource, page_size=limit)
            ]
            return threads, ""
        page = await client.memory.list_threads(
            resource_id=resource, page_size=limit, page_token=page_token
        )
        return list(page.threads), page.next_page_token

    threads, next_token = run_with_client(connection(ctx), work)
    if as_json:
        print_json({"threads": [to_dict(t) for t in threads], "next_page_token": next_token})
        return
    out = stdout_console()
    out.print(thread_table(threads))
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
    meta = parse_json_object(metadata, "--metadata")
    if title is None and meta is None:
        raise typer.BadParameter("give --title and/or --metadata")
    thread = run_with_client(
        connection(ctx), lambda c: c.memory.update_thread(thread_id, title=title, metadata=meta)
    )
    _show_thread(thread, as_json, "updated thread")


@threads_app.command("delete")
def threads_delete(
    ctx: typer.Context,
    thread_id: str = typer.Argument(..., help="Thread id."),
) -> None:
    """Delete a thread and all its messages."""
    run_with_client(connection(ctx), lambda c: c.memory.delete_thread(thread_id))
    stdout_console().print(f"[green]deleted thread[/] [cyan]{escape(thread_id)}[/]")


def register(app: typer.Typer) -> None:
    """Adds `loomwork threads …` to the app."""
    app.add_typer(threads_app, name="threads")
