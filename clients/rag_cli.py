"""`loomwork rag …`: indexes, ingestion with a progress bar, search and answers (RagService)."""

from __future__ import annotations

import uuid
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clients.cli import (
    DemoContext,
    _connection,
    _connection_callback,
    _out,
    _print_json,
    _run,
    _status_markup,
    to_dict,
)
from clients.client import LoomworkClient
from protos.loomwork.v1 import rag_pb2

rag_app = typer.Typer(
    name="rag",
    help="Vector indexes, document ingestion, search and answers (RagService).",
    no_args_is_help=True,
    callback=_connection_callback,
)
INLINE_LIMIT = 4 * 1024 * 1024
_FILES = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="Files to ingest.")
_STRATEGIES = {
    "recursive": rag_pb2.CHUNKING_STRATEGY_RECURSIVE,
    "sentence": rag_pb2.CHUNKING_STRATEGY_SENTENCE,
    "token": rag_pb2.CHUNKING_STRATEGY_TOKEN,
    "markdown": rag_pb2.CHUNKING_STRATEGY_MARKDOWN,
}


def _status(value: int) -> str:
    return _status_markup(rag_pb2.IngestionStatus, value, "INGESTION_STATUS_")


@rag_app.command("create-index")
def create_index(
    ctx: typer.Context,
    name: str,
    description: str = typer.Option("", help="What the index holds."),
    model: str = typer.Option("", help="Embedding model (default: the server's)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a vector index."""
    index = _run(
        _connection(ctx),
        lambda c: c.create_index(name, description=description, embedding_model=model),
    )
    if as_json:
        _print_json(to_dict(index))
    else:
        _out().print(
            f"created index [bold]{escape(index.name)}[/] ({index.embedding_model}, "
            f"{index.dimension} dimensions)"
        )


@rag_app.command("indexes")
def list_indexes(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the tenant's indexes."""
    indexes = _run(_connection(ctx), lambda c: c.list_indexes())
    if as_json:
        _print_json([to_dict(i) for i in indexes])
        return
    table = Table("name", "model", "dim", "documents", "chunks", title="indexes")
    for i in indexes:
        table.add_row(
            i.name, i.embedding_model, str(i.dimension), str(i.document_count), str(i.chunk_count)
        )
    _out().print(table)


@rag_app.command("delete-index")
def delete_index(ctx: typer.Context, name: str) -> None:
    """Delete an index with all its documents."""
    _run(_connection(ctx), lambda c: c.delete_index(name))
    _out().print(f"deleted index {escape(name)}")


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
            started.append(await client.ingest_documents(index, documents, chunking=chunking))
        for f in large:
            started.append(
                await client.upload_document(
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
            console=_out(),
        ) as progress:
            for ingestion in started:
                task = progress.add_task(f"{ingestion.id} chunks", total=None)
                async for event in client.watch_ingestion(ingestion.id):
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

    final = _run(_connection(ctx), work)
    out = _out()
    out.print(f"ingestion {escape(final.id)}: {_status(final.status)}")
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
    docs = _run(_connection(ctx), lambda c: c.list_documents(index))
    if as_json:
        _print_json([to_dict(d) for d in docs])
        return
    table = Table("id", "title", "format", "pages", "chunks", "status", title=index)
    for d in docs:
        table.add_row(
            d.id,
            d.title,
            rag_pb2.DocumentFormat.Name(d.format).removeprefix("DOCUMENT_FORMAT_"),
            str(d.page_count),
            str(d.chunk_count),
            rag_pb2.DocumentStatus.Name(d.status).removeprefix("DOCUMENT_STATUS_"),
        )
    _out().print(table)


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
    results = _run(_connection(ctx), lambda c: c.query(index, text, options))
    if as_json:
        _print_json([to_dict(r) for r in results])
        return
    out = _out()
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
        out = _out()
        citations: list[rag_pb2.Citation] = []
        async for event in client.answer(index, question, rag_pb2.RetrievalOptions(top_k=top_k)):
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

    _run(_connection(ctx), work)


_DEMO_DOCUMENTS = {
    "looms.md": "# Looms\n\nA loom weaves thread into cloth. The warp threads run lengthwise "
    "and the weft crosses them.\n\n## Care\n\nOil the shuttle race every spring.",
    "temporal.txt": "Temporal keeps the state of every durable run. When a worker "
    "crashes, another worker retries the activity and the run goes on.",
    "pgvector.txt": "pgvector stores embeddings in PostgreSQL and finds the nearest ones "
    "with an HNSW index, filtered by tenant.",
}


async def demo_rag(ctx: DemoContext) -> None:
    """An index, a durable ingestion with progress, a hybrid query and a cited answer."""
    client = ctx.client
    index = f"demo_{uuid.uuid4().hex[:8]}"
    await client.create_index(index, description="loomwork demo")
    ctx.ok(f"created index [cyan]{index}[/] (all-MiniLM-L6-v2, 384 dimensions, cosine)")
    try:
        documents = [
            rag_pb2.DocumentInput(document_id=name.split(".")[0], file_name=name, text=text)
            for name, text in _DEMO_DOCUMENTS.items()
        ]
        ingestion = await client.ingest_documents(index, documents)
        async for event in client.watch_ingestion(ingestion.id):
            if event.HasField("finished"):
                done = event.finished
                ctx.ok(
                    f"ingestion {escape(done.id)} {_status(done.status)}: "
                    f"{done.progress.documents_done} documents, "
                    f"{done.progress.chunks_done} chunks embedded and stored"
                )
        retrieval = rag_pb2.RetrievalOptions(top_k=2, mode=rag_pb2.SEARCH_MODE_HYBRID)
        question = "What happens when a worker crashes?"
        results = await client.query(index, question, retrieval)
        best = results[0]
        ctx.ok(
            f"query {escape(repr(question))}: best match {escape(best.chunk.document_id)} "
            f"(score {best.score:.2f})"
        )
        text: list[str] = []
        asked = "What does a loom do?"
        ctx.note(f"asking {asked!r} (a cited answer, streamed):")
        async for answer_event in client.answer(index, asked, retrieval):
            if answer_event.HasField("text_delta"):
                text.append(answer_event.text_delta.text)
            elif answer_event.HasField("citation"):
                citation = answer_event.citation
                ctx.ok(f"citation [{citation.number}] → {escape(citation.document_id)}")
            elif answer_event.HasField("finished"):
                ctx.ok(f"answer: {escape(''.join(text))}")
    finally:
        await client.delete_index(index)
        ctx.note(f"deleted index {index}")
