"""Search: vector top-k (HNSW) under metadata filters, hybrid reciprocal rank fusion with
Postgres full text, optional rerank, minimum relevance."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from loomwork.errors import FailedPrecondition, InvalidArgument, Violations
from loomwork.llm.chat import ChatModel, ChatUsage
from loomwork.rag.code_tokens import code_lexemes
from loomwork.rag.embedders import Embedders
from loomwork.rag.filters import CHUNK_FIELDS, compile_filter, validate_filter
from loomwork.rag.models import (
    Chunk,
    Index,
    Metric,
    RerankMethod,
    RetrievalOptions,
    ScoredChunk,
    ScoreDetails,
    SearchMode,
)
from loomwork.rag.rerank import keep_exact_matches, llm_rerank, signal_rerank
from loomwork.rag.store import OPERATOR, RagStore, vector_literal
from loomwork.storage.database import Database
from loomwork.storage.hnsw import use_hnsw
from loomwork.telemetry import TENANT, operation

__all__ = ["MAX_QUERY_CHARS", "Retriever", "validate_retrieval"]

MAX_QUERY_CHARS = 8000
#: BM25's term-frequency saturation and length normalization (the usual values).
BM25_K1 = 1.2
BM25_B = 0.75
#: Fusion defaults (HybridOptions left 0), measured with bench/rag_eval.py --sweep on the
#: PostgreSQL docs set (42 questions, 944 chunks; bench/RESULTS.md): hybrid recall@1/@5
#: 0.45/0.90 at vector 0.3, full text 0.7, k 10 (vector alone 0.38/0.79, full text alone
#: 0.48/0.83); k 60 with 0.5/0.5, the textbook setting, gave 0.40/0.86. Full text weighs
#: more because its misses are the vector's too, not the other way round.
DEFAULT_VECTOR_WEIGHT = 0.3
DEFAULT_LEXICAL_WEIGHT = 0.7
DEFAULT_RRF_K = 10
_DOC_COLUMNS = (
    "coalesce(nullif(d.title, ''), nullif(d.file_name, ''), d.id) as doc_title,"
    " d.source_uri as doc_uri"
)
_CHUNK_COLUMNS = """
    c.id, c.document_id, c.position, c.text, c.page, c.end_page, c.heading_path,
    c.start_char, c.end_char, c.token_count, c.metadata
