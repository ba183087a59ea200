"""The bare baseline of bench/client_tools.py: a workflow that waits for an Update, then runs
one activity (in a module of its own, so that Temporal's sandbox can load it as it loads
Loomwork's workflow modules)."""

from __future__ import annotations

import time
from datetime import timedelta

from temporalio import activity, workflow

activity_started: dict[str, float] = {}  # workflow id -> perf_counter() as its activity ran


@activity.defn(name="bare_update_next")
async def bare_update_next() -> None:
    activity_started[activity.info().workflow_id or ""] = time.perf_counter()


@workflow.defn(name="BareUpdateToActivity")
class BareUpdateToActivity:
    """Waits for an Update, then runs one activity: what a client tool's answer costs
    Temporal alone."""

    def __init__(self) -> None:
        self.answered = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self.answered)
        await workflow.execute_activity(
            bare_update_next, start_to_close_timeout=timedelta(seconds=30)
        )

    @workflow.query(name="waiting")
    def waiting(self) -> bool:
        return not self.answered

    @workflow.update(name="answer")
    async def answer(self, value: str) -> None:
        self.answered = True
