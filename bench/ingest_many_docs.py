"""An ingestion of many small documents: the steps' cost per document, old code vs new.

    .venv/bin/python bench/ingest_many_docs.py [--docs 2000 8000] [--sample 400]
        [--old /tmp/s12-old] [--parallelism 4] [--complete]
        [--embedder local|none]

The old code is another checkout of the repository (`git -C /work/main archive main | tar
-x -C /tmp/s12-old`): before migration 0014 an ingestion's record held every document's
state in one JSON value, read and written whole by every step. Each measurement runs in a
process of its own with that code first on its path, against a fresh database of the same
embedded PostgreSQL (Valkey for the event log), sequentially, old then new.

Documents: one paragraph each (the paragraphs of this repository's README.md and of the
installed packages' descriptions, each with its own first line), one chunk each, with a
little metadata. The steps run as the workflow's activities do, without Temporal:
`--parallelism` documents at a time, each prepare -> embed (batches of 64) -> commit, on the
local embedding model (`--embedder none`: a fixed vector instead, the steps alone). The
record's size is fixed by the number of documents from the start, so the first `--sample`
documents of an ingestion of `--docs` cost per document what the rest would; the ingestion
then finishes CANCELED. `--complete` adds a run of the new code over every document.
Printed per run: wall time of the steps (start to the last commit), time per document, the
WAL written (`pg_current_wal_lsn()` before and after) in total and per document, and the
ratios old/new; then the same of `finish` (once per ingestion, over every document).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A child runs the code of `--code DIR` (old or new); this file comes from the new tree.
_CODE = sys.argv[sys.argv.index("--code") + 1] if "--code" in sys.argv else str(ROOT)
sys.path.insert(0, _CODE)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

import psycopg  # noqa: E402
from psycopg import conninfo, sql  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from loomwork.rag.embedders import Embedders  # noqa: E402
from loomwork.rag.ingestion import IngestionSteps  # noqa: E402
from loomwork.rag.ingestion_models import (  # noqa: E402
    IngestionRequest,
    SourceDocument,
    new_ingestion,
)
from loomwork.rag.models import ChunkingOptions, DocumentFormat, IndexSpec  # noqa: E402
from loomwork.rag.store import RagStore  # noqa: E402
from loomwork.storage.database import Database  # noqa: E402
from loomwork.storage.event_ceilings import EventIdCeilings  # noqa: E402
from loomwork.storage.migrations import apply_migrations  # noqa: E402
from loomwork.streams.run_events import RunEventLog  # noqa: E402

TENANT = "bench"
MODEL = "all-MiniLM-L6-v2"


class FixedVector:
    """An embedding provider that returns one fixed unit vector: the steps without the
    model's cost (`--embedder none`)."""

    model = MODEL
    dimension = 384

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [[1.0] + [0.0] * 383 for _ in texts]


class NoModel(Embedders):
    async def get(self, model: str, dimension: int = 0) -> Any:
        return FixedVector()


def paragraphs() -> list[str]:
    """Real paragraphs of 200..800 characters: README.md and package descriptions."""
    site = Path(sysconfig.get_paths()["purelib"])
    files = [ROOT / "README.md", *sorted(site.glob("*.dist-info/METADATA"))[:200]]
    found: list[str] = []
    for path in files:
        for block in path.read_text(errors="replace").split("\n\n"):
            text = " ".join(block.split())
            if 200 <= len(text) <= 800:
                found.append(text)
    return found


def documents(count: int) -> list[tuple[SourceDocument, bytes]]:
    texts = paragraphs()
    out = []
    for i in range(count):
        data = f"Note {i}. {texts[i % len(texts)]}".encode()
        source = SourceDocument(
            document_id=f"note-{i}",
            file_name=f"note-{i}.txt",
            format=DocumentFormat.PLAIN_TEXT,
            metadata={"n": i, "collection": "bench"},
            size_bytes=len(data),
        )
        out.append((source, data))
    return out


async def wal_lsn(db: Database) -> str:
    async with db.connection() as conn:
        cur = await conn.execute("select pg_current_wal_lsn()::text as lsn")
        row = await cur.fetchone()
    assert row is not None
    return str(row["lsn"])


