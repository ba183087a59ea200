"""Embedding providers: the local all-MiniLM-L6-v2 model (default) or an OpenAI endpoint."""

from __future__ import annotations

import threading

from loomwork.embeddings.local import LocalMiniLM
from loomwork.embeddings.openai_compatible import OpenAIEmbeddings
from loomwork.embeddings.provider import EmbeddingProvider, resolve_dimension

LOCAL_MODEL = LocalMiniLM.model

__all__ = [
    "LOCAL_MODEL",
    "EmbeddingProvider",
    "LocalMiniLM",
    "OpenAIEmbeddings",
    "embedding_provider",
    "resolve_dimension",
    "shared_local_model",
]

_local: LocalMiniLM | None = None
_local_lock = threading.Lock()


def shared_local_model() -> LocalMiniLM:
    """One `LocalMiniLM` per process, so the ONNX session (about 90 MB in memory) loads once."""
    global _local
    with _local_lock:
        if _local is None:
            _local = LocalMiniLM()
        return _local


def embedding_provider(
    model: str, *, base_url: str | None = None, api_key: str | None = None
) -> EmbeddingProvider:
    """The provider for `model`: the local model for "all-MiniLM-L6-v2", else an endpoint.

    `model` is typically `Settings.embedding_model`; `base_url` / `api_key`
    (`Settings.openai_base_url` / `openai_api_key`) matter only for endpoints.
    """
    if model in (LOCAL_MODEL, f"sentence-transformers/{LOCAL_MODEL}"):
        return shared_local_model()
    return OpenAIEmbeddings(model, base_url=base_url, api_key=api_key)
