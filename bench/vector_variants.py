"""Vector recall@1 / recall@5 of what gets embedded: chunk text alone (what ingestion embeds),
with its document title and heading path before it (contextual chunk headers), late
chunking, several vectors per chunk, other chunk sizes; and of which model embeds it.

    .venv/bin/python bench/vector_variants.py [--data bench/data/postgres-docs] [--only NAME...]
        [--models NAME...] [--lexical FILE]

Offline and exact: the set's HTML pages are extracted and chunked by the product's code
(`extract`, `chunk_document`, default options unless the variant says otherwise), embedded
by the local all-MiniLM-L6-v2 model (or each of `--models`), and each question of
`questions.json` is answered by exact cosine search over all chunks (at 944 chunks the
service's HNSW search returns the same top 5: the baseline here gives the vector line of
bench/rag_eval.py). A question is answered at k when one of the first k chunks contains
its `answer` (whitespace-insensitive); only the stored chunk text counts, never the context
added for the embedding. The baseline is the chunk text alone at the default chunking,
measured in the same run; each line prints its ratio to it. One question is 0.024.

`--models` runs the variants with each model of `bench/embed_models.py` (the product's
model first, always): their recall and embedding throughput (chunks/s of the variant, the
queries excluded) against it in the same run. `--lexical FILE` (written by
`bench/rag_eval.py --dump-lexical FILE` from the service's index, same chunks) adds hybrid
recall: each question's full-text ranking fused with the model's vector ranking exactly
as the service does by default (40 candidates from each, RRF k 10, vector weight 0.3,
full text 0.7, ties by document and position).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embed_models import MODELS, Embedder, OnnxMiniLM

from loomwork.rag.chunking import chunk_document
from loomwork.rag.extract import extract
from loomwork.rag.models import Chunk, ChunkingOptions, DocumentFormat

DATA = Path(__file__).resolve().parent / "data" / "postgres-docs"
_SPACE = re.compile(r"\s+")
Matrix = npt.NDArray[np.float32]


def squash(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


@dataclass
class Piece:
    title: str
    chunk: Chunk

    def context(self, *, title: bool = True, path: bool = True) -> str:
        """`title > heading > heading`, the title not repeated when the first heading is it."""
        parts = [self.title] if title and self.title else []
        if path:
            parts += [h for h in self.chunk.heading_path if squash(h) != squash(self.title)]
        return " > ".join(parts)


def pieces(data: Path, size: int) -> list[Piece]:
    options = ChunkingOptions(chunk_size=size, chunk_overlap=size // 10)
    out: list[Piece] = []
    for path in sorted((data / "html").glob("*.html")):
        document = extract(path.read_bytes(), DocumentFormat.UNSPECIFIED, path.name)
        for chunk in chunk_document(document, options, document_id=path.stem):
            out.append(Piece(document.title, chunk))
    return out


def windows(text: str, width: int) -> list[tuple[int, int]]:
    """Character spans of `text` cut at paragraph, line or sentence ends, each <= `width`."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in re.finditer(r"\n\n|\n|(?<=\. )", text):
        end = match.end()
        if spans and end - spans[-1][0] <= width and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end)
        elif end > start:
            spans.append((start, end))
        start = end
    if start < len(text):
        if spans and len(text) - spans[-1][0] <= width:
            spans[-1] = (spans[-1][0], len(text))
        else:
            spans.append((start, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]


class Model:
    """A model of `bench/embed_models.py`, plus (the product's model only) the token states
    late chunking pools from."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def embed(self, texts: list[str]) -> Matrix:
        return self.embedder.embed(texts)

    def late(self, prefix: str, text: str, spans: list[tuple[int, int]]) -> list[Matrix]:
        """Mean of the token states of `prefix + text` over each span of `text` (one run)."""
        if not isinstance(self.embedder, OnnxMiniLM):
            raise SystemExit("late chunking is measured with the product's model only")
        self.local = self.embedder.local
        self.local._load()
        encoding = self.local._tokenizer.encode(prefix + text)
        ids = np.array([encoding.ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if self.local._wants_token_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        states = self.local._session.run(None, feeds)[0][0]
        out = []
        for a, b in spans:
            a, b = a + len(prefix), b + len(prefix)
            rows = [i for i, (s, e) in enumerate(encoding.offsets) if e > s and s >= a and e <= b]
            vector = states[rows].mean(axis=0) if rows else np.zeros(states.shape[1])
            out.append((vector / max(float(np.linalg.norm(vector)), 1e-9)).astype(np.float32))
        return out


def hybrid_top(
    scores: npt.NDArray[np.float32], lexical: list[int], chunks: list[Piece], pool: int = 40
) -> list[int]:
    """The service's default fusion (loomwork/rag/query.py `_hybrid`): the first `pool`
    chunks of each ranking, RRF with k 10, vector weight 0.3, full text 0.7."""
    k, vector_weight, lexical_weight = 10, 0.3, 0.7
    fused: dict[int, float] = {}
    for rank, j in enumerate(np.argsort(-scores, kind="stable")[:pool], start=1):
        fused[int(j)] = vector_weight / (k + rank)
    for rank, j in enumerate(lexical[:pool], start=1):
        fused[j] = fused.get(j, 0.0) + lexical_weight / (k + rank)
    order = sorted(
        fused,
        key=lambda j: (-fused[j], chunks[j].chunk.document_id, chunks[j].chunk.position),
    )
    return order[:5]


def recall(
    questions: list[dict[str, object]],
    scores: Matrix,
    chunks: list[Piece],
    lexical: list[list[int]] | None = None,
) -> tuple[float, float]:
    """recall@1 / @5 of the vector ranking, or of its fusion with `lexical` if given."""
    at1 = at5 = 0
    for i, question in enumerate(questions):
        answer = squash(str(question["answer"]))
        if lexical is None:
            top = [int(j) for j in np.argsort(-scores[i], kind="stable")[:5]]
        else:
            top = hybrid_top(scores[i], lexical[i], chunks)
        hits = [answer in squash(chunks[j].chunk.text) for j in top]
        at1 += hits[0]
        at5 += any(hits)
    return at1 / len(questions), at5 / len(questions)


def max_over(owners: list[int], scores: Matrix, count: int) -> Matrix:
    """Per chunk, the best score of its vectors (`owners[j]`: the chunk of vector j)."""
    out = np.full((scores.shape[0], count), -2.0, dtype=np.float32)
    for j, owner in enumerate(owners):
        np.maximum(out[:, owner], scores[:, j], out=out[:, owner])
    return out


Variant = Callable[[Model, Matrix, list[Piece]], Matrix]


def single(text: Callable[[Piece], str]) -> Variant:
    def run(model: Model, queries: Matrix, chunks: list[Piece]) -> Matrix:
        return queries @ model.embed([text(p) for p in chunks]).T

    return run


def multi(width: int) -> Variant:
    """The chunk's own vector and one per window of it; a chunk scores its best vector."""

    def run(model: Model, queries: Matrix, chunks: list[Piece]) -> Matrix:
        owners, texts = [], []
        for k, piece in enumerate(chunks):
            owners.append(k)
            texts.append(piece.chunk.text)
            for a, b in windows(piece.chunk.text, width):
                owners.append(k)
                texts.append(piece.chunk.text[a:b])
        return max_over(owners, queries @ model.embed(texts).T, len(chunks))

    return run


def late(whole: bool) -> Variant:
    """Title and heading path run through the model with the chunk; the vector is the mean
    of the chunk's token states only (late chunking), or also of `width` windows of it."""

    def run(model: Model, queries: Matrix, chunks: list[Piece]) -> Matrix:
        owners, vectors = [], []
        for k, piece in enumerate(chunks):
            text = piece.chunk.text
            spans = [(0, len(text))] + ([] if whole else windows(text, 300))
            for vector in model.late(piece.context() + "\n\n", text, spans):
                owners.append(k)
                vectors.append(vector)
        return max_over(owners, queries @ np.array(vectors).T, len(chunks))

    return run


def with_context(**kind: bool) -> Callable[[Piece], str]:
    return lambda p: "\n\n".join(filter(None, [p.context(**kind), p.chunk.text]))


#: name -> (chunk size, variant); the first is the baseline.
VARIANTS: dict[str, tuple[int, Variant]] = {
    "chunk text (ingestion today)": (1000, single(lambda p: p.chunk.text)),
    "title + heading path + text": (1000, single(with_context())),
    "title + text": (1000, single(with_context(path=False))),
    "heading path + text": (1000, single(with_context(title=False))),
    "late chunking (context, pooled on text)": (1000, late(whole=True)),
    "late chunking + 300-char windows, max": (1000, late(whole=False)),
    "chunk + 300-char windows, max": (1000, multi(300)),
    "chunk + 500-char windows, max": (1000, multi(500)),
    "chunk text, size 500": (500, single(lambda p: p.chunk.text)),
    "title + heading path + text, size 500": (500, single(with_context())),
    "chunk text, size 700": (700, single(lambda p: p.chunk.text)),
    "chunk text, size 800": (800, single(lambda p: p.chunk.text)),
    "chunk text, size 1200": (1200, single(lambda p: p.chunk.text)),
    "chunk text, size 1500": (1500, single(lambda p: p.chunk.text)),
}


def lexical_ranks(
    path: Path, questions: list[dict[str, object]], chunks: list[Piece]
) -> list[list[int]]:
    """The dumped full-text rankings as indexes into `chunks` (the same default chunks)."""
    dumped = json.loads(path.read_text())
    assert dumped["questions"] == [q["q"] for q in questions], "dumped for another question set"
    where = {(p.chunk.document_id, p.chunk.position): j for j, p in enumerate(chunks)}
    return [[where[(doc, pos)] for doc, pos in ranking] for ranking in dumped["lexical"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--only", nargs="*", help="variant names (the baseline always runs)")
    parser.add_argument(
        "--models", nargs="*", default=[], choices=list(MODELS), help="models to compare"
    )
    parser.add_argument("--lexical", type=Path, help="full-text rankings: adds hybrid recall")
    args = parser.parse_args()
    questions = json.loads((args.data / "questions.json").read_text())["questions"]
    names = list(VARIANTS)
    if args.only:
        names = [names[0]] + [n for n in names[1:] if n in args.only]
    first = next(iter(MODELS))
    models = [first] + [m for m in dict.fromkeys(args.models) if m != first]
    by_size: dict[int, list[Piece]] = {}
    lexical = (
        lexical_ranks(args.lexical, questions, pieces(args.data, 1000)) if args.lexical else None
    )
    baseline = base_rate = 0.0
    print(
        f"  {len(questions)} questions; recall@1 / recall@5, exact cosine search"
        + ("; hybrid: the service's fusion with its full-text ranking" if lexical else "")
    )
    for model_name in models:
        model = Model(MODELS[model_name]())
        print(f"  model {model_name}: {model.embedder.name}", flush=True)
        queries = model.embed([str(q["q"]) for q in questions])
        for name in names:
            size, variant = VARIANTS[name]
            if name.startswith("late") and not isinstance(model.embedder, OnnxMiniLM):
                print(f"    {name:42} (the product's model only: skipped)")
                continue
            chunks = by_size.setdefault(size, pieces(args.data, size))
            started = time.perf_counter()
            scores = variant(model, queries, chunks)
            elapsed = time.perf_counter() - started
            r1, r5 = recall(questions, scores, chunks)
            baseline = baseline or r5
            rate = len(chunks) / elapsed
            base_rate = base_rate or rate
            fused = ""
            if lexical is not None and size == 1000:
                h1, h5 = recall(questions, scores, chunks, lexical)
                fused = f"  hybrid {h1:.3f} / {h5:.3f}"
            print(
                f"    {name:42} {len(chunks):5} chunks  {r1:.3f} / {r5:.3f}"
                f"  = {r5 / baseline:.2f}x baseline@5{fused}"
                f"  ({elapsed:.0f}s, {rate:.1f} chunks/s = {rate / base_rate:.2f}x)",
                flush=True,
            )


if __name__ == "__main__":
    main()