async def wal_since(db: Database, lsn: str) -> int:
    async with db.connection() as conn:
        cur = await conn.execute(
            "select pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::bigint as n", (lsn,)
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


async def child(args: argparse.Namespace) -> dict[str, Any]:
    """One ingestion of `--docs` documents, its first `--sample` processed; what it cost."""
    db = Database(args.database_url, max_size=args.parallelism + 2)
    await db.open()
    redis = Redis.from_url(args.redis_url)
    try:
        await apply_migrations(db)
        events = RunEventLog(redis, ceilings=EventIdCeilings(db))
        store = RagStore(db)
        embedders = Embedders(MODEL) if args.embedder == "local" else NoModel(MODEL)
        steps = IngestionSteps(db, store, embedders, events)
        index = f"many_{uuid.uuid4().hex[:8]}"
        await store.create_index(
            TENANT, IndexSpec(name=index, embedding_model=MODEL, dimension=384)
        )
        docs = documents(args.docs[0])
        await (await steps.embedders.get(MODEL)).embed(["warm the model up"])
        ingestion_id = f"ing_{uuid.uuid4().hex[:10]}"
        record = new_ingestion(TENANT, index, ingestion_id, [s for s, _ in docs], ChunkingOptions())
        await steps.create(record, [d for _, d in docs])
        request = IngestionRequest(
            tenant=TENANT, ingestion_id=ingestion_id, index_name=index, document_count=len(docs)
        )
        processed = min(args.sample or len(docs), len(docs))
        ordinals = iter(range(processed))

        async def worker() -> None:
            for ordinal in ordinals:
                prepared = await steps.prepare(request, ordinal)
                if prepared.status != "embedding":
                    continue
                for start in range(0, prepared.chunk_count, request.batch_size):
                    end = min(start + request.batch_size, prepared.chunk_count)
                    await steps.embed_batch(request, ordinal, start, end)
                await steps.commit(request, ordinal)

        lsn = await wal_lsn(db)
        t0 = time.perf_counter()
        await steps.start(request)
        await asyncio.gather(*(worker() for _ in range(args.parallelism)))
        seconds = time.perf_counter() - t0
        wal = await wal_since(db, lsn)
        lsn, t0 = await wal_lsn(db), time.perf_counter()
        final = await steps.finish(request, canceled=processed < len(docs))
        finish_seconds = time.perf_counter() - t0
        finish_wal = await wal_since(db, lsn)
        if final.progress.documents_done != processed:
            raise RuntimeError(f"{final.progress.documents_done} documents done of {processed}")
        return {
            "docs": len(docs),
            "processed": processed,
            "seconds": seconds,
            "wal_bytes": wal,
            "finish_seconds": finish_seconds,
            "finish_wal_bytes": finish_wal,
            "chunks": final.progress.chunks_done,
            "status": final.status,
        }
    finally:
        await redis.aclose()
        await db.close()


def database(url: str, name: str) -> str:
    """A fresh database `name` beside `url`'s."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return conninfo.make_conninfo(url, dbname=name)


def measure(
    code: str,
    database_url: str,
    redis_url: str,
    docs: int,
    sample: int,
    parallelism: int,
    embedder: str,
) -> dict[str, Any]:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    url = database(database_url, name)
    command = [
        sys.executable,
        __file__,
        "--child",
        "--code",
        code,
        "--database-url",
        url,
        "--redis-url",
        redis_url,
        "--docs",
        str(docs),
        "--sample",
        str(sample),
        "--parallelism",
        str(parallelism),
        "--embedder",
        embedder,
    ]
    env = dict(os.environ, PYTHONPATH=code)
    done = subprocess.run(command, env=env, cwd=code, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{code}: {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))
    return result


def line(label: str, r: dict[str, Any]) -> str:
    per_doc = r["seconds"] / r["processed"]
    return (
        f"  {label:<4} {r['docs']:>6} docs, {r['processed']:>5} processed: {r['seconds']:7.1f} s,"
        f" {per_doc * 1000:7.1f} ms/doc, WAL {r['wal_bytes'] / 1e6:8.1f} MB"
        f" = {r['wal_bytes'] / r['processed'] / 1e3:7.1f} kB/doc;"
        f" finish {r['finish_seconds']:5.2f} s, WAL {r['finish_wal_bytes'] / 1e6:5.1f} MB"
        f" ({r['status']}, load {os.getloadavg()[0]:.1f})"
    )


def parent(args: argparse.Namespace) -> None:
    from server.embedded import EmbeddedStack

    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        stack = EmbeddedStack(Path(tmp), temporal=False)
        endpoints = stack.start()
        assert endpoints.database_url and endpoints.redis_url
        where = (endpoints.database_url, endpoints.redis_url)
        try:
            for docs in args.docs:
                old = measure(args.old, *where, docs, args.sample, args.parallelism, args.embedder)
                print(line("old", old), flush=True)
                new = measure(str(ROOT), *where, docs, args.sample, args.parallelism, args.embedder)
                print(line("new", new), flush=True)
                print(
                    f"  old/new: time per document {old['seconds'] / new['seconds']:.1f}x,"
                    f" WAL per document {old['wal_bytes'] / new['wal_bytes']:.1f}x",
                    flush=True,
                )
                if args.complete:
                    full = measure(str(ROOT), *where, docs, 0, args.parallelism, args.embedder)
                    print(line("new", full), flush=True)
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--sample", type=int, default=400, help="documents processed; 0: all")
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--old", default="/tmp/s12-old")
    parser.add_argument("--complete", action="store_true")
    parser.add_argument("--embedder", choices=["local", "none"], default="local")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--code", default=str(ROOT))
    parser.add_argument("--database-url", default="")
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args))))
    else:
        parent(args)


if __name__ == "__main__":
    main()
