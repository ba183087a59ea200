"""An agent's guardrail processors in its model steps (loomwork.guardrails): built for a
step, and what a step that tripped one answers."""

from __future__ import annotations

from collections.abc import Callable

from loomwork.agents.definitions import AgentDefinition
from loomwork.agents.events import RunBlocked
from loomwork.agents.payloads import StepOutput
from loomwork.agents.run_models import AgentRunRequest, Blocked
from loomwork.guardrails.custom import ProcessorRegistry
from loomwork.guardrails.pipeline import Guardrails, build_guardrails
from loomwork.guardrails.processors import ProcessorContext, Tripped, UsageSink
from loomwork.llm.chat import ChatModel

NO_GUARDRAILS = Guardrails()


def step_guardrails(
    agent: AgentDefinition,
    request: AgentRunRequest,
    step: int,
    processors: ProcessorRegistry | None,
    *,
    model: str,
    chat_model: Callable[[str], ChatModel],
    record_usage: UsageSink | None = None,
) -> tuple[Guardrails, ProcessorContext]:
    """The agent's processors for one step (model-based ones ask `model` unless they name
    their own), and the context they are called with."""
    ctx = ProcessorContext(
        tenant=request.tenant,
        run_id=request.run_id,
        agent_name=agent.name,
        stage="input",
        step=step,
        record_usage=record_usage,
    )
    if not agent.input_processors and not agent.output_processors:
        return NO_GUARDRAILS, ctx
    rails = build_guardrails(
        agent.input_processors,
        agent.output_processors,
        processors,
        default_model=model,
        chat_model=chat_model,
    )
    return rails, ctx


def blocked_step(step: int, tripped: Tripped) -> tuple[StepOutput, RunBlocked]:
    """The answer of a step a processor stopped, and the event that says so."""
    blocked = Blocked(
        processor=tripped.processor, reason=tripped.reason, stage=tripped.stage, step=step
    )
    output = StepOutput(finish_reason="content_filter", blocked=blocked)
    return output, RunBlocked(step=step, blocked=blocked)
