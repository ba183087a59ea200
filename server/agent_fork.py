"""What ForkRun reads of an agent run: its request and its model steps, from its Temporal
history (each model step's activity input is the conversation the model saw, its result the
model's answer), so runs recorded before ForkRun existed can be forked too."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from temporalio.api.common.v1 import Payloads
from temporalio.client import WorkflowHandle
from temporalio.converter import DataConverter
from temporalio.service import RPCError, RPCStatusCode

from loomwork.agents.fork import RecordedStep
from loomwork.agents.payloads import FirstStep, StepInput, StepOutput
from loomwork.agents.run_models import AgentRunRequest
from loomwork.errors import NotFound, Unavailable
from workflows.agent_run import MODEL_STEP
from workflows.first_step import START_AND_STEP


class RecordedRun(BaseModel):
    """An agent run as its history has it: how it was asked for, and its model steps."""

    request: AgentRunRequest
    steps: list[RecordedStep]


async def _decode(converter: DataConverter, payloads: Payloads, kind: type[Any]) -> Any:
    [value] = await converter.decode(payloads.payloads, [kind])
    return value


async def recorded_run(
    handle: WorkflowHandle[Any, Any], converter: DataConverter, run_id: str
) -> RecordedRun:
    """The run's request and model steps (a step's output None until it finished)."""
    request: AgentRunRequest | None = None
    # The model steps' activities by their scheduled event: (activity, step number).
    scheduled: dict[int, tuple[str, int]] = {}
    steps: dict[int, RecordedStep] = {}
    try:
        async for event in handle.fetch_history_events():
            if event.HasField("workflow_execution_started_event_attributes"):
                started = event.workflow_execution_started_event_attributes
                request = await _decode(converter, started.input, AgentRunRequest)
            elif event.HasField("activity_task_scheduled_event_attributes"):
                attributes = event.activity_task_scheduled_event_attributes
                name = attributes.activity_type.name
                if name == MODEL_STEP:
                    step: StepInput = await _decode(converter, attributes.input, StepInput)
                    steps[step.step] = RecordedStep(
                        step=step.step, agent_name=step.agent.name, conversation=step.conversation
                    )
                    scheduled[event.event_id] = (name, step.step)
                elif name == START_AND_STEP:
                    begun: AgentRunRequest = await _decode(
                        converter, attributes.input, AgentRunRequest
                    )
                    scheduled[event.event_id] = (name, begun.first_step)
            elif event.HasField("activity_task_completed_event_attributes"):
                completed = event.activity_task_completed_event_attributes
                name, number = scheduled.get(completed.scheduled_event_id, ("", 0))
                if name == START_AND_STEP:  # the conversation is the plan's
                    first: FirstStep = await _decode(converter, completed.result, FirstStep)
                    steps[number] = RecordedStep(
                        step=number,
                        agent_name=first.plan.agent.name,
                        conversation=first.plan.conversation,
                        output=first.output,
                    )
                elif name == MODEL_STEP:
                    output = await _decode(converter, completed.result, StepOutput)
                    steps[number] = steps[number].model_copy(update={"output": output})
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise NotFound(f"run {run_id!r} not found") from error
        raise Unavailable(f"Temporal: {error.message}") from error
    if request is None:
        raise NotFound(f"run {run_id!r} not found")
    return RecordedRun(request=request, steps=sorted(steps.values(), key=lambda s: s.step))
