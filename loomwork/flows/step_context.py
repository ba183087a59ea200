"""What a step function knows about its execution, and how it suspends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from pydantic import BaseModel


class StepSuspended(Exception):
    """Raised by `StepContext.suspend`: the step stops here and waits for resume data."""

    def __init__(self, payload: BaseModel) -> None:
        super().__init__("step suspended")
        self.payload = payload


@dataclass
class StepContext:
    """Passed to every step function.

    `resume_data` is None on the first execution; after `suspend` the step runs again from
    the top with the validated resume data. `idempotency_key` is stable across retries of
    this execution: a step with an external effect stores it with the effect.
    """

    tenant: str
    run_id: str
    workflow_id: str
    step_id: str
    path: str
    attempt: int = 1
    resume_data: BaseModel | None = None
    services: Mapping[str, Any] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.path}"

    def suspend(self, payload: BaseModel) -> NoReturn:
        """Stop and wait for ResumeRun; `payload` is what the caller sees while suspended."""
        raise StepSuspended(payload)
