"""Starts of accepted runs wait while other calls are being accepted (server/servicers/
launches.py): they begin once no accept is in flight, or after their longest wait."""

from __future__ import annotations

import asyncio

from server.servicers.launches import Launches

WAIT = 10.0  # generous upper bound for "this finishes", never a timing assertion


async def _started(log: list[str], name: str) -> str:
    log.append(name)
    return name


async def test_a_start_waits_for_the_accepts_in_flight() -> None:
    launches, log = Launches(defer_up_to=600.0), list[str]()
    with launches.accepting():
        task = launches.start(_started(log, "run"), "start of run")
        with launches.accepting():  # another call, accepted meanwhile
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        assert log == []  # one accept still in flight
    assert await asyncio.wait_for(task, WAIT) == "run"
    assert log == ["run"]


async def test_with_no_accept_in_flight_a_start_goes_at_once() -> None:
    launches, log = Launches(defer_up_to=600.0), list[str]()
    assert await asyncio.wait_for(launches.start(_started(log, "run"), "start"), WAIT) == "run"


async def test_accepts_that_never_end_hold_a_start_up_to_its_longest_wait() -> None:
    launches, log = Launches(defer_up_to=0.1), list[str]()
    with launches.accepting():
        task = launches.start(_started(log, "run"), "start of run")
        assert await asyncio.wait_for(task, WAIT) == "run"  # still accepting


async def test_a_start_cancelled_while_it_waits_never_begins() -> None:
    launches, log = Launches(defer_up_to=600.0), list[str]()
    with launches.accepting():
        task = launches.start(_started(log, "run"), "start of run")
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert log == []


async def test_a_start_not_deferred_goes_while_others_are_accepted() -> None:
    launches, log = Launches(defer_up_to=600.0), list[str]()
    with launches.accepting():
        task = launches.start(_started(log, "named run"), "start", defer=False)
        assert await asyncio.wait_for(task, WAIT) == "named run"
