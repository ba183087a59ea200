"""Numbered, resumable run event logs on Redis streams (see `run_events`)."""

from loomwork.streams.errors import EventsExpired, FollowIdle, OutOfRange
from loomwork.streams.run_events import RunEvent, RunEventLog

__all__ = ["EventsExpired", "FollowIdle", "OutOfRange", "RunEvent", "RunEventLog"]
