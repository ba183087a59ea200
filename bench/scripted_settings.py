"""The settings the agent benchmarks give their service: the embedded stack's servers, the
bench tenant, the scripted model, demo mode (the `assistant` agent)."""

from __future__ import annotations

from pathlib import Path

from loomwork.config import Settings
from server.embedded.stack import EmbeddedEndpoints


def scripted_settings(
    endpoints: EmbeddedEndpoints, model_url: str, home: Path | None = None
) -> Settings:
    """Settings for a service on `endpoints` whose model is the scripted one at `model_url`;
    `home`: LOOMWORK_HOME (else the default)."""
    settings = Settings(
        DATABASE_URL=endpoints.database_url,
        REDIS_URL=endpoints.redis_url,
        TEMPORAL_ADDRESS=endpoints.temporal_address,
        LOOMWORK_TOKENS="bench=bench:admin",
        OPENAI_BASE_URL=model_url,
        OPENAI_API_KEY="x",
        LOOMWORK_CHAT_MODEL="scripted",
        LOOMWORK_DEMO=True,  # the `assistant` agent
    )
    return settings if home is None else settings.model_copy(update={"home": home})
