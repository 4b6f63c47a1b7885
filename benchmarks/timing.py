"""Timing helper shared by the benchmark modules (not itself a benchmark).

The collector only runs ``bench_*.py`` modules, so this one is never run as a figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def time_per_call(fn: Callable[[], object], min_time: float = 0.3) -> float:
    """Mean seconds per call of ``fn``, calling it until ``min_time`` has passed.

    At least one call; a loop of whole calls so a slow ``fn`` is never cut short.
    """
    calls = 0
    start = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls
