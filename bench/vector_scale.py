"""Semantic recall and RAG Query at scale: p50 latency and recall@10 against exact search.

    nice -n 19 .venv/bin/python bench/vector_scale.py --sizes 250000,500000,1000000
    nice -n 19 .venv/bin/python bench/vector_scale.py --sizes 1000000 --home /tmp/v1m --reuse

(`--home` keeps the cluster; with `--reuse` a later run measures the N vectors it holds
again, without loading; the vectors of a given N are the same in every run.)

Loading and index builds run at the bench's niceness (the embedded Postgres it starts
inherits it); the measurements at niceness 0 (`--measure-nice`; raising priority needs
root, else they stay niced), so a shared machine's other work does not starve them.

For each size N (ascending, each in fresh tables of one embedded Postgres):

* N 384-dim vectors go straight into `message_embeddings` (memory) and N into `rag_chunks`
  (RAG) by binary COPY, spread over 10 tenants: `big` holds 10%, `small` 1%, eight others
  the remaining 89% (11.125% each). Then the HNSW indexes are built as the code defines
  them (memory: one `hnsw (embedding vector_cosine_ops)` over all tenants; RAG: one
  partial HNSW per tenant's index, `m 16, ef_construction 64, where index_id = <id>`).
* Vectors: 1,000 centres drawn from N(0, I), each vector a centre plus N(0, 0.8² I)
  noise, normalized (so clusters overlap like sentence embeddings do; uniform vectors are
  HNSW's worst case and make no meaningful recall). Query vectors are fresh draws from
  the same mixture. All tenants share the mixture, so a tenant's rows are spread all
  over the graph: the case where a filter makes HNSW post-filtering lose rows.
* The embedded Postgres runs with its memory settings sized to the machine
  (server/embedded/postgres_settings.py; `--pg-settings` overrides). Before each group of
  measurements its index is read into shared buffers (`pg_prewarm`): a service answering
  steady traffic has it there.
* Measured through the real code path: `MessageRecall.search` (resource scope of `big`
  and of `small`, thread scope of `big`; top_k 10, no neighbours) and `Retriever.search`
  (vector mode, top_k 10) of `big` and `small`, with an embedding provider that answers the
  prepared query vector. Baseline in the same run: the bare `order by ... limit 10` SQL
  with the same filter and settings on its own connection (each `--ef` value of
  `hnsw.ef_search` is given to both: `HNSW_EF_SEARCH`, `Retriever.ef_search`). Recall@10
  against numpy brute force over the same filtered rows. Calls alternate ours / bare so
  load drift hits both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector_async

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loomwork.embeddings.provider import EmbeddingProvider
from loomwork.memory import recall as recall_module
from loomwork.memory.models import RecallQuery, RecallScope
from loomwork.memory.recall import SPACE, MessageRecall
from loomwork.rag.embedders import Embedders
from loomwork.rag.models import IndexSpec, RetrievalOptions
from loomwork.rag.query import Retriever
from loomwork.rag.store import RagStore, vector_literal
from loomwork.storage import codec
from loomwork.storage.database import Database
from loomwork.storage.migrations import apply_migrations
from loomwork.storage.postgres import PostgresMemoryStorage
from server.embedded import EmbeddedStack
from server.embedded.postgres_settings import parse_settings

DIM = 384
MODEL = "all-MiniLM-L6-v2"
K = 10
THREAD = 50  # messages per thread
RESOURCES = 5  # per tenant: r0 holds the even threads (half), r1..r4 the odd ones
TENANTS = ["big", "small"] + [f"other{i}" for i in range(8)]
SHARES = [0.10, 0.01] + [0.89 / 8] * 8
MEASURED = ("big", "small")  # tenants whose messages are stored and searched
CENTERS = np.random.default_rng(11).standard_normal((1000, DIM)).astype(np.float32)


def draw(n: int, rng: np.random.Generator) -> np.ndarray:
    v = CENTERS[rng.integers(0, len(CENTERS), n)] + 0.8 * rng.standard_normal((n, DIM)).astype(
        np.float32
    )
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def resource_of(thread: Any) -> Any:
    return np.where(thread % 2 == 0, 0, 1 + (thread // 2) % (RESOURCES - 1))


def load_avg() -> str:
    return "load {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


class Priority:
    """Niceness of the bench and of its Postgres (postmaster, every backend and worker)."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.base = os.getpriority(os.PRIO_PROCESS, 0)

    async def set(self, db: Database, nice: int) -> None:
        async with db.connection() as conn:
            cur = await conn.execute("select pid from pg_stat_activity")
            pids = [int(r["pid"]) for r in await cur.fetchall()]
        pids += [int((self.pgdata / "postmaster.pid").read_text().split()[0]), os.getpid()]
        # Not root: raising priority is refused, and the measurement stays niced.
        for pid in pids:
            with contextlib.suppress(PermissionError, ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, pid, nice)


