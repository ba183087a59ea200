"""The embedding provider interface and the helpers every provider shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from loomwork.errors import FailedPrecondition, InvalidArgument, Violations


class EmbeddingProvider(Protocol):
    """Turns texts into unit-length vectors of one model's space.

    `embed` batches internally, keeps the input order, returns `[]` for `[]`,
    and raises domain errors only: InvalidArgument for bad input, Unavailable
    for an endpoint that cannot be reached right now (worth retrying),
    FailedPrecondition for a misconfiguration (not worth retrying).
    """

    @property
    def model(self) -> str:
        """The model name; vectors of different models never mix in one index."""
        ...

    @property
    def dimension(self) -> int:
        """Length of every vector `embed` returns.

        An endpoint model of unknown size raises FailedPrecondition until its
        first answer; `resolve_dimension` asks it.
        """
        ...

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One L2-normalised vector per text, in input order."""
        ...


def validate_texts(texts: Sequence[object], field: str = "texts") -> None:
    """Every entry must be a non-empty string (an empty text has no meaning to embed)."""
    if isinstance(texts, str | bytes):
        raise InvalidArgument.field(field, "must be a list of strings, not a single string")
    problems = Violations()
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            problems.add(f"{field}[{i}]", f"must be a string, got {type(text).__name__}")
        elif not text:
            problems.add(f"{field}[{i}]", "must not be empty")
    problems.raise_if_any()


def l2_normalize(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Rows scaled to unit length; an all-zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


async def resolve_dimension(provider: EmbeddingProvider) -> int:
    """The provider's dimension, embedding one probe text first if it is not known yet."""
    try:
        return provider.dimension
    except FailedPrecondition:
        await provider.embed(["dimension probe"])
        return provider.dimension
