"""Activities of a DSL workflow run: thin wrappers over loomwork.flows.execution."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeats import heartbeating
from loomwork.errors import InvalidArgument, LoomworkError, NotFound
from loomwork.flows.execution import (
    PublishInput,
    StepCall,
    StepFailure,
    StepOutcome,
    StepRunner,
    WorkflowEvents,
)


class WorkflowStepActivities:
    def __init__(self, runner: StepRunner, events: WorkflowEvents) -> None:
        self.runner = runner
        self.events = events

    @activity.defn(name="workflow_run_step")
    async def run_step(self, call: StepCall) -> StepOutcome:
        """One execution of one step. Failures carry the attempt number as their first detail
        and the error's class name as their type (what non_retryable_error_types names)."""
        attempt = activity.info().attempt
        try:
            # Heartbeats carry CancelRun to a step in flight (its function is cancelled).
            return await heartbeating(self.runner.run(call, attempt=attempt))
        except StepFailure as failure:
            raise ApplicationError(
                failure.message, attempt, type=failure.error_type, non_retryable=True
            ) from None
        except (InvalidArgument, NotFound) as error:
            raise ApplicationError(
                error.message, attempt, type=type(error).__name__, non_retryable=True
            ) from None
        except LoomworkError as error:
            raise ApplicationError(error.message, attempt, type=type(error).__name__) from error
        except Exception as error:
            raise ApplicationError(str(error), attempt, type=type(error).__name__) from error

    @activity.defn(name="workflow_publish")
    async def publish(self, request: PublishInput) -> int:
        """The events the workflow itself publishes; returns the last one's id."""
        return await self.events.publish(request.tenant, request.run_id, request.events)