async def prewarm(db: Database, *relations: str) -> None:
    """Read relations into shared buffers (as far as they fit)."""
    async with db.connection() as conn:
        for relation in relations:
            await conn.execute("select pg_prewarm(%s::regclass)", (relation,))


async def build(conn: Any, ddl: str) -> tuple[float, list[str]]:
    """Run an index build; its seconds and pgvector's notices (a graph past memory)."""
    notices: list[str] = []

    def keep(diag: Any) -> None:
        notices.append(str(diag.message_primary))

    conn.add_notice_handler(keep)
    t0 = time.perf_counter()
    try:
        await conn.execute(ddl)
    finally:
        conn.remove_notice_handler(keep)
    return time.perf_counter() - t0, notices


class Prepared:
    """An embedding provider answering the next prepared query vector."""

    model = MODEL
    dimension = DIM

    def __init__(self) -> None:
        self.next: list[float] = []

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [self.next for _ in texts]


class PreparedEmbedders(Embedders):
    def __init__(self, provider: Prepared) -> None:
        super().__init__(MODEL)
        self.provider = provider

    async def get(self, model: str, dimension: int = 0) -> EmbeddingProvider:
        return self.provider


class Corpus:
    """N vectors with their tenant, and (for memory) thread and resource numbers."""

    def __init__(self, n: int) -> None:
        counts = [int(n * s) for s in SHARES]
        counts[-1] += n - sum(counts)
        self.tenant = np.repeat(np.arange(len(TENANTS)), counts)
        self.ordinal = np.concatenate([np.arange(c) for c in counts])  # row number in tenant
        self.thread = self.ordinal // THREAD
        self.resource = resource_of(self.thread)
        self.vectors = draw(n, np.random.default_rng(n))  # the same for N in every run
        self.n = n
        self.counts = counts

    def rows(self, tenant: str) -> np.ndarray:
        out: np.ndarray = np.nonzero(self.tenant == TENANTS.index(tenant))[0]
        return out

    def exact(self, rows: np.ndarray, q: np.ndarray) -> set[int]:
        """Ordinals (within the tenant) of the K nearest rows by cosine (vectors are unit)."""
        sims = self.vectors[rows] @ q
        best = rows[np.argsort(-sims)[:K]]
        return {int(x) for x in self.ordinal[best]}


async def copy_rows(conn: Any, sql: str, types: list[str], rows: Any) -> None:
    async with conn.cursor().copy(sql + " from stdin with (format binary)") as copy:
        copy.set_types(types)
        for row in rows:
            await copy.write_row(row)


