"""Timing helpers the benchmarks share."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def paired_us(
    ours: Callable[[], Awaitable[Any]], base: Callable[[], Awaitable[Any]], calls: int
) -> tuple[float, float, float]:
    """Median µs per call of `ours` and `base`, and the median of their per-round ratios.

    Rounds alternate between the two so drift in machine load hits both alike."""
    for _ in range(min(200, calls)):
        await ours()
        await base()
    per_round = max(1, calls // 20)
    a: list[float] = []
    b: list[float] = []
    for _ in range(20):
        for fn, out in ((ours, a), (base, b)):
            started = time.perf_counter()
            for _ in range(per_round):
                await fn()
            out.append((time.perf_counter() - started) / per_round * 1e6)
    ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))
    return statistics.median(a), statistics.median(b), ratio
