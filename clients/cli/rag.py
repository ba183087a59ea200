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
    stdout_console,
    to_dict,
)
from clients.client import LoomworkClient
from protos.loomwork.v1 import rag_pb2

__all__ = ["ingestion_status", "rag_app", "register"]

rag_app = typer.Typer(
    name="rag",
    help="Vector indexes, document ingestion, search and answers (RagService).",
    no_args_is_help=True,
    callback=connection_callback,
)
INLINE_LIMIT = 4 * 1024 * 1024
_FILES = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="Files to ingest.")
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
    files: list[Path] = _FILES,
    strategy: str = typer.Option("recursive", help="recursive, sentence, token or markdown."),
    chunk_size: int = typer.Option(0, help="Characters (tokens for `token`); 0: default."),
    wait: bool = typer.Option(True, help="Follow the ingestion with a progress bar."),
) -> None:
    """Ingest files (PDF, HTML, Markdown, text) into an index, showing progress."""
    if strategy not in _STRATEGIES:
        raise typer.BadParameter(f"one of {', '.join(_STRATEGIES)}", param_hint="--strategy")
    chunking = rag_pb2.ChunkingOptions(strategy=_STRATEGIES[strategy], chunk_size=chunk_size)

    async def work(client: LoomworkClient) -> rag_pb2.Ingestion:
        small = [f for f in files if f.stat().st_size <= INLINE_LIMIT]
        large = [f for f in files if f.stat().st_size > INLINE_LIMIT]
        started: list[rag_pb2.Ingestion] = []
        if small:
            documents = [
                rag_pb2.DocumentInput(data=f.read_bytes(), file_name=f.name, source_uri=str(f))
                for f in small
            ]
            started.append(await client.rag.ingest_documents(index, documents, chunking=chunking))
        for f in large:
            started.append(
                await client.rag.upload_document(
                    index,
                    f.read_bytes(),
                    rag_pb2.DocumentInput(file_name=f.name, source_uri=str(f)),
                    chunking=chunking,
                    timeout=600,
                )
            )
        if not wait:
            return started[-1]
        final = started[-1]
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=stdout_console(),
        ) as progress:
            for ingestion in started:
                task = progress.add_task(f"{ingestion.id} chunks", total=None)
                async for event in client.rag.watch_ingestion(ingestion.id):
                    p = event.progress
                    progress.update(
                        task,
                        completed=p.chunks_done,
                        total=max(p.chunks_total, 1),
                        description=f"{ingestion.id} · documents {p.documents_done}"
                        f"/{p.documents_total}",
                    )
                    if event.HasField("finished"):
                        final = event.finished
        return final

    final = run_with_client(connection(ctx), work)
    out = stdout_console()
    out.print(f"ingestion {escape(final.id)}: {ingestion_status(final.status)}")
    for d in final.documents:
        state = rag_pb2.IngestionDocumentStatus.Name(d.status).removeprefix(
            "INGESTION_DOCUMENT_STATUS_"
        )
        reason = f" ({d.error.reason}: {escape(d.error.message)})" if d.error.reason else ""
        out.print(
            f"  {escape(d.document_id)} {escape(d.file_name)}: {state}, "
            f"{d.chunks_total} chunks{reason}"
        )
    if final.status == rag_pb2.INGESTION_STATUS_FAILED:
        raise typer.Exit(1)


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
