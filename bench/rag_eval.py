"""Retrieval quality on a real document set, through the real service: recall@1 and
recall@5 of vector, full-text, hybrid and hybrid + signal rerank.

    .venv/bin/python bench/rag_eval.py [--data bench/data/postgres-docs] [--sweep] [--home DIR]

The set's HTML pages are ingested with IngestDocuments (groups of 10 files) into one index
(the local all-MiniLM-L6-v2 model, default chunking); each question of `questions.json` is
asked with Query. A question is answered at k when one of the first k chunks contains its
`answer` substring (whitespace-insensitive). Full text alone is hybrid with vector weight
0 (vector-only candidates score 0, so the order is the full-text ranking). The baseline
is vector search in the same run: the hybrid lines print their ratio to it. `--sweep`
also measures hybrid recall for a grid of fusion weights and RRF constants (how the
defaults were chosen). `--home DIR` keeps the embedded servers' data there, and a later
run with the same DIR asks the questions without ingesting again. `--dump-lexical FILE`
writes each question's full-text ranking (the first 40 chunks, as hybrid search takes them
before fusion) for `bench/vector_variants.py --lexical FILE`, which fuses it offline with
another model's vectors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loomwork.config import Settings
from protos.loomwork.v1 import rag_pb2, rag_pb2_grpc
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from server.temporal import register_search_attributes
from server.transport.grpc_app import build_grpc_app
from server.worker import build_worker

AUTH = (("authorization", "Bearer bench"),)
DATA = Path(__file__).resolve().parent / "data" / "postgres-docs"
INDEX = "pgdocs"
_SPACE = re.compile(r"\s+")


def squash(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


@contextmanager
def bench_settings(home: Path | None) -> Iterator[Settings]:
    """Embedded Postgres, Valkey and Temporal in `home` (a temporary one if None)."""
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        where = home or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        stack = EmbeddedStack(where, temporal_ui=False)
        endpoints = stack.start()
        try:
            yield Settings(
                DATABASE_URL=endpoints.database_url,
                REDIS_URL=endpoints.redis_url,
                TEMPORAL_ADDRESS=endpoints.temporal_address,
                LOOMWORK_HOME=where,
                LOOMWORK_TOKENS="bench=bench:admin",
            )
        finally:
            stack.stop()


async def ingest(rag: rag_pb2_grpc.RagServiceStub, files: list[Path]) -> None:
    started = time.perf_counter()
    for start in range(0, len(files), 10):
        group = [
            rag_pb2.DocumentInput(document_id=f.stem, data=f.read_bytes(), file_name=f.name)
            for f in files[start : start + 10]
        ]
        response = await rag.IngestDocuments(
            rag_pb2.IngestDocumentsRequest(index_name=INDEX, documents=group), metadata=AUTH
        )
        async for event in rag.WatchIngestion(
            rag_pb2.WatchIngestionRequest(ingestion_id=response.ingestion.id), metadata=AUTH
        ):
            if event.event.HasField("finished"):
                finished = event.event.finished
                assert finished.status == rag_pb2.INGESTION_STATUS_SUCCEEDED, finished
                break
    info = await rag.GetIndex(rag_pb2.GetIndexRequest(index_name=INDEX), metadata=AUTH)
    print(
        f"  ingested {info.index.document_count} pages, {info.index.chunk_count} chunks"
        f" in {time.perf_counter() - started:.0f}s"
    )


Question = dict[str, object]


async def recall(
    rag: rag_pb2_grpc.RagServiceStub,
    questions: list[Question],
    retrieval: rag_pb2.RetrievalOptions,
    misses: list[str] | None = None,
) -> tuple[float, float]:
    """(recall@1, recall@5) of `questions` under `retrieval` (top_k 5)."""
    at1 = at5 = 0
    for q in questions:
        options = rag_pb2.RetrievalOptions()
        options.CopyFrom(retrieval)
        options.top_k = 5
        response = await rag.Query(
            rag_pb2.QueryRequest(index_name=INDEX, query=str(q["q"]), retrieval=options),
            metadata=AUTH,
        )
        answer = squash(str(q["answer"]))
        hits = [answer in squash(r.chunk.text) for r in response.results]
        at1 += bool(hits[:1] and hits[0])
        at5 += any(hits)
        if misses is not None and not any(hits):
            misses.append(str(q["q"]))
    return at1 / len(questions), at5 / len(questions)


MODES: dict[str, rag_pb2.RetrievalOptions] = {
    "vector": rag_pb2.RetrievalOptions(mode=rag_pb2.SEARCH_MODE_VECTOR),
    "full text": rag_pb2.RetrievalOptions(
        mode=rag_pb2.SEARCH_MODE_HYBRID,
        hybrid=rag_pb2.HybridOptions(vector_weight=0.0, lexical_weight=1.0),
    ),
    "hybrid": rag_pb2.RetrievalOptions(mode=rag_pb2.SEARCH_MODE_HYBRID),
    "hybrid + rerank": rag_pb2.RetrievalOptions(
        mode=rag_pb2.SEARCH_MODE_HYBRID,
        rerank=rag_pb2.RerankOptions(method=rag_pb2.RERANK_METHOD_SIGNALS),
    ),
}


async def dump_lexical(
    rag: rag_pb2_grpc.RagServiceStub, questions: list[Question], path: Path
) -> None:
    """Per question, the chunks full-text search ranks first (document id, position), in
    order: the lexical half of hybrid search's fusion (its 40 candidates at top_k 5)."""
    options = rag_pb2.RetrievalOptions()
    options.CopyFrom(MODES["full text"])
    options.top_k = 40
    ranked = []
    for q in questions:
        response = await rag.Query(
            rag_pb2.QueryRequest(index_name=INDEX, query=str(q["q"]), retrieval=options),
            metadata=AUTH,
        )
        ranked.append(
            [
                [r.chunk.document_id, r.chunk.position]
                for r in sorted(response.results, key=lambda r: r.details.lexical_rank)
                if r.details.lexical_rank
            ]
        )
    text = json.dumps({"questions": [q["q"] for q in questions], "lexical": ranked})
    await asyncio.to_thread(path.write_text, text)
    print(f"  full-text rankings written to {path}")


