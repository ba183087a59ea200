"""Second-stage reranking: weighted signals (semantic, lexical, position) or the LLM.

Cross-encoder weights are not on PyPI, so the semantic signal is the embedding
similarity of query and chunk; the lexical signal is the share of the query's terms
(words and code tokens such as `pg_dump -Fc`) found in the chunk; the position signal is
the first-stage rank (1 for the first). Whatever the method, a passage holding every code
token of the query that the first stage ranked in the top k stays in the top k
(`keep_exact_matches`): a reranker judging meaning must not lose the exact command.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from loomwork.llm.chat import ChatMessage, ChatModel, ChatUsage
from loomwork.rag.code_tokens import code_tokens
from loomwork.rag.models import RerankOptions, ScoredChunk

__all__ = [
    "keep_exact_matches",
    "llm_rerank",
    "query_terms",
    "signal_rerank",
    "signal_weights",
]

_WORD = re.compile(r"\w+", re.UNICODE)
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "do",
        "does",
        "did",
        "can",
    ]
)


def query_terms(text: str) -> set[str]:
    """Lowercased words of `text` without common English stop words, and its code tokens
    (`code_tokens`: `--clean`, `pg_hba.conf`, as written and lowercased)."""
    words = {w for w in (m.lower() for m in _WORD.findall(text)) if w not in _STOP}
    return words | set(code_tokens(text))


def _passage(candidate: ScoredChunk) -> str:
    return " ".join([*candidate.chunk.heading_path, candidate.chunk.text])


def keep_exact_matches(
    query: str, first_stage: list[ScoredChunk], reranked: list[ScoredChunk], top_k: int
) -> list[ScoredChunk]:
    """`reranked` with every exact match that `first_stage` had in its top `top_k` back in
    the top `top_k`: each takes the place of the lowest-ranked other passage there (their
    order otherwise kept). An exact match holds every code token of the query (a query
    without any has none)."""
    wanted = set(code_tokens(query, lowered=False))
    if not wanted:
        return reranked
    exact = {c.chunk.id for c in first_stage[:top_k] if wanted <= set(code_tokens(_passage(c)))}
    head, tail = reranked[:top_k], reranked[top_k:]
    lost = [c for c in tail if c.chunk.id in exact]
    for candidate in lost:
        for i in range(len(head) - 1, -1, -1):
            if head[i].chunk.id not in exact:
                tail.insert(0, head.pop(i))
                head.append(candidate)
                tail.remove(candidate)
                break
    return head + tail


def signal_weights(options: RerankOptions) -> tuple[float, float, float]:
    """(semantic, lexical, position), normalized to sum to 1; all 0 means 0.2/0.2/0.6.

    Measured after hybrid retrieval on the PostgreSQL docs set (bench/rag_eval.py, top 5 of
    20 candidates, recall@1/@5): 0.2/0.2/0.6 gave 0.48/0.90, the first stage alone
    0.45/0.90, the former 0.5/0.3/0.2 0.40/0.88 (it demoted passages the fusion had right);
    0.3/0.2/0.5 0.43/0.90, 0.4/0.3/0.3 0.38/0.88 (bench/RESULTS.md)."""
    weights = (options.semantic_weight, options.lexical_weight, options.position_weight)
    total = sum(weights)
    if total <= 0:
        return 0.2, 0.2, 0.6
    return weights[0] / total, weights[1] / total, weights[2] / total


def signal_rerank(
    query: str, candidates: list[ScoredChunk], options: RerankOptions
) -> list[ScoredChunk]:
    """Candidates (in first-stage order, `details.vector_score` filled) rescored and sorted."""
    semantic_w, lexical_w, position_w = signal_weights(options)
    terms = query_terms(query)
    n = len(candidates)
    out: list[ScoredChunk] = []
    for rank, candidate in enumerate(candidates):
        words = query_terms(_passage(candidate))
        lexical = len(terms & words) / len(terms) if terms else 0.0
        position = 1.0 - rank / n if n else 0.0
        semantic = max(0.0, min(1.0, candidate.details.vector_score))
        score = semantic_w * semantic + lexical_w * lexical + position_w * position
        details = candidate.details.model_copy(update={"rerank_score": score})
        out.append(candidate.model_copy(update={"score": score, "details": details}))
    out.sort(key=lambda c: -c.score)
    return out


class _Scores(BaseModel):
    scores: list[float] = Field(description="Relevance 0..1 of each passage, in order")


async def llm_rerank(
    model: ChatModel, query: str, candidates: list[ScoredChunk]
) -> tuple[list[ScoredChunk], ChatUsage]:
    """The chat model scores each candidate's relevance 0..1 (one call, JSON output)."""
    if not candidates:
        return [], ChatUsage()
    passages = "\n\n".join(f"[{i + 1}] {c.chunk.text[:2000]}" for i, c in enumerate(candidates))
    result = await model.complete(
        [
            ChatMessage.system(
                "Rate how relevant each numbered passage is to the question, from 0 (not at "
                'all) to 1 (answers it). Reply with JSON {"scores": [...]}, one number per '
                "passage, in passage order."
            ),
            ChatMessage.user(f"Question: {query}\n\nPassages:\n{passages}"),
        ],
        response_format=_Scores,
        temperature=0,
    )
    try:
        scores = _Scores.model_validate_json(result.text).scores
    except ValueError:
        scores = []
    out: list[ScoredChunk] = []
    for i, candidate in enumerate(candidates):
        score = max(0.0, min(1.0, float(scores[i]))) if i < len(scores) else 0.0
        details = candidate.details.model_copy(update={"rerank_score": score})
        out.append(candidate.model_copy(update={"score": score, "details": details}))
    out.sort(key=lambda c: -c.score)
    return out, result.usage
