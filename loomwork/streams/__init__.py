"""Numbered, resumable run event logs on Redis streams (see `run_events`)."""

from loomwork.streams.errors import DraftTaken, EventsExpired, FollowIdle, OutOfRange
from loomwork.streams.run_events import RunEvent, RunEventLog

__all__ = ["DraftTaken", "EventsExpired", "FollowIdle", "OutOfRange", "RunEvent", "RunEventLog"]
