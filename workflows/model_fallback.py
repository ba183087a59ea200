"""Model fallback in the AgentRun workflow: a model step whose activity failed for good on a
retryable model error goes on with the next model the failure names (its one detail, set
by the step, which knows the agent's `fallback_models`)."""

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from loomwork.agents.model_fallback import FALLBACK_ERRORS

# Runs recorded before fallback models failed where they now go on (workflow.patched).
MODEL_FALLBACK = "agent-model-fallback"


def fallback_model(error: ActivityError) -> str:
    """The model to go on with after a model step's activity failed for good; "" when it
    failed for another reason or the agent has no model left."""
    cause = error.cause
    if not isinstance(cause, ApplicationError) or cause.type not in FALLBACK_ERRORS:
        return ""
    details = cause.details
    return details[0] if details and isinstance(details[0], str) else ""


def falls_back(error: ActivityError) -> str:
    """`fallback_model`, for a run that may fall back (one started, or replayed, with this
    code: the patch marks its history); "" otherwise."""
    model = fallback_model(error)
    return model if model and workflow.patched(MODEL_FALLBACK) else ""