async def run(
    settings: Settings, data: Path, sweep: bool, verbose: bool, lexical: Path | None = None
) -> None:
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    worker = build_worker(runtime)
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    questions: list[Question] = json.loads((data / "questions.json").read_text())["questions"]
    exact = [q for q in questions if q.get("exact")]
    plain = [q for q in questions if not q.get("exact")]
    try:
        async with worker, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            rag = rag_pb2_grpc.RagServiceStub(channel)
            try:
                await rag.CreateIndex(
                    rag_pb2.CreateIndexRequest(index=rag_pb2.Index(name=INDEX)), metadata=AUTH
                )
                await ingest(rag, sorted((data / "html").glob("*.html")))
            except grpc.aio.AioRpcError as exc:  # ingested by an earlier run in --home
                if exc.code() is not grpc.StatusCode.ALREADY_EXISTS:
                    raise
                print("  the index exists (--home): not ingested again")
            if lexical is not None:
                await dump_lexical(rag, questions, lexical)
            print(
                f"  {len(questions)} questions ({len(exact)} hinge on an exact token);"
                " recall@1 / recall@5 (exact-token questions, others)"
            )
            baseline = 0.0
            for name, options in MODES.items():
                misses: list[str] = []
                r1, r5 = await recall(rag, questions, options, misses)
                e1, e5 = await recall(rag, exact, options)
                p1, p5 = await recall(rag, plain, options)
                if name == "vector":
                    baseline = r5
                ratio = f"  = {r5 / baseline:.2f}x vector@5" if baseline else ""
                print(
                    f"  {name:16} {r1:.3f} / {r5:.3f}   ({e1:.2f} / {e5:.2f}, {p1:.2f} / {p5:.2f})"
                    f"{ratio}"
                )
                if verbose:
                    for miss in misses:
                        print(f"      missed: {miss}")
            if sweep:
                print("  hybrid recall@1 / @5 by vector weight (lexical = 1 - it) and rrf_k:")
                for rrf_k in (10, 30, 60, 120):
                    cells = []
                    for vector_weight in (0.3, 0.4, 0.5, 0.6, 0.7):
                        options = rag_pb2.RetrievalOptions(
                            mode=rag_pb2.SEARCH_MODE_HYBRID,
                            hybrid=rag_pb2.HybridOptions(
                                rrf_k=rrf_k,
                                vector_weight=vector_weight,
                                lexical_weight=1 - vector_weight,
                            ),
                        )
                        r1, r5 = await recall(rag, questions, options)
                        cells.append(f"{vector_weight:.1f}: {r1:.2f}/{r5:.2f}")
                    print(f"    k {rrf_k:3}  " + "  ".join(cells))
    finally:
        await app.stop(0)
        await runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sweep", action="store_true", help="also a grid of fusion settings")
    parser.add_argument("--verbose", action="store_true", help="list the questions missed")
    parser.add_argument("--home", type=Path, help="keep the servers' data here (and reuse it)")
    parser.add_argument("--dump-lexical", type=Path, help="write the full-text rankings here")
    args = parser.parse_args()
    with bench_settings(args.home) as settings:
        asyncio.run(run(settings, args.data, args.sweep, args.verbose, args.dump_lexical))


if __name__ == "__main__":
    main()