async def load_memory(db: Database, c: Corpus) -> dict[str, Any]:
    content = codec.encode({"parts": [{"type": "text", "text": "lorem ipsum " * 8}]})
    async with db.connection() as conn:
        await register_vector_async(conn)
        await conn.execute(f"truncate {SPACE}, messages, threads cascade")
        await conn.execute(f"drop index if exists {SPACE}_hnsw")
        for tenant in MEASURED:
            rows = c.rows(tenant)
            threads = int(c.thread[rows].max()) + 1
            await copy_rows(
                conn,
                "copy threads (tenant_id, id, resource_id)",
                ["text", "text", "text"],
                ((tenant, f"t{t}", f"r{resource_of(t)}") for t in range(threads)),
            )
            await copy_rows(
                conn,
                "copy messages (tenant_id, id, thread_id, role, content)",
                ["text", "text", "text", "text", "bytea"],
                (
                    (tenant, f"m{o}", f"t{o // THREAD}", "user", content)
                    for o in c.ordinal[rows].tolist()
                ),
            )
        await copy_rows(
            conn,
            f"copy {SPACE} (tenant_id, message_id, thread_id, resource_id, embedding)",
            ["text", "text", "text", "text", "vector"],
            (
                (TENANTS[t], f"m{o}", f"t{th}", f"r{r}", v)
                for t, o, th, r, v in zip(
                    c.tenant.tolist(),
                    c.ordinal.tolist(),
                    c.thread.tolist(),
                    c.resource.tolist(),
                    c.vectors,
                    strict=True,
                )
            ),
        )
        seconds, notices = await build(
            conn, f"create index {SPACE}_hnsw on {SPACE} using hnsw (embedding vector_cosine_ops)"
        )
        await conn.execute(f"vacuum analyze {SPACE}")
        cur = await conn.execute(
            "select pg_relation_size(%s) as size, pg_table_size(%s) as heap",
            (f"{SPACE}_hnsw", SPACE),
        )
        row = await cur.fetchone()
        assert row is not None
    return {
        "build_s": seconds,
        "index_bytes": int(row["size"]),
        "heap_bytes": int(row["heap"]),
        "notices": notices,
        "load": load_avg(),
    }


async def load_rag(db: Database, store: RagStore, c: Corpus) -> dict[str, Any]:
    seconds = 0.0
    size = 0
    notices: list[str] = []
    async with db.connection() as conn:
        await register_vector_async(conn)
        await conn.execute("truncate rag_chunks, rag_documents, rag_indexes cascade")
        cur = await conn.execute(
            "select indexname from pg_indexes where indexname like 'rag_chunks_hnsw_%%'"
        )
        for old in await cur.fetchall():
            await conn.execute(f"drop index {old['indexname']}")
        # Binary COPY has no tsvector dumper: let the (empty) tsv come from a default meanwhile.
        await conn.execute("alter table rag_chunks alter column tsv set default ''::tsvector")
        for tenant in TENANTS:
            index = await store.create_index(
                tenant, IndexSpec(name="kb", embedding_model=MODEL, dimension=DIM)
            )
            hnsw = f"rag_chunks_hnsw_{index.id}"
            cur = await conn.execute(
                "select indexdef from pg_indexes where indexname = %s", (hnsw,)
            )
            found = await cur.fetchone()
            assert found is not None
            await conn.execute(f"drop index {hnsw}")  # bulk load first, then build once
            rows = c.rows(tenant)
            documents = (len(rows) + 99) // 100
            await copy_rows(
                conn,
                "copy rag_documents (index_id, id, title, format, status, chunk_count)",
                ["int8", "text", "text", "text", "text", "int4"],
                (
                    (
                        index.id,
                        f"d{d}",
                        f"doc {d}",
                        "plain_text",
                        "ready",
                        min(100, len(rows) - 100 * d),
                    )
                    for d in range(documents)
                ),
            )
            await copy_rows(
                conn,
                "copy rag_chunks (index_id, document_id, position, id, text, embedding)",
                ["int8", "text", "int4", "text", "text", "vector"],
                (
                    (index.id, f"d{o // 100}", o % 100, f"c{o}", f"chunk {o}", v)
                    for o, v in zip(c.ordinal[rows].tolist(), c.vectors[rows], strict=True)
                ),
            )
            took, said = await build(conn, found["indexdef"])
            seconds += took
            notices += said
            cur = await conn.execute("select pg_relation_size(%s) as size", (hnsw,))
            got = await cur.fetchone()
            assert got is not None
            size += int(got["size"])
        await conn.execute("alter table rag_chunks alter column tsv drop default")
        await conn.execute("vacuum analyze rag_chunks")
        cur = await conn.execute("select pg_table_size('rag_chunks') as heap")
        heap = await cur.fetchone()
        assert heap is not None
    return {
        "build_s": seconds,
        "index_bytes": size,
        "heap_bytes": int(heap["heap"]),
        "notices": notices,
        "load": load_avg(),
    }


