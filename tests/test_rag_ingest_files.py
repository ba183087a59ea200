"""Ingesting whole folders against the real server: a set larger than the gRPC message
limit (batches and uploads), subfolders, globs, a corrupt file failing alone, the summary,
re-runs unchanged; a DOCX written with python-docx found by a query (Python client)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import uuid
from pathlib import Path

import typer
from click.testing import Result
from google.protobuf import struct_pb2
from typer.testing import CliRunner

from clients import LoomworkClient
from clients.cli import register
from clients.rag_files import IngestProgress
from loomwork.config import Settings
from protos.loomwork.v1 import rag_pb2
from server.runtime import Runtime
from server.transport.grpc_app import build_grpc_app
from tests.test_rag_extract import SHIPPED_PDF, built_docx

app = typer.Typer()
register(app)
README = Path(__file__).parent.parent / "README.md"


def _cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner(env=env).invoke(app, list(args))


def _paragraphs() -> list[str]:
    """Prose paragraphs of the project's README (real text, each distinct)."""
    found = []
    for block in README.read_text().split("\n\n"):
        text = " ".join(block.split())
        if len(text) > 250 and not text.startswith(("```", "|", "-", "#")):
            found.append(text)
    return found


def _page(number: int, title: str, paragraphs: list[str], asset: str) -> str:
    """An HTML page carrying a large inline asset in a script, as real pages do: big on
    the wire, a few paragraphs of main text."""
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f"<!doctype html><html><head><title>{title}</title>"
        f'<script>var asset{number} = "{asset}";</script></head>'
        f"<body><nav>menu</nav><main><h1>{title}</h1>{body}</main></body></html>"
    )