"""


def validate_retrieval(options: RetrievalOptions, prefix: str = "retrieval") -> RetrievalOptions:
    """Options with defaults resolved; InvalidArgument naming each bad field."""
    problems = Violations()
    top_k = options.top_k or 10
    if not 1 <= top_k <= 100:
        problems.add(f"{prefix}.top_k", "must be 1..100 (0 means 10)")
    if not 0.0 <= options.min_score <= 1.0:
        problems.add(f"{prefix}.min_score", "must be between 0 and 1")
    hybrid = options.hybrid
    rrf_k = hybrid.rrf_k or DEFAULT_RRF_K
    if not 1 <= rrf_k <= 1000:
        problems.add(f"{prefix}.hybrid.rrf_k", f"must be 1..1000 (0 means {DEFAULT_RRF_K})")
    if hybrid.vector_weight < 0:
        problems.add(f"{prefix}.hybrid.vector_weight", "must be 0 or more")
    if hybrid.lexical_weight < 0:
        problems.add(f"{prefix}.hybrid.lexical_weight", "must be 0 or more")
    if hybrid.candidates and not top_k <= hybrid.candidates <= 1000:
        problems.add(f"{prefix}.hybrid.candidates", "must be top_k..1000 (0 means the default)")
    rerank = options.rerank
    for name in ("semantic_weight", "lexical_weight", "position_weight"):
        if getattr(rerank, name) < 0:
            problems.add(f"{prefix}.rerank.{name}", "must be 0 or more")
    if rerank.candidates and not top_k <= rerank.candidates <= 200:
        problems.add(f"{prefix}.rerank.candidates", "must be top_k..200 (0 means the default)")
    if len(rerank.model) > 256:
        problems.add(f"{prefix}.rerank.model", "at most 256 characters")
    problems.raise_if_any()
    validate_filter(options.filter, CHUNK_FIELDS, f"{prefix}.filter")
    total = hybrid.vector_weight + hybrid.lexical_weight
    vw, lw = (
        (DEFAULT_VECTOR_WEIGHT, DEFAULT_LEXICAL_WEIGHT)
        if total <= 0
        else (hybrid.vector_weight / total, hybrid.lexical_weight / total)
    )
    return options.model_copy(
        update={
            "top_k": top_k,
            "hybrid": hybrid.model_copy(
                update={
                    "rrf_k": rrf_k,
                    "vector_weight": vw,
                    "lexical_weight": lw,
                    "candidates": hybrid.candidates or max(4 * top_k, 40),
                }
            ),
            "rerank": rerank.model_copy(
                update={"candidates": rerank.candidates or max(3 * top_k, 20)}
            ),
        }
    )


def _similarity(metric: Metric, distance: float) -> float:
    if metric is Metric.COSINE:
        value = 1.0 - distance
    elif metric is Metric.L2:
        value = 1.0 / (1.0 + distance)
    else:
        value = -distance  # `<#>` is the negative inner product
    return max(0.0, min(1.0, value))


def _named(sql: str, params: list[Any]) -> tuple[str, dict[str, Any]]:
    """`sql` with its positional `%s` placeholders renamed `%(f0)s`, `%(f1)s`, ..."""
    pieces = sql.split("%s")
    if len(pieces) - 1 != len(params):
        raise ValueError("placeholders and parameters differ")
    out = pieces[0]
    for i, piece in enumerate(pieces[1:]):
        out += f"%(f{i})s" + piece
    return out, {f"f{i}": value for i, value in enumerate(params)}


def _lexeme(term: str) -> str:
    """A normalized lexeme as a tsquery operand."""
    return "'" + term.replace("\\", "\\\\").replace("'", "''") + "'"


def _chunk(row: dict[str, Any]) -> Chunk:
    # Rows of our own table: trusted, so built without validation (it is the hot path).
    return Chunk.model_construct(
        id=row["id"],
        document_id=row["document_id"],
        position=row["position"],
        text=row["text"],
        page=row["page"],
        end_page=row["end_page"],
        heading_path=list(row["heading_path"] or []),
        start_char=row["start_char"],
        end_char=row["end_char"],
        token_count=row["token_count"],
        metadata=row["metadata"] or {},
    )


class Retriever:
    """Answers searches over one tenant's index."""

    def __init__(
        self,
        db: Database,
        store: RagStore,
        embedders: Embedders,
        chat_model: Callable[[str], ChatModel] | None = None,
        default_chat_model: str = "",
    ) -> None:
        self.db = db
        self.store = store
        self.embedders = embedders
        self.chat_model = chat_model
        self.default_chat_model = default_chat_model
        #: HNSW candidate list per search (at least 2 * the rows asked for); see bench/rag.py.
        self.ef_search = 200

    async def search(
        self, tenant: str, index_name: str, query: str, options: RetrievalOptions
    ) -> tuple[list[ScoredChunk], ChatUsage]:
        """The best `top_k` chunks (score >= `min_score`), best first, and LLM rerank usage."""
        with operation("retrieval", {TENANT: tenant, "loomwork.rag.index": index_name}) as span:
            results, usage = await self._search(tenant, index_name, query, options)
            span.set_attribute("loomwork.rag.results", len(results))
            return results, usage

    async def _search(
        self, tenant: str, index_name: str, query: str, options: RetrievalOptions
    ) -> tuple[list[ScoredChunk], ChatUsage]:
        if not query.strip():
            raise InvalidArgument.field("query", "is required")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidArgument.field("query", f"at most {MAX_QUERY_CHARS} characters")
        options = validate_retrieval(options)
        index = await self.store.get_index(tenant, index_name, counts=False)
        embedder = await self.embedders.get(index.embedding_model, index.dimension)
        [vector] = await embedder.embed([query])
        if len(vector) != index.dimension:  # the endpoint ignored the dimension asked for
            raise FailedPrecondition(
                f"index {index_name!r} holds {index.dimension}-dimensional vectors; "
                f"{index.embedding_model} made {len(vector)}"
            )
        reranking = options.rerank.method is not RerankMethod.NONE
        wanted = options.rerank.candidates if reranking else options.top_k
        if options.mode is SearchMode.HYBRID:
            results = await self._hybrid(index, query, vector, options, max(wanted, options.top_k))
        else:
            results = await self._vector(index, vector, options, wanted)
        usage = ChatUsage()
        if reranking and results:
            await self._fill_vector_scores(index, vector, results)
            first_stage = results
            if options.rerank.method is RerankMethod.SIGNALS:
                results = signal_rerank(query, results, options.rerank)
            else:
                if self.chat_model is None:
                    raise InvalidArgument.field("retrieval.rerank.method", "no chat model here")
                model = self.chat_model(options.rerank.model or self.default_chat_model)
                try:
                    results, usage = await llm_rerank(model, query, results)
                finally:
                    await model.aclose()
            results = keep_exact_matches(query, first_stage, results, options.top_k)
        results = [r for r in results if r.score >= options.min_score]
        return results[: options.top_k], usage

    async def _vector_rows(
        self, index: Index, vector: list[float], options: RetrievalOptions, limit: int
    ) -> list[dict[str, Any]]:
        params: list[Any] = []
        where = compile_filter(options.filter, CHUNK_FIELDS, params)
        dim, op = int(index.dimension), OPERATOR[index.metric]
        literal = vector_literal(vector)
        ef_search = min(1000, max(self.ef_search, 2 * limit))
        # The vector is bound once (named, used twice); the filter's values by name too.
        named, values = _named(where, params)
        values["v"] = literal
        # Filtered HNSW scans keep going until enough rows pass the filter (pgvector 0.8);
        # unfiltered ones need no iterative scan (it costs ~10%). ef_search trades speed for
        # recall. Both are session settings, set only when the pooled connection differs.
        wanted = (ef_search, "relaxed_order" if options.filter is not None else "off")
        async with self.db.connection() as conn:
            await use_hnsw(conn, *wanted)
            cur = await conn.execute(
                f"""
                select hits.*, {_DOC_COLUMNS} from (
                    select {_CHUNK_COLUMNS},
                        (c.embedding::vector({dim})) {op} %(v)s::vector({dim}) as distance
                    from rag_chunks c
                    where c.index_id = {int(index.id)} and {named}
                    order by (c.embedding::vector({dim})) {op} %(v)s::vector({dim})
                    limit {int(limit)}
                ) hits
                join rag_documents d on d.index_id = {int(index.id)} and d.id = hits.document_id
                order by distance
                """,
                values,
            )
            return list(await cur.fetchall())

    async def _scored(
        self, index: Index, rows: list[dict[str, Any]], details: list[ScoreDetails]
    ) -> list[ScoredChunk]:
        out = []
        for row, detail in zip(rows, details, strict=True):
            title, uri = row["doc_title"], row["doc_uri"]
            score = detail.fusion_score or detail.vector_score
            out.append(
                ScoredChunk.model_construct(
                    chunk=_chunk(row), score=score, details=detail, title=title, source_uri=uri
                )
            )
        return out

    async def _vector(
        self, index: Index, vector: list[float], options: RetrievalOptions, limit: int
    ) -> list[ScoredChunk]:
        rows = await self._vector_rows(index, vector, options, limit)
        details = [
            ScoreDetails(
                vector_score=_similarity(index.metric, float(r["distance"])), vector_rank=i + 1
            )
            for i, r in enumerate(rows)
        ]
        return await self._scored(index, rows, details)

    async def _lexical_rows(
        self, index: Index, query: str, options: RetrievalOptions, limit: int
    ) -> list[dict[str, Any]]:
        """Chunks matching any query term, ranked by BM25 (rare terms such as error codes
        weigh most), then by `ts_rank_cd`. The terms are the query's English lexemes and
        its code tokens (`code_tokens.py`: `pg_dump`, `--clean`, `~/.pgpass` kept whole).
        BM25 measured better than the sum of the IDFs of the terms a chunk holds: full text
        alone 0.48/0.83 against 0.36/0.81 recall@1/@5 (bench/RESULTS.md)."""
        config = index.text_search_config
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""
                select tsvector_to_array(to_tsvector(%s::regconfig, %s)) as words,
                    (select coalesce(sum(chunk_count), 0) from rag_documents
                     where index_id = {int(index.id)}) as n
                """,
                (config, query),
            )
            row = await cur.fetchone()
            assert row is not None
            n = row["n"]
            terms = list(dict.fromkeys([*row["words"], *code_lexemes(query, lowered=False)]))
            if not terms:
                return []
            cur = await conn.execute(
                f"""
                select q.i, (
                    select count(*) from rag_chunks c
                    where c.index_id = {int(index.id)} and c.tsv @@ q.lexeme::tsquery
                ) as df
                from unnest(%s::text[]) with ordinality as q(lexeme, i)
                """,
                ([_lexeme(t) for t in terms],),
            )
            df = {int(r["i"]) - 1: int(r["df"]) for r in await cur.fetchall()}
            weights = [
                (term, math.log(1 + (n - df[i] + 0.5) / (df[i] + 0.5)))
                for i, term in enumerate(terms)
                if df.get(i, 0) > 0
            ]
            if not weights:
                return []
            return await self._bm25_rows(conn, index, weights, options, limit)

    async def _bm25_rows(
        self,
        conn: Any,
        index: Index,
        weights: list[tuple[str, float]],
        options: RetrievalOptions,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Chunks matching any of the weighted terms, by BM25: each term's IDF times its
        saturated frequency in the chunk (a code token's is 1), shorter chunks favoured."""
        params: list[Any] = [
            " | ".join(_lexeme(term) for term, _ in weights),
            [term for term, _ in weights],
            [weight for _, weight in weights],
        ]
        where = compile_filter(options.filter, CHUNK_FIELDS, params)
        k1, b = BM25_K1, BM25_B
        cur = await conn.execute(
            f"""
            with avgdl as (
                select greatest(avg(token_count), 1) as v from rag_chunks
                where index_id = {int(index.id)}
            )
            select hits.*, {_DOC_COLUMNS} from (
                select {_CHUNK_COLUMNS}, s.score as bm25, ts_rank_cd(c.tsv, qq.q) as rank
                from rag_chunks c cross join (select %s::tsquery as q) qq
                cross join lateral (
                    select coalesce(sum(w.weight * (u.tf * {k1 + 1})
                        / (u.tf + {k1} * ({1 - b} + {b} * c.token_count / (select v from avgdl)))
                    ), 0) as score
                    from (
                        select lexeme, coalesce(array_length(positions, 1), 1) as tf
                        from unnest(c.tsv)
                    ) u
                    join unnest(%s::text[], %s::float8[]) as w(term, weight)
                        on w.term = u.lexeme
                ) s
                where c.index_id = {int(index.id)} and c.tsv @@ qq.q and {where}
            ) hits
            join rag_documents d on d.index_id = {int(index.id)} and d.id = hits.document_id
            order by bm25 desc, rank desc, hits.document_id, hits.position
            limit {int(limit)}
            """,
            params,
        )
        return list(await cur.fetchall())

    async def _hybrid(
        self,
        index: Index,
        query: str,
        vector: list[float],
        options: RetrievalOptions,
        wanted: int,
    ) -> list[ScoredChunk]:
        hybrid = options.hybrid
        pool = max(hybrid.candidates, wanted)
        vector_rows = await self._vector_rows(index, vector, options, pool)
        lexical_rows = await self._lexical_rows(index, query, options, pool)
        k = hybrid.rrf_k
        fused: dict[str, tuple[dict[str, Any], ScoreDetails]] = {}
        for rank, row in enumerate(vector_rows, start=1):
            detail = ScoreDetails(
                vector_score=_similarity(index.metric, float(row["distance"])), vector_rank=rank
            )
            fused[row["id"]] = (row, detail)
        for rank, row in enumerate(lexical_rows, start=1):
            _, detail = fused.setdefault(row["id"], (row, ScoreDetails()))
            detail.lexical_score = float(row["rank"])
            detail.lexical_rank = rank
        for _, detail in fused.values():
            raw = 0.0
            if detail.vector_rank:
                raw += hybrid.vector_weight / (k + detail.vector_rank)
            if detail.lexical_rank:
                raw += hybrid.lexical_weight / (k + detail.lexical_rank)
            detail.fusion_score = min(1.0, raw * (k + 1))
        ordered = sorted(
            fused.values(),
            key=lambda item: (-item[1].fusion_score, item[0]["document_id"], item[0]["position"]),
        )[:wanted]
        return await self._scored(index, [r for r, _ in ordered], [d for _, d in ordered])

    async def _fill_vector_scores(
        self, index: Index, vector: list[float], results: list[ScoredChunk]
    ) -> None:
        missing = [r for r in results if not r.details.vector_rank]
        if not missing:
            return
        dim, op = int(index.dimension), OPERATOR[index.metric]
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""
                select id, (embedding::vector({dim})) {op} %s::vector({dim}) as distance
                from rag_chunks where index_id = %s and id = any(%s)
                """,
                (vector_literal(vector), index.id, [r.chunk.id for r in missing]),
            )
            distances = {row["id"]: float(row["distance"]) for row in await cur.fetchall()}
        for r in missing:
            if r.chunk.id in distances:
                r.details.vector_score = _similarity(index.metric, distances[r.chunk.id])