async def timed(
    queries: np.ndarray,
    prepared: Prepared,
    ours: Callable[[], Awaitable[set[int]]],
    bare: Callable[[list[float]], Awaitable[set[int]]],
    truth: Callable[[np.ndarray], set[int]],
) -> dict[str, float]:
    a: list[float] = []
    b: list[float] = []
    ra: list[float] = []
    rb: list[float] = []
    for i, q in enumerate(queries):
        expected = truth(q)
        prepared.next = q.tolist()
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            got = await ours() if side == 0 else await bare(prepared.next)
            ms = (time.perf_counter() - t0) * 1000
            (a if side == 0 else b).append(ms)
            (ra if side == 0 else rb).append(len(got & expected) / K)
    return {
        "ours_p50": statistics.median(a),
        "bare_p50": statistics.median(b),
        "ours_recall": float(np.mean(ra)),
        "bare_recall": float(np.mean(rb)),
    }


def report(name: str, r: dict[str, float]) -> None:
    print(
        f"    {name:34} p50 {r['ours_p50']:6.1f} ms  bare SQL {r['bare_p50']:6.1f} ms"
        f" ({r['ours_p50'] / r['bare_p50']:.2f}x)   recall@10 {r['ours_recall']:.3f}"
        f" (bare {r['bare_recall']:.3f})   [{load_avg()}]",
        flush=True,
    )


async def plan(conn: Any, sql: str, params: Any, analyze: bool = False) -> str:
    """The scans of `sql`'s plan (with `analyze`: only those that ran)."""
    cur = await conn.execute(f"explain (format json, analyze {analyze}) " + sql, params)
    row = await cur.fetchone()
    node = row[0][0]["Plan"]
    names = []
    stack = [node]
    while stack:
        n = stack.pop()
        if analyze and not n.get("Actual Loops"):
            continue
        if "Index Name" in n:
            names.append(n["Index Name"])
        elif n.get("Node Type") == "Seq Scan":
            names.append("seq scan")
        stack.extend(n.get("Plans", []))
    return ", ".join(names)