def _build_folder(root: Path) -> dict[str, int]:
    """The document set: 30 pages and one 5 MiB page at the top, a subfolder of Markdown,
    PDF, text and a DOCX (and a corrupt PDF), files no glob keeps. Sizes by relative path."""
    paragraphs = _paragraphs()
    assert len(paragraphs) >= 31
    # The real PDF, as base64, repeated: ~0.55 MB of asset per page.
    asset = base64.b64encode(SHIPPED_PDF.read_bytes()).decode() * 3
    for i in range(30):
        (root / f"page-{i:02d}.html").write_text(
            _page(i, f"Notes {i}", [paragraphs[i], f"This is page {i} of the notes."], asset)
        )
    lighthouse = (
        "The lighthouse keeper sounds the fog horn at four in the morning and writes the "
        "visibility into the harbour log."
    )
    (root / "big.html").write_text(
        _page(99, "Lighthouse log", [lighthouse, paragraphs[30]], asset * 10)
    )
    (root / "notes.log").write_text("a log line no glob keeps\n")
    guide = root / "guide"
    (guide / "deeper").mkdir(parents=True)
    sections = re.split(r"\n(?=## )", README.read_text())[1:4]
    for n, section in enumerate(sections):
        (guide / f"section-{n}.md").write_text(section)
    (guide / "spec.pdf").write_bytes(SHIPPED_PDF.read_bytes())
    (guide / "broken.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 8)
    (guide / "plain.txt").write_text(
        "Plain text notes: the tide tables are printed every Sunday by the harbour office.\n"
    )
    (guide / "table.csv").write_text("no,glob,keeps,this\n")
    (guide / "deeper" / "manual.docx").write_bytes(built_docx())
    return {
        p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()
    }


async def test_folder_over_the_message_limit(
    grpc_address: str, token: str, tmp_path: Path, settings: Settings
) -> None:
    env = {"LOOMWORK_GRPC_ADDRESS": grpc_address, "LOOMWORK_TOKEN": token, "COLUMNS": "200"}
    root = tmp_path / "docs"
    root.mkdir()
    sizes = await asyncio.to_thread(_build_folder, root)
    assert sum(sizes.values()) > settings.max_message_bytes
    kept = {p for p in sizes if not p.endswith((".log", ".csv"))}
    good = kept - {"guide/broken.pdf"}
    assert len(good) == 37
    index = f"folder_{uuid.uuid4().hex[:8]}"
    assert (await asyncio.to_thread(_cli, env, "rag", "create-index", index)).exit_code == 0
    args = ["rag", "ingest", index, str(root), "--recursive"]
    for pattern in ("*.html", "*.md", "*.pdf", "*.txt", "guide/deeper/*.docx"):
        args += ["--glob", pattern]

    first = await asyncio.to_thread(_cli, env, *args)
    assert first.exit_code == 1, first.output  # the corrupt file failed, alone
    assert "37 succeeded · 1 failed (38 files;" in first.stdout
    assert re.search(r"failed \S*guide/broken\.pdf: DOCUMENT_CORRUPT", first.stdout)

    async with LoomworkClient(grpc_address, token) as client:
        documents = await client.rag.list_documents(index)
        by_source = {d.source_uri: d for d in documents}
        assert {Path(uri).relative_to(root).as_posix() for uri in by_source} == kept
        ready = [d for d in documents if d.status == rag_pb2.DOCUMENT_STATUS_READY]
        assert {Path(d.source_uri).relative_to(root).as_posix() for d in ready} == good
        for document in ready:  # every good document has searchable chunks
            only = rag_pb2.MetadataFilter(
                condition=rag_pb2.MetadataCondition(
                    field="document_id", equals=struct_pb2.Value(string_value=document.id)
                )
            )
            hits = await client.rag.query(
                index, document.title or "notes", rag_pb2.RetrievalOptions(top_k=1, filter=only)
            )
            assert [h.chunk.document_id for h in hits] == [document.id], document.source_uri
        # Hybrid: the pages' README paragraphs change with the README, and vector search
        # alone may rank a short chunk above the one these exact words are in.
        hybrid = rag_pb2.RetrievalOptions(mode=rag_pb2.SEARCH_MODE_HYBRID)
        hits = await client.rag.query(index, "When is the fog horn sounded?", hybrid)
        assert hits[0].citation.title == "Lighthouse log"
        assert "four in the morning" in hits[0].chunk.text
        hits = await client.rag.query(index, "How often is the pump shaft seal replaced?", hybrid)
        assert "every 4000 hours" in hits[0].chunk.text

    again = await asyncio.to_thread(_cli, env, *args, "--json")
    assert again.exit_code == 1, again.output
    report = json.loads(again.stdout)
    statuses = {Path(f["path"]).relative_to(root).as_posix(): f["status"] for f in report["files"]}
    assert statuses == {p: "unchanged" for p in good} | {"guide/broken.pdf": "failed"}
    summary = await asyncio.to_thread(_cli, env, *args)
    assert "0 succeeded · 37 unchanged · 1 failed (38 files;" in summary.stdout


async def test_python_client_ingests_a_docx_and_text_and_reports_progress(
    grpc_address: str, token: str, tmp_path: Path
) -> None:
    (tmp_path / "manual.docx").write_bytes(built_docx(title="Pump manual"))
    (tmp_path / "tides.txt").write_text("The harbour office prints the tide tables on Sunday.\n")
    (tmp_path / "copy.txt").write_text("The harbour office prints the tide tables on Sunday.\n")
    seen: list[IngestProgress] = []
    async with LoomworkClient(grpc_address, token) as client:
        index = f"docx_{uuid.uuid4().hex[:8]}"
        await client.rag.create_index(index)
        report = await client.rag.ingest_files(
            index,
            [
                tmp_path / "manual.docx",
                tmp_path / "tides.txt",
                tmp_path / "copy.txt",
                tmp_path / "missing.pdf",
            ],
            chunking=rag_pb2.ChunkingOptions(strategy=rag_pb2.CHUNKING_STRATEGY_MARKDOWN),
            on_progress=seen.append,
        )
        assert [(f.path.name, f.status, f.reason) for f in report.files] == [
            ("missing.pdf", "failed", "FILE_NOT_FOUND"),
            ("manual.docx", "succeeded", ""),
            ("tides.txt", "succeeded", ""),
            ("copy.txt", "unchanged", ""),
        ]
        assert seen[-1].files_total == 4 and seen[-1].files_done == 3
        assert seen[-1].files_failed == 1
        assert seen[-1].chunks_done == seen[-1].chunks_total > 0
        hits = await client.rag.query(index, "How often must the shaft seal be replaced?")
        assert "Replace the shaft seal every 4000 hours." in hits[0].chunk.text
        assert hits[0].chunk.heading_path == ["Pumps", "Seals"]
        assert hits[0].citation.title == "Pump manual"
        table = await client.rag.query(index, "What is the flow of the P-20 pump model?")
        assert any("P-20 | 20 l/min | 8 m" in h.chunk.text for h in table)


async def test_a_server_with_a_lower_message_limit(
    runtime: Runtime, worker: None, token: str, tmp_path: Path
) -> None:
    """Against a server taking 1 MiB messages, the default 8 MiB batches are refused: the
    files go one per call, and one over 1 MiB alone goes as an upload."""
    small = dataclasses.replace(
        runtime, settings=runtime.settings.model_copy(update={"max_message_bytes": 2**20})
    )
    app = build_grpc_app(small, "127.0.0.1:0", health_interval=0.3)
    await app.start()
    try:
        asset = base64.b64encode(SHIPPED_PDF.read_bytes()).decode() * 3  # ~0.55 MB
        paragraphs = _paragraphs()
        for i in range(3):
            (tmp_path / f"page-{i}.html").write_text(_page(i, f"Small {i}", [paragraphs[i]], asset))
        (tmp_path / "large.html").write_text(_page(9, "Large", [paragraphs[5]], asset * 2))
        assert (tmp_path / "large.html").stat().st_size > 2**20
        async with LoomworkClient(f"127.0.0.1:{app.port}", token) as client:
            index = f"limit_{uuid.uuid4().hex[:8]}"
            await client.rag.create_index(index)
            report = await client.rag.ingest_files(index, [tmp_path])
            assert {f.path.name: f.status for f in report.files} == {
                "large.html": "succeeded",
                "page-0.html": "succeeded",
                "page-1.html": "succeeded",
                "page-2.html": "succeeded",
            }
            documents = await client.rag.list_documents(index)
            assert sorted(d.title for d in documents) == ["Large", "Small 0", "Small 1", "Small 2"]
    finally:
        await app.stop(grace=1.0)
