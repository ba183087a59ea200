"""The model steps of an agent run (workflows/agent_run.py), each one activity: the first
loads the context too; each goes on with the agent's next model once a model ran out of
retries (workflows/model_fallback.py)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, TimeoutError, TimeoutType

from workflows.model_fallback import falls_back
from workflows.retries import MODEL_CALL, MODEL_HEARTBEAT_TIMEOUT

with workflow.unsafe.imports_passed_through():
    from loomwork.agents.payloads import FirstStep, StepInput, StepOutput
    from loomwork.agents.run_models import AgentRunRequest

START_AND_STEP = "agent_start_and_step"
MODEL_STEP = "agent_model_step"
# How long the first activity waits for the worker a server chose for it (a live one takes
# it within milliseconds) before it goes to the run's own task queue.
CHOSEN_WORKER_WAIT = timedelta(seconds=1)


async def run_first_step(request: AgentRunRequest) -> FirstStep:
    """Loading the context and the first model call (one activity): on the queue of the
    worker a server chose to begin it (loomwork.agents.first_step_routing) if the run names
    one, else (or once that worker did not take it in time) on the run's own; on the
    agent's next model once a model ran out of retries (workflows/model_fallback.py)."""
    attempt = request
    while True:
        chosen = attempt.first_step_queue
        try:
            return await workflow.execute_activity(
                START_AND_STEP,
                attempt,
                result_type=FirstStep,
                task_queue=chosen or None,
                schedule_to_start_timeout=CHOSEN_WORKER_WAIT if chosen else None,
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=MODEL_HEARTBEAT_TIMEOUT,
                retry_policy=MODEL_CALL,
                summary=f"model {attempt.model or attempt.agent_name}, step "
                + (
                    f"{request.first_step} (forked: the earlier steps reused)"
                    if request.fork
                    else "1 (loads the context)"
                ),
            )
        except ActivityError as error:
            if chosen and _not_taken(error):  # the step's draft, if any, is taken over there
                rerouted = {"first_step_queue": "", "first_step_rerouted": True}
                attempt = attempt.model_copy(update=rerouted)
                continue
            fallback = falls_back(error)
            if not fallback:
                raise
            attempt = attempt.model_copy(
                update={
                    "fallback_model": fallback,
                    "model": fallback,
                    "first_step_begun": False,
                    "first_step_queue": "",
                }
            )


def _not_taken(error: ActivityError) -> bool:
    """The chosen worker did not take the activity in time (gone, or too busy)."""
    cause = error.cause
    return isinstance(cause, TimeoutError) and cause.type == TimeoutType.SCHEDULE_TO_START


async def run_model_step(step: StepInput) -> StepOutput:
    """A model step after the first; on the agent's next model once a model ran out of
    retries."""
    while True:
        try:
            return await workflow.execute_activity(
                MODEL_STEP,
                step,
                result_type=StepOutput,
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=MODEL_HEARTBEAT_TIMEOUT,
                retry_policy=MODEL_CALL,
                summary=f"model {step.plan_model}, step {step.step}",
            )
        except ActivityError as error:
            fallback = falls_back(error)
            if not fallback:
                raise
            step = step.model_copy(update={"plan_model": fallback})