async def measure(url: str, db: Database, c: Corpus, queries: int, ef: list[int]) -> None:
    prepared = Prepared()
    recall = MessageRecall(db, prepared, PostgresMemoryStorage(db))
    retriever = Retriever(db, RagStore(db), PreparedEmbedders(prepared))
    qs = draw(queries, np.random.default_rng(c.n + 1))
    bare_conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await register_vector_async(bare_conn)

    # Memory: resource scope of big and small, thread scope of big.
    # (tenant, scope, owner number, whether to force the HNSW branch of the real code)
    cases = [("big", RecallScope.RESOURCE, 0, False), ("big", RecallScope.RESOURCE, 0, True)]
    cases += [("small", RecallScope.RESOURCE, 0, False), ("big", RecallScope.THREAD, 0, False)]
    exact_rows, ef_search = recall_module.EXACT_SCOPE_ROWS, recall_module.HNSW_EF_SEARCH
    await prewarm(db, f"{SPACE}_hnsw", f"{SPACE}_by_resource", f"{SPACE}_by_thread")
    for tenant, scope, owner, forced in cases:
        rows = c.rows(tenant)
        column = "resource_id" if scope is RecallScope.RESOURCE else "thread_id"
        number = c.resource if scope is RecallScope.RESOURCE else c.thread
        mine = rows[number[rows] == owner]
        label = f"r{owner}" if scope is RecallScope.RESOURCE else f"t{owner}"
        query = RecallQuery(
            query="q",
            scope=scope,
            resource_id=label if scope is RecallScope.RESOURCE else "",
            thread_id=label if scope is RecallScope.THREAD else "",
            top_k=K,
        )
        sql = (
            f"select message_id from {SPACE} where tenant_id = %s and {column} = %s"
            " order by embedding <=> %s::vector limit 10"
        )

        async def ours(
            tenant: str = tenant, query: RecallQuery = query, forced: bool = forced
        ) -> set[int]:
            recall_module.EXACT_SCOPE_ROWS = 0 if forced else exact_rows
            hits = await recall.search(tenant, query)
            return {int(h.message.id[1:]) for h in hits}

        recall_module.EXACT_SCOPE_ROWS = 0 if forced else exact_rows
        ran = await plan(
            bare_conn,
            recall_module._SEARCH.format(space=SPACE, column=column),
            {
                "v": vector_literal(qs[0].tolist()),
                "t": tenant,
                "owner": label,
                "k": K,
                "min": 0.0,
                "exact": recall_module.EXACT_SCOPE_ROWS,
            },
            analyze=True,
        )
        path = ("hnsw" if forced or len(mine) > exact_rows else "exact") + f": {ran}"

        for setting in ef:
            recall_module.HNSW_EF_SEARCH = setting  # ours at the bare SQL's ef_search
            # The floor: session settings sent once, then one statement per query.
            await bare_conn.execute(
                "select set_config('hnsw.iterative_scan', 'relaxed_order', false),"
                " set_config('hnsw.ef_search', %s, false)",
                (str(setting),),
            )

            async def bare(
                v: list[float], tenant: str = tenant, label: str = label, sql: str = sql
            ) -> set[int]:
                cur = await bare_conn.execute(sql, (tenant, label, vector_literal(v)))
                return {int(r[0][1:]) for r in await cur.fetchall()}

            via = await plan(bare_conn, sql, (tenant, label, vector_literal(qs[0].tolist())))
            r = await timed(qs, prepared, ours, bare, partial(c.exact, mine))
            report(
                f"memory {tenant} {scope.value} ({len(mine)} rows) ours {path}"
                f" / bare ef {setting} [{via}]",
                r,
            )

    recall_module.EXACT_SCOPE_ROWS = exact_rows
    recall_module.HNSW_EF_SEARCH = ef_search
    # RAG: the tenant's index (its own partial HNSW), top 10.
    for tenant in MEASURED:
        index = await retriever.store.get_index(tenant, "kb")
        await prewarm(db, f"rag_chunks_hnsw_{index.id}")
        rows = c.rows(tenant)
        sql = (
            f"select id from rag_chunks c where c.index_id = {index.id} order by"
            f" (c.embedding::vector({DIM})) <=> %s::vector({DIM}) limit 10"
        )

        async def rag(tenant: str = tenant) -> set[int]:
            found, _ = await retriever.search(tenant, "kb", "q", RetrievalOptions(top_k=K))
            return {int(s.chunk.id[1:]) for s in found}

        for setting in ef:
            retriever.ef_search = setting

            await bare_conn.execute(
                "select set_config('hnsw.iterative_scan', 'off', false),"
                " set_config('hnsw.ef_search', %s, false)",
                (str(setting),),
            )

            async def bare_rag(v: list[float], sql: str = sql) -> set[int]:
                cur = await bare_conn.execute(sql, (vector_literal(v),))
                return {int(r[0][1:]) for r in await cur.fetchall()}

            via = await plan(bare_conn, sql, (vector_literal(qs[0].tolist()),))
            r = await timed(qs, prepared, rag, bare_rag, partial(c.exact, rows))
            report(f"rag {tenant} ({len(rows)} rows) ef {setting} [{via}]", r)
    await bare_conn.close()


