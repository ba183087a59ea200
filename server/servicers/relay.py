"""What every relay of a run's event log (agent runs, workflow runs, ingestions, answers)
does with an event it cannot read."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from pydantic import ValidationError

log = logging.getLogger(__name__)

T = TypeVar("T")


def known_event(
    decode: Callable[[bytes], T], payload: bytes, run_id: str, event_id: int
) -> T | None:
    """The event as this server knows it, or None for a kind it does not (a newer server's,
    during a rolling upgrade): relays leave it out, with a warning, and send the rest."""
    try:
        return decode(payload)
    except ValidationError:
        log.warning(
            "run %s: event %d is of a kind this server does not know; not sent", run_id, event_id
        )
        return None
