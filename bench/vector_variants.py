"""Vector recall@1 / recall@5 of what gets embedded: chunk text alone (what ingestion embeds),
with its document title and heading path before it (contextual chunk headers), late
chunking, several vectors per chunk, other chunk sizes.

    .venv/bin/python bench/vector_variants.py [--data bench/data/postgres-docs] [--only NAME...]

Offline and exact: the set's HTML pages are extracted and chunked by the product's code
(`extract`, `chunk_document`, default options unless the variant says otherwise), embedded
by the local all-MiniLM-L6-v2 model, and each question of `questions.json` is answered by
exact cosine search over all chunks (at 944 chunks the service's HNSW search returns the
same top 5: the baseline here gives the vector line of bench/rag_eval.py). A question is
answered at k when one of the first k chunks contains its `answer` (whitespace-insensitive);
only the stored chunk text counts, never the context added for the embedding. The baseline
is the chunk text alone at the default chunking, measured in the same run; each line
prints its ratio to it. One question is 0.024.
"""

from __future__ import annotations

import argparse
import asyncio
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

from loomwork.embeddings.local import LocalMiniLM
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
    """The local model, plus the token states late chunking pools from."""

    def __init__(self) -> None:
        self.local = LocalMiniLM()

    def embed(self, texts: list[str]) -> Matrix:
        return np.array(asyncio.run(self.local.embed(texts)), dtype=np.float32)

    def late(self, prefix: str, text: str, spans: list[tuple[int, int]]) -> list[Matrix]:
        """Mean of the token states of `prefix + text` over each span of `text` (one run)."""
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


def recall(
    questions: list[dict[str, object]], scores: Matrix, chunks: list[Piece]
) -> tuple[float, float]:
    at1 = at5 = 0
    for i, question in enumerate(questions):
        answer = squash(str(question["answer"]))
        top = np.argsort(-scores[i])[:5]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--only", nargs="*", help="variant names (the baseline always runs)")
    args = parser.parse_args()
    questions = json.loads((args.data / "questions.json").read_text())["questions"]
    model = Model()
    queries = model.embed([str(q["q"]) for q in questions])
    names = list(VARIANTS)
    if args.only:
        names = [names[0]] + [n for n in names[1:] if n in args.only]
    by_size: dict[int, list[Piece]] = {}
    baseline = 0.0
    print(f"  {len(questions)} questions; recall@1 / recall@5, exact cosine search")
    for name in names:
        size, variant = VARIANTS[name]
        chunks = by_size.setdefault(size, pieces(args.data, size))
        started = time.perf_counter()
        r1, r5 = recall(questions, variant(model, queries, chunks), chunks)
        baseline = baseline or r5
        print(
            f"  {name:42} {len(chunks):5} chunks  {r1:.3f} / {r5:.3f}"
            f"  = {r5 / baseline:.2f}x baseline@5  ({time.perf_counter() - started:.0f}s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
