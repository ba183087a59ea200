"""Forking an agent run: what a new run takes over from a recorded one.

A fork starts a new run at step `from_step` of the original: the model sees the conversation
the original's model saw at that step (the system message, the input, and the messages of the
steps before), and those steps are not run again (no model call, no tool call): their
recorded messages are the fork's first steps, marked reused. A fork runs on no thread: it
reads nothing from memory and writes nothing to the original's thread.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from loomwork.agents.payloads import StepOutput
from loomwork.agents.run_models import AgentFork, ReusedStep
from loomwork.errors import FailedPrecondition, InvalidArgument, Violations
from loomwork.llm.chat import ChatMessage
from loomwork.messages import NewMessage, Role


class RecordedStep(BaseModel):
    """One model step of a recorded run: the agent it ran as, what the model saw, and what
    it answered (None while the step has not finished)."""

    step: int
    agent_name: str
    conversation: list[ChatMessage]
    output: StepOutput | None = None


def _leading_system(conversation: Sequence[ChatMessage]) -> list[ChatMessage]:
    count = next(
        (i for i, m in enumerate(conversation) if m.role is not Role.SYSTEM), len(conversation)
    )
    return list(conversation[:count])


def fork_of(
    run_id: str,
    agent_name: str,
    steps: Sequence[RecordedStep],
    from_step: int,
    edited: Sequence[NewMessage] = (),
    *,
    inherited: Sequence[ReusedStep] = (),
    inherited_from: str = "",
) -> AgentFork:
    """The fork of run `run_id` (of agent `agent_name`, its model steps `steps`) at
    `from_step`: INVALID_ARGUMENT naming `from_step` when the run never started that step.
    `edited` (when not empty) replaces what the model sees after the system message. A run
    that is a fork itself passes the steps it reused (`inherited`, from `inherited_from`)."""
    by_step = {s.step: s for s in steps}
    if from_step <= len(inherited):
        raise FailedPrecondition(
            f"step {from_step} of run {run_id!r} was reused from run {inherited_from!r}, not"
            f" run: fork run {inherited_from!r} at that step instead"
        )
    at = by_step.get(from_step)
    if at is None:
        ran = max(by_step, default=0)
        raise InvalidArgument.field(
            "from_step",
            f"run {run_id!r} has no step {from_step} (it started {ran} step"
            f"{'' if ran == 1 else 's'})",
        )
    if at.agent_name != agent_name:
        raise FailedPrecondition(
            f"run {run_id!r} had handed over to agent {at.agent_name!r} before step"
            f" {from_step}: a fork runs as the run's own agent, so fork it at a step before"
            " the handoff"
        )
    reused = list(inherited)
    for number in range(len(inherited) + 1, from_step):
        step, following = by_step.get(number), by_step[number + 1]
        if step is None or step.output is None or len(following.conversation) < 2:
            raise FailedPrecondition(f"run {run_id!r} has no record of its step {number}")
        reused.append(
            ReusedStep(
                step=number,
                finish_reason=step.output.finish_reason,
                # What the next step's model saw last: this step's answer and tool results.
                messages=list(following.conversation[-2:]),
                usage=step.output.usage,
            )
        )
    conversation = list(at.conversation)
    if edited:
        violations = Violations()
        for i, message in enumerate(edited):
            if message.role is Role.SYSTEM:
                violations.add(
                    f"edited_messages[{i}].role",
                    "must be user, assistant or tool (the system message stays the agent's)",
                )
        violations.raise_if_any()
        conversation = [
            *_leading_system(conversation),
            *(ChatMessage(role=m.role, parts=m.parts) for m in edited),
        ]
    return AgentFork(
        forked_from=run_id,
        from_step=from_step,
        conversation=conversation,
        reused=reused,
        edited=bool(edited),
    )
