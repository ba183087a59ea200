"""Waits that end, shared by the workflows: waiting for a condition until a deadline (an
approval, a client tool call's result, a suspended step's resume data), and what a run
waits on, kept in its Temporal memo (`loomwork.waiting`) so that ListRuns can say it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow

# The memo key ListRuns reads: what the run waits on, as JSON (absent: nothing).
WAITING_MEMO = "loomwork.waiting"
# Runs recorded before the memo was kept replay without its commands.
_WAITING_MEMO_PATCH = "waiting-memo"
# At most this many waits are listed in the memo (a foreach of many suspended items).
MAX_LISTED_WAITS = 100


async def wait_until(
    condition: Callable[[], bool], expire_time: datetime | None, *, summary: str | None = None
) -> bool:
    """Wait for `condition`, until `expire_time` (None: for as long as it takes); whether it
    holds. A deadline already past waits for nothing. `summary` names the timer in the
    Temporal UI."""
    if expire_time is None:
        await workflow.wait_condition(condition)
        return True
    left = expire_time - workflow.now()
    if left > timedelta(0):
        with contextlib.suppress(TimeoutError):  # the deadline came first
            await workflow.wait_condition(condition, timeout=left, timeout_summary=summary)
    return condition()


class WaitingMemo:
    """Keeps the run's memo `loomwork.waiting` equal to what it waits on: one memo upsert
    whenever that changes (none while it stays the same)."""

    def __init__(self) -> None:
        self._shown: Any = None

    def show(self, waits: Any) -> None:
        """Record `waits` (a JSON value; None when the run waits on nothing) as what the run
        waits on now."""
        if waits == self._shown or not workflow.patched(_WAITING_MEMO_PATCH):
            return
        self._shown = waits
        workflow.upsert_memo({WAITING_MEMO: waits})  # None removes the key
