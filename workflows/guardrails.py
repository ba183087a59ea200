"""How an agent run ends when a guardrail processor trips (loomwork.guardrails): blocked,
with the processor's name and reason as its error."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from loomwork.agents.run_models import Blocked, RunOutcome

GUARDRAIL_TRIPPED = "GuardrailTripped"


def blocked_outcome(outcome: RunOutcome, blocked: Blocked) -> RunOutcome:
    """The outcome of a run a processor stopped: what it produced before, and why."""
    outcome.blocked = blocked
    outcome.error = f"{blocked.processor}: {blocked.reason}"
    outcome.error_type = GUARDRAIL_TRIPPED
    return outcome