async def loaded(db: Database, n: int) -> bool:
    """Whether both tables hold the N vectors of a previous run, indexed."""
    async with db.connection() as conn:
        cur = await conn.execute(
            f"select (select count(*) from {SPACE}) as m, (select count(*) from rag_chunks) as r,"
            " (select count(*) from pg_indexes where indexname like 'rag_chunks_hnsw_%%') as i"
        )
        row = await cur.fetchone()
    return row is not None and row["m"] == row["r"] == n and row["i"] == len(TENANTS)


async def run(url: str, pgdata: Path, args: argparse.Namespace) -> None:
    sizes = [int(x) for x in args.sizes.split(",")]
    ef = [int(x) for x in args.ef.split(",")]
    db = Database(url, max_size=4)
    await db.open()
    await apply_migrations(db)
    await MessageRecall(db, Prepared(), PostgresMemoryStorage(db)).ensure_space()
    async with db.connection() as conn:
        await conn.execute("create extension if not exists pg_prewarm")
        cur = await conn.execute(
            "select current_setting('shared_buffers') sb, current_setting('work_mem') wm,"
            " current_setting('effective_cache_size') ecs,"
            " current_setting('maintenance_work_mem') mwm,"
            " current_setting('max_parallel_maintenance_workers') pmw,"
            " (select extversion from pg_extension where extname = 'vector') pgv, version() v"
        )
        s = await cur.fetchone()
        assert s is not None
    print(
        f"{s['v'].split(',')[0]}, pgvector {s['pgv']}; shared_buffers {s['sb']}, work_mem"
        f" {s['wm']}, effective_cache_size {s['ecs']}, maintenance_work_mem {s['mwm']},"
        f" max_parallel_maintenance_workers {s['pmw']}; {os.cpu_count()} cores,"
        f" {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB",
        flush=True,
    )
    store = RagStore(db)
    priority = Priority(pgdata)
    for n in sizes:
        c = Corpus(n)
        print(f"N = {n} vectors per table (big {c.counts[0]}, small {c.counts[1]})", flush=True)
        await priority.set(db, priority.base)
        if args.reuse and await loaded(db, n):
            print("  loaded and indexed by a previous run: reused", flush=True)
            await priority.set(db, args.measure_nice)
            await measure(url, db, c, args.queries, ef)
            continue
        for name, load in (
            ("memory", partial(load_memory, db, c)),
            ("rag", partial(load_rag, db, store, c)),
        ):
            t0 = time.perf_counter()
            r = await load()
            what = "HNSW build" if name == "memory" else "10 partial HNSW builds"
            print(
                f"  {name}: loaded + indexed in {time.perf_counter() - t0:.0f}s; {what}"
                f" {r['build_s']:.0f}s, index {r['index_bytes'] / 2**20:.0f} MiB, table"
                f" {r['heap_bytes'] / 2**20:.0f} MiB  [{r['load']}]",
                flush=True,
            )
            for notice in sorted(set(r["notices"])):
                print(f"    build notice: {notice}", flush=True)
        await priority.set(db, args.measure_nice)
        await measure(url, db, c, args.queries, ef)
    await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250000,500000,1000000")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--ef", default="200", help="hnsw.ef_search values of the bare SQL")
    parser.add_argument(
        "--pg-settings", default="", help="embedded Postgres settings, name=value,... (sized)"
    )
    parser.add_argument("--measure-nice", type=int, default=0, help="niceness of measurements")
    parser.add_argument("--home", help="keep the embedded Postgres here (default: a temp dir)")
    parser.add_argument(
        "--reuse", action="store_true", help="measure what --home holds when it has N vectors"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        stack = EmbeddedStack(
            Path(args.home or tmp),
            redis=False,
            temporal=False,
            postgres_settings=parse_settings(args.pg_settings),
        )
        endpoints = stack.start()
        try:
            asyncio.run(run(endpoints.database_url or "", stack.pgdata, args))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
