"""Ingestion throughput through Temporal (chunks/s) over raw embedding of the same chunks.

    .venv/bin/python bench/ingest_throughput.py [--docs 8] [--rounds 1] [--parallelism 4]
        [--workers 1 2]

The document set is real text: this repository's README.md and the package descriptions
(`*.dist-info/METADATA`, Markdown or reStructuredText) of the largest packages installed
next to it, repeated with a different first line until `--docs` documents. The baseline,
measured in this process just before each ingestion: the same chunk texts (extracted and
chunked by the same code) embedded by the same local model, in batches of 64 — the bare
cost of the embeddings. The ingestion: `RagIngestion` on the task queue of one, then two
`loomwork worker` processes (each warmed up by a small ingestion first), from the workflow's
start to its result (extract, chunk, stage, embed in batches of 64, commit, progress events,
continue-as-new). Goal (issue #24): ≥ 0.9× with one and with two workers.
Starts embedded Postgres, Valkey and Temporal in a temporary home.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import WorkflowHandle

from loomwork.config import Settings
from loomwork.embeddings import shared_local_model
from loomwork.integrations.secret_box import dev_secret
from loomwork.rag.chunking import chunk_document
from loomwork.rag.extract import extract
from loomwork.rag.ingestion_models import (
    IngestionRequest,
    SourceDocument,
    new_ingestion,
)
from loomwork.rag.models import ChunkingOptions, DocumentFormat, IndexSpec
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from server.temporal import register_search_attributes
from workflows.ingestion import IngestionWorkflow

ROOT = Path(__file__).resolve().parent.parent
TENANT = "bench"


def document_set(count: int) -> list[tuple[str, bytes]]:
    """(file name, bytes) of `count` real documents: README.md and package descriptions."""
    site = Path(sysconfig.get_paths()["purelib"])
    described = sorted(site.glob("*.dist-info/METADATA"), key=lambda p: -p.stat().st_size)
    sources = [ROOT / "README.md", *described[:15]]
    texts = [
        (f"{p.parent.name}.md" if p.name == "METADATA" else p.name, p.read_bytes()) for p in sources
    ]
    out = []
    for i in range(count):
        name, data = texts[i % len(texts)]
        # A different first line: each copy is its own document (never UNCHANGED).
        out.append((f"{i}-{name}", f"Copy {i} of {name}\n\n".encode() + data))
    return out


def chunk_texts(documents: list[tuple[str, bytes]], chunking: ChunkingOptions) -> list[str]:
    texts: list[str] = []
    for name, data in documents:
        extracted = extract(data, DocumentFormat.MARKDOWN, name)
        chunks = chunk_document(
            extracted,
            chunking,
            document_id=name,
            content_hash=hashlib.sha256(data).hexdigest(),
        )
        texts.extend(c.text for c in chunks)
    return texts


async def raw_embedding(texts: list[str]) -> float:
    """Texts/s of the local model embedding `texts` in batches of 64, in this process."""
    model = shared_local_model()
    t0 = time.perf_counter()
    for start in range(0, len(texts), 64):
        await model.embed(texts[start : start + 64])
    return len(texts) / (time.perf_counter() - t0)


class Workers:
    def __init__(self, settings: Settings, queue: str, log: Path, count: int) -> None:
        env = dict(
            os.environ,
            DATABASE_URL=settings.database_url or "",
            REDIS_URL=settings.redis_url or "",
            TEMPORAL_ADDRESS=settings.temporal_address or "",
            LOOMWORK_HOME=str(settings.home),
            LOOMWORK_TASK_QUEUE=queue,
            LOOMWORK_SECRET_KEY=settings.secret_key or dev_secret(settings.home),
        )
        self.queue = queue
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "server.cli", "worker"],
                cwd=ROOT,
                env=env,
                stdout=log.open("ab"),
                stderr=subprocess.STDOUT,
            )
            for _ in range(count)
        ]

    async def polling(self, runtime: Runtime) -> None:
        request = DescribeTaskQueueRequest(
            namespace=runtime.temporal.namespace,
            task_queue=TaskQueue(name=self.queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        )
        pids = {p.pid for p in self.processes}
        for _ in range(1200):
            described = await runtime.temporal.workflow_service.describe_task_queue(request)
            if pids <= {int(p.identity.split("@")[0]) for p in described.pollers}:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("the workers did not start polling")

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(60)  # an embedding batch in flight finishes first
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def ingest(
    runtime: Runtime,
    queue: str,
    documents: list[tuple[str, bytes]],
    chunking: ChunkingOptions,
    parallelism: int,
) -> tuple[float, int, int]:
    """(seconds, chunks, runs) of one ingestion of `documents`, from start to result."""
    ingestion_id = f"ing_{uuid.uuid4().hex[:10]}"
    sources = [
        # Ids of this ingestion's own: a later ingestion (or a warm-up) never finds them
        # unchanged, so each ingestion embeds every chunk the baseline does.
        SourceDocument(
            document_id=f"{ingestion_id}-d{i}", file_name=name, format=DocumentFormat.MARKDOWN
        )
        for i, (name, _) in enumerate(documents)
    ]
    record = new_ingestion(TENANT, "bench", ingestion_id, sources, chunking)
    assert runtime.rag is not None
    await runtime.rag.ingestion.create(record, [data for _, data in documents])
    t0 = time.perf_counter()
    handle = await runtime.temporal.start_workflow(
        IngestionWorkflow.run,
        IngestionRequest(
            tenant=TENANT,
            ingestion_id=ingestion_id,
            index_name="bench",
            document_count=len(documents),
            parallelism=parallelism,
            continue_after=runtime.settings.ingest_continue_after,
        ),
        id=record.workflow_id,
        task_queue=queue,
    )
    result = await handle.result()
    seconds = time.perf_counter() - t0
    if result.status != "succeeded":
        raise RuntimeError(f"ingestion ended {result.status}")
    return seconds, result.progress.chunks_done, await _runs(runtime, handle)


async def _runs(runtime: Runtime, handle: WorkflowHandle[Any, Any]) -> int:
    """How many runs the ingestion took: its first run and those it continued as new into."""
    runs, run_id = 0, handle.first_execution_run_id or ""
    while run_id:
        runs += 1
        run = runtime.temporal.get_workflow_handle(handle.id, run_id=run_id)
        last = (await run.fetch_history()).events[-1]
        run_id = ""
        if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return runs


async def bench(settings: Settings, args: argparse.Namespace, log: Path) -> None:
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    assert runtime.rag is not None
    await runtime.rag.store.create_index(
        TENANT, IndexSpec(name="bench", embedding_model="all-MiniLM-L6-v2", dimension=384)
    )
    chunking = ChunkingOptions()
    documents = document_set(args.docs)
    texts = chunk_texts(documents, chunking)
    size = sum(len(d) for _, d in documents)
    print(f"  {len(documents)} documents, {size / 1e6:.1f} MB, {len(texts)} chunks")
    await raw_embedding(texts[:128])  # load and warm the model
    try:
        for workers in args.workers:
            queue = f"ingest-bench-{workers}-{uuid.uuid4().hex[:6]}"
            pool = Workers(settings, queue, log, workers)
            try:
                await pool.polling(runtime)
                # Warm up: each worker loads its model (four one-line documents).
                tiny = [(f"warm-{i}.md", f"Warm-up line {i}.".encode()) for i in range(4)]
                await ingest(runtime, queue, tiny, chunking, args.parallelism)
                for round_ in range(args.rounds):
                    raw = await raw_embedding(texts)
                    seconds, chunks, runs = await ingest(
                        runtime, queue, documents, chunking, args.parallelism
                    )
                    ours = chunks / seconds
                    print(
                        f"  {workers} worker(s), round {round_ + 1}: ingestion {chunks} chunks"
                        f" in {seconds:.1f} s = {ours:.2f} chunks/s ({runs} runs);"
                        f" raw embedding {raw:.2f} chunks/s = {ours / raw:.2f}x"
                        f"  load {os.getloadavg()[0]:.1f}"
                    )
            finally:
                pool.stop()
    finally:
        await runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--continue-after", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        home = Path(tmp)
        stack = EmbeddedStack(home, temporal_ui=False)
        endpoints = stack.start()
        try:
            settings = Settings(
                DATABASE_URL=endpoints.database_url,
                REDIS_URL=endpoints.redis_url,
                TEMPORAL_ADDRESS=endpoints.temporal_address,
                LOOMWORK_HOME=home,
                LOOMWORK_INGEST_CONTINUE_AFTER=args.continue_after,
            )
            asyncio.run(bench(settings, args, home / "workers.log"))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
