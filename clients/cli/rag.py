"""`loomwork rag …`: indexes, ingestion with a progress bar, search and answers (RagService)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clients.cli.common import (
    connection,
    connection_callback,
    print_items,
    print_json,
    run_with_client,
    status_markup,
    stderr_console,
    stdout_console,
    to_dict,
)
from clients.client import LoomworkClient
from clients.rag_files import FileStatus, IngestProgress, IngestReport
from protos.loomwork.v1 import rag_pb2

__all__ = ["ingestion_status", "print_ingest_report", "rag_app", "register"]

rag_app = typer.Typer(
    name="rag",
    help="Vector indexes, document ingestion, search and answers (RagService).",
    no_args_is_help=True,
    callback=connection_callback,
)
# Deadline of each call that sends files (an 8 MiB batch or a long upload), at least.
SEND_TIMEOUT = 600.0
_PATHS = typer.Argument(..., help="Files and folders to ingest.")
_GLOBS = typer.Option(
    [],
    "--glob",
    help="Only files in the folders whose name or relative path matches (repeatable), "
    "e.g. --glob '*.pdf' --glob 'guide/*.md'.",
)
_REPORT_STATUSES: tuple[FileStatus, ...] = (
    "succeeded",
    "unchanged",
    "failed",
    "canceled",
    "pending",
)
_STRATEGIES = {
    "recursive": rag_pb2.CHUNKING_STRATEGY_RECURSIVE,
    "sentence": rag_pb2.CHUNKING_STRATEGY_SENTENCE,
    "token": rag_pb2.CHUNKING_STRATEGY_TOKEN,
    "markdown": rag_pb2.CHUNKING_STRATEGY_MARKDOWN,
}


def ingestion_status(value: int) -> str:
    """An ingestion's status as colored markup."""
    return status_markup(rag_pb2.IngestionStatus, value, "INGESTION_STATUS_")


