"""The machine's clock: real monotonic time in daemons, virtual time in tests.

There is no single real counterpart: Xen keeps system time (``NOW()``,
``xen/include/xen/time.h``) and each kernel its own; what the model needs is
one source every timeout is measured on, so that a timeout is a *deadline*
on that clock rather than a wall-clock guess. In the spirit of
``trio.testing.MockClock``: :class:`VirtualClock` only moves when the
executor (:class:`xenpci.hv.scheduler.Scheduler`) moves it, to the next
deadline when nothing else can run ("autojump"), or by an explicit
``advance``. A 2 s pcifront op timeout then costs no wall time and fires at
exactly 2.0 s on every run.

Deliberate difference: one clock per machine, in seconds as a float; no
per-vCPU time, no TSC, no drift.
"""

from __future__ import annotations

import functools
import operator
import time
from collections.abc import Callable
from typing import Protocol, cast


class Clock(Protocol):
    """A source of monotonic time in seconds."""

    def now(self) -> float: ...


class MonotonicClock:
    """Real time (``time.monotonic``): what daemons and the threaded mode use."""

    def now(self) -> float:
        return time.monotonic()


class VirtualClock:
    """Time that moves only when told to: by the executor, or by :meth:`advance`."""

    def __init__(self, start: float = 0.0) -> None:
        self._slot = [float(start)]
        #: The current time. A C-level reader of the slot, not a method: every
        #: trace record and every deadline asks (thousands of times per demo),
        #: and a Python frame per question was the model's most frequent call.
        self.now = cast(Callable[[], float], functools.partial(operator.getitem, self._slot, 0))

    def advance(self, dt: float) -> None:
        """Move time forward by ``dt`` seconds (never backwards)."""
        if dt < 0:
            raise ValueError(f"time cannot go backwards ({dt} s)")
        self._slot[0] += dt

    def jump_to(self, when: float) -> None:
        """Move to ``when`` if it is later than now (a deadline already past is a no-op)."""
        if when > self._slot[0]:
            self._slot[0] = when


class Deadline:
    """``timeout`` seconds from now on ``clock``: what every model wait is bounded by."""

    __slots__ = ("clock", "timeout", "when")

    def __init__(self, clock: Clock, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self.when = clock.now() + timeout

    def remaining(self) -> float:
        return self.when - self.clock.now()

    def expired(self) -> bool:
        return self.clock.now() >= self.when
