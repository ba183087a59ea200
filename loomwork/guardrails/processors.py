"""What a guardrail processor is: a named check over text that passes it, rewrites it or
trips (raises `Tripwire`), and the context it is called with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from loomwork.llm.chat import ChatUsage

Stage = Literal["input", "output"]

#: Where a model-based check's tokens go: (call name, model, usage) → the run's usage ledger.
UsageSink = Callable[[str, str, ChatUsage], Awaitable[None]]


@dataclass(frozen=True)
class ProcessorContext:
    """Where a processor runs: the run, the step, and the stage. On output, `final` is
    False while the model's text streams (the text so far) and True on its final answer."""

    tenant: str
    run_id: str
    agent_name: str
    stage: Stage
    step: int
    final: bool = True
    # Model-based checks report their calls' tokens here (None: nowhere).
    record_usage: UsageSink | None = None


class Tripwire(Exception):
    """Raised by a processor to stop the run: it ends BLOCKED with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def trip(reason: str) -> Tripwire:
    """The exception a processor raises to stop the run (`raise trip("...")`)."""
    return Tripwire(reason)


class Tripped(Exception):
    """A processor of the run tripped: which one, why, and at which stage."""

    def __init__(self, processor: str, reason: str, stage: Stage) -> None:
        super().__init__(f"{processor}: {reason}")
        self.processor = processor
        self.reason = reason
        self.stage = stage


class TextProcessor(Protocol):
    """A processor over text: the text it returns is what goes on (the same text: it
    passed). `uses_model`: it asks a model (on output, only the final answer is checked)."""

    @property
    def name(self) -> str: ...

    @property
    def uses_model(self) -> bool: ...

    async def process(self, text: str, ctx: ProcessorContext) -> str: ...