@rag_app.command("create-index")
def create_index(
    ctx: typer.Context,
    name: str,
    description: str = typer.Option("", help="What the index holds."),
    model: str = typer.Option("", help="Embedding model (default: the server's)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a vector index."""
    index = run_with_client(
        connection(ctx),
        lambda c: c.rag.create_index(name, description=description, embedding_model=model),
    )
    if as_json:
        print_json(to_dict(index))
    else:
        stdout_console().print(
            f"created index [bold]{escape(index.name)}[/] ({index.embedding_model}, "
            f"{index.dimension} dimensions)"
        )


@rag_app.command("indexes")
def list_indexes(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the tenant's indexes."""
    indexes = run_with_client(connection(ctx), lambda c: c.rag.list_indexes())
    print_items(
        indexes,
        as_json,
        Table("name", "model", "dim", "documents", "chunks", title="indexes"),
        lambda i: (
            i.name,
            i.embedding_model,
            str(i.dimension),
            str(i.document_count),
            str(i.chunk_count),
        ),
    )


@rag_app.command("delete-index")
def delete_index(ctx: typer.Context, name: str) -> None:
    """Delete an index with all its documents."""
    run_with_client(connection(ctx), lambda c: c.rag.delete_index(name))
    stdout_console().print(f"deleted index {escape(name)}")


@rag_app.command("ingest")
def ingest(
    ctx: typer.Context,
    index: str,
    paths: list[Path] = _PATHS,
    recursive: bool = typer.Option(
        False, "--recursive", "-r", help="Also ingest the files in subfolders of the folders."
    ),
    globs: list[str] = _GLOBS,
    strategy: str = typer.Option("recursive", help="recursive, sentence, token or markdown."),
    chunk_size: int = typer.Option(0, help="Characters (tokens for `token`); 0: default."),
    wait: bool = typer.Option(True, help="Follow the ingestions with a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Ingest files and folders of any size (PDF, DOCX, HTML, Markdown, text) into an index.

    Large files are streamed, small ones sent in batches; one progress bar for the set, then
    a summary. A file that fails fails alone; the exit code is 1 if any failed."""
    if strategy not in _STRATEGIES:
        raise typer.BadParameter(f"one of {', '.join(_STRATEGIES)}", param_hint="--strategy")
    chunking = rag_pb2.ChunkingOptions(strategy=_STRATEGIES[strategy], chunk_size=chunk_size)
    conn = connection(ctx)

    async def work(client: LoomworkClient) -> IngestReport:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files · {task.fields[chunks]}"),
            TimeElapsedColumn(),
            console=stderr_console(),
            disable=as_json,
        ) as bar:
            task = bar.add_task("ingesting", total=None, chunks="")

            def show(p: IngestProgress) -> None:
                sent = f"sent {p.bytes_sent / 2**20:.1f}/{p.bytes_total / 2**20:.1f} MiB"
                bar.update(
                    task,
                    total=p.files_total,
                    completed=p.files_done + p.files_failed,
                    chunks=f"{sent} · chunks {p.chunks_done}/{p.chunks_total}"
                    + (f" · [red]{p.files_failed} failed[/]" if p.files_failed else ""),
                )

            return await client.rag.ingest_files(
                index,
                paths,
                recursive=recursive,
                globs=globs,
                chunking=chunking,
                wait=wait,
                on_progress=show,
                timeout=max(conn.timeout, SEND_TIMEOUT),
            )

    report = run_with_client(conn, work)
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        print_ingest_report(report)
    if not report.ok:
        raise typer.Exit(1)


def print_ingest_report(report: IngestReport) -> None:
    """The summary of an ingestion of files: counts, then each file that did not succeed."""
    out = stdout_console()
    counts = {s: len(report.with_status(s)) for s in _REPORT_STATUSES}
    out.print(
        " · ".join(f"{n} {s}" for s, n in counts.items() if n or s in ("succeeded", "failed"))
        + f" ({len(report.files)} files; ingestions: {', '.join(report.ingestion_ids) or '-'})"
    )
    for f in report.files:
        if f.status == "succeeded":
            continue
        detail = f": {f.reason} {f.message}".rstrip() if f.reason or f.message else ""
        color = {"failed": "red", "canceled": "yellow"}.get(f.status, "default")
        out.print(f"  [{color}]{f.status}[/] {escape(str(f.path))}{escape(detail)}")


@rag_app.command("documents")
def documents(
    ctx: typer.Context, index: str, as_json: bool = typer.Option(False, "--json")
) -> None:
    """List an index's documents."""
    docs = run_with_client(connection(ctx), lambda c: c.rag.list_documents(index))
    print_items(
        docs,
        as_json,
        Table("id", "title", "format", "pages", "chunks", "status", title=index),
        lambda d: (
            d.id,
            d.title,
            rag_pb2.DocumentFormat.Name(d.format).removeprefix("DOCUMENT_FORMAT_"),
            str(d.page_count),
            str(d.chunk_count),
            rag_pb2.DocumentStatus.Name(d.status).removeprefix("DOCUMENT_STATUS_"),
        ),
    )


@rag_app.command("query")
def query(
    ctx: typer.Context,
    index: str,
    text: str,
    top_k: int = typer.Option(5, "--top-k"),
    hybrid: bool = typer.Option(False, help="Fuse full-text and vector ranks."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Search an index."""
    options = rag_pb2.RetrievalOptions(
        top_k=top_k, mode=rag_pb2.SEARCH_MODE_HYBRID if hybrid else rag_pb2.SEARCH_MODE_VECTOR
    )
    results = run_with_client(connection(ctx), lambda c: c.rag.query(index, text, options))
    if as_json:
        print_json([to_dict(r) for r in results])
        return
    out = stdout_console()
    for r in results:
        where = f"p.{r.chunk.page} " if r.chunk.page else ""
        out.print(
            f"[bold][{r.citation.number}][/] {r.score:.3f} {escape(r.citation.title)} "
            f"{where}{escape(' > '.join(r.chunk.heading_path))}"
        )
        out.print(f"    {escape(r.chunk.text[:200])}")


@rag_app.command("answer")
def answer(ctx: typer.Context, index: str, question: str, top_k: int = typer.Option(5)) -> None:
    """Answer a question from an index, streamed, with citations."""

    async def work(client: LoomworkClient) -> None:
        out = stdout_console()
        citations: list[rag_pb2.Citation] = []
        async for event in client.rag.answer(
            index, question, rag_pb2.RetrievalOptions(top_k=top_k)
        ):
            if event.HasField("text_delta"):
                out.print(escape(event.text_delta.text), end="")
            elif event.HasField("citation"):
                citations.append(event.citation)
            elif event.HasField("failed"):
                out.print(f"\n[red]failed:[/] {escape(event.failed.message)}")
        out.print()
        for c in citations:
            page = f", page {c.page}" if c.page else ""
            out.print(f"[{c.number}] {escape(c.title)}{page} ({c.chunk_id})")

    run_with_client(connection(ctx), work)


def register(app: typer.Typer) -> None:
    """Adds `loomwork rag …` to the app."""
    app.add_typer(rag_app, name="rag")
