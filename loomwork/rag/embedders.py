"""The embedding provider of each index's model, made once per (model, dimension)."""

from __future__ import annotations

from loomwork.embeddings import LOCAL_MODEL, embedding_provider, resolve_dimension
from loomwork.embeddings.openai_compatible import OpenAIEmbeddings
from loomwork.embeddings.provider import EmbeddingProvider
from loomwork.errors import InvalidArgument

__all__ = ["Embedders"]

_LOCAL_NAMES = (LOCAL_MODEL, f"sentence-transformers/{LOCAL_MODEL}")


class Embedders:
    """Providers by model name; `default_model` is LOOMWORK_EMBEDDING_MODEL."""

    def __init__(
        self, default_model: str, *, base_url: str | None = None, api_key: str | None = None
    ) -> None:
        self.default_model = default_model
        self.base_url = base_url
        self.api_key = api_key
        self._providers: dict[tuple[str, int], EmbeddingProvider] = {}

    async def get(self, model: str, dimension: int = 0) -> EmbeddingProvider:
        """The provider of `model` producing `dimension`-long vectors (0: native). A model
        of the endpoint whose native dimension is not known yet embeds a probe first: only
        then can a shorter `dimension` be told apart from the native one (which must not be
        asked for: older models refuse the `dimensions` parameter)."""
        model = model or self.default_model
        key = (model, dimension)
        provider = self._providers.get(key)
        if provider is None:
            provider = self._native(model)
            if dimension and model not in _LOCAL_NAMES:
                native = await resolve_dimension(provider)
                if native != dimension:
                    provider = OpenAIEmbeddings(
                        model,
                        dimension=dimension,
                        base_url=self.base_url,
                        api_key=self.api_key,
                        send_dimensions=True,
                    )
            self._providers[key] = provider
        return provider

    def _native(self, model: str) -> EmbeddingProvider:
        provider = self._providers.get((model, 0))
        if provider is None:
            provider = embedding_provider(model, base_url=self.base_url, api_key=self.api_key)
            self._providers[(model, 0)] = provider
        return provider

    async def resolve(self, model: str, dimension: int) -> tuple[str, int]:
        """(model, dimension) for a new index: InvalidArgument if the model cannot make it."""
        model = model or self.default_model
        native = await resolve_dimension(await self.get(model))
        if dimension == 0 or dimension == native:
            return model, native
        if model in _LOCAL_NAMES:
            raise InvalidArgument.field(
                "index.dimension", f"{model} makes {native}-dimensional vectors, not {dimension}"
            )
        if dimension > native:
            raise InvalidArgument.field(
                "index.dimension", f"{model} makes at most {native}-dimensional vectors"
            )
        return model, dimension
