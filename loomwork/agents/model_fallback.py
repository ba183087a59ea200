"""Model fallback: an agent's steps call its model, and once a step's calls ran out of
retries on a retryable error (429, 5xx, timeout) the step goes on with the next of the
agent's `fallback_models`; the run keeps the model that answered for its later steps."""

from __future__ import annotations

from loomwork.agents.definitions import AgentDefinition

# The errors (their type names, as Temporal reports them) a step falls back on.
FALLBACK_ERRORS = frozenset({"ModelRateLimited", "ModelUnavailable"})


def next_model(agent: AgentDefinition, model: str, default_model: str) -> str:
    """The model a step goes on with once its calls to `model` ran out of retries; "" when
    none is left (or `model` is none of the agent's)."""
    models = agent.models(default_model)
    if model not in models:
        return ""
    following = models.index(model) + 1
    return models[following] if following < len(models) else ""
