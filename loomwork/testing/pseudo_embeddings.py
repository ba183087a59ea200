"""Deterministic pseudo embeddings: what the scripted model server's embeddings endpoint returns."""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re

DEFAULT_EMBEDDING_DIMENSION = 384

_WORD = re.compile(r"\w+", re.UNICODE)


@functools.lru_cache(maxsize=65536)
def _token_vector(token: str, dimension: int) -> tuple[float, ...]:
    seed = int.from_bytes(hashlib.sha256(token.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    return tuple(rng.gauss(0.0, 1.0) for _ in range(dimension))


def pseudo_embedding(text: str, dimension: int = DEFAULT_EMBEDDING_DIMENSION) -> list[float]:
    """A deterministic, L2-normalised vector for `text`.

    Hashed bag of words: each lower-cased word has a fixed pseudo-random direction and
    a text is the normalised sum of its words', so texts sharing words are close (useful
    for RAG tests) while the same text always maps to the same vector.
    """
    if dimension <= 0:
        raise ValueError("dimension must be positive")
    tokens = _WORD.findall(text.lower()) or [text]
    total = [0.0] * dimension
    for token in tokens:
        for i, value in enumerate(_token_vector(token, dimension)):
            total[i] += value
    norm = math.sqrt(sum(v * v for v in total)) or 1.0
    return [v / norm for v in total]
