"""The machine's deterministic executor: every vCPU's work and every timer, on one thread.

The test double for ``xenpci.hv.domain.Vcpu`` and the machine's single
executor in deterministic mode (in the spirit of ``trio.testing``'s mock
clock and h11's sans-IO cores): instead of one thread per domain, all work
shares one FIFO run queue, and nothing runs until someone drives it
(:meth:`Scheduler.run_until_idle`, :meth:`Scheduler.advance`, a model wait
such as ``Domain.call`` or pcifront's op). The same program then produces the
same trace on every run.

Work is posted on a *lane*: a domain's vCPU (:class:`SteppedVcpu`), or a lane
of its own for work that belongs to no domain (:meth:`Scheduler.lane`). It
models Xen's credit scheduler only in keeping each lane to one thing at a
time: a lane whose work is on the stack (it is waiting in a nested wait) is
skipped until that work returns, and waiting on such a lane is reported as
the deadlock it would be. A paused vCPU runs nothing, as an exact property
and not a timing: its work (upcalls, timers that fire for it) stays queued,
in order, until it is unpaused.

Time is a :class:`~xenpci.hv.clock.VirtualClock`. Timers are deadlines on it
(:meth:`Scheduler.call_at`); a due timer posts its callback on its lane. Time
moves only by :meth:`advance` or, as trio's autojump does, when a wait finds
nothing runnable: the clock then jumps to the next timer, or to the wait's own
deadline (:meth:`wait_until`), so a model timeout costs no wall time and
fires at exactly its deadline on every run. Deliberate difference from a real
machine: no preemption and no parallelism, and a thread outside the executor
(an OS edge posting in) is not waited for when time jumps.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from xenpci.hv.clock import VirtualClock
from xenpci.hv.errors import Deadlock, DomainDead


class Timer:
    """A callback due at ``when`` on the executor's clock; :meth:`cancel` withdraws it."""

    __slots__ = ("cancelled", "fn", "lane", "when")

    def __init__(self, when: float, fn: Callable[[], None], lane: SteppedVcpu) -> None:
        self.when = when
        self.fn = fn
        self.lane = lane
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """One FIFO run queue for all lanes, and the timers of one virtual clock."""

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock if clock is not None else VirtualClock()
        self._queue: deque[tuple[SteppedVcpu, Callable[[], None]]] = deque()
        self._lock = threading.Lock()
        self._running: list[SteppedVcpu] = []
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        #: Exceptions raised by work on lanes that belong to no domain.
        self.errors: list[BaseException] = []
        self.steps = 0
        self._default = self.lane("executor")

    # -- posting --------------------------------------------------------------
    def post(self, vcpu: SteppedVcpu, item: Callable[[], None]) -> None:
        lock = self._lock
        lock.acquire()  # not ``with``: cheaper on the event hot path
        try:
            self._queue.append((vcpu, item))
        finally:
            lock.release()

    def lane(self, name: str) -> SteppedVcpu:
        """A lane for work that is no domain's (a toolstack step, a tool's watch delivery)."""
        return SteppedVcpu(name, self.errors.append, self)

    def spawn(self, item: Callable[[], None]) -> None:
        """Run ``item`` as a task on the executor's own lane."""
        self._default.post(item)

    # -- timers ---------------------------------------------------------------
    def call_at(
        self, when: float, fn: Callable[[], None], lane: SteppedVcpu | None = None
    ) -> Timer:
        """Post ``fn`` on ``lane`` (default: the executor's) once the clock reaches ``when``."""
        timer = Timer(when, fn, lane if lane is not None else self._default)
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def call_later(
        self, delay: float, fn: Callable[[], None], lane: SteppedVcpu | None = None
    ) -> Timer:
        return self.call_at(self.clock.now() + delay, fn, lane)

    def next_deadline(self) -> float | None:
        """When the earliest live timer is due (None: no timer)."""
        with self._lock:
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            return self._timers[0][0] if self._timers else None

    def _fire_due(self) -> int:
        """Post every timer due by now, in deadline order; return how many."""
        now, fired = self.clock.now(), 0
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > now:
                    return fired
                _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                fired += 1
                # A timer of a domain that is gone dies with it.
                with contextlib.suppress(DomainDead):
                    timer.lane.post(timer.fn)

    def _jump(self, when: float) -> None:
        self.clock.jump_to(when)
        self._fire_due()

    # -- running --------------------------------------------------------------
    def run_one(self) -> bool:
        """Run the oldest item whose lane is free and not paused; return whether one ran."""
        queue, running, lock = self._queue, self._running, self._lock
        lock.acquire()  # explicit acquire/release: this is the event hot path
        try:
            if not queue:
                return False
            vcpu, item = queue[0]
            if not vcpu.paused and vcpu not in running:
                queue.popleft()  # the common case: the oldest item can run
            else:
                for i, entry in enumerate(queue):
                    if not entry[0].paused and entry[0] not in running:
                        del queue[i]
                        vcpu, item = entry
                        break
                else:
                    return False
        finally:
            lock.release()
        running.append(vcpu)
        self.steps += 1
        try:
            item()
        except BaseException as exc:
            vcpu.on_error(exc)
        finally:
            running.pop()
        return True

    def run_until(
        self,
        done: Callable[[], bool],
        max_steps: int = 1_000_000,
        *,
        deadline: float | None = None,
    ) -> bool:
        """Run work (and, when none is runnable, jump to timers) until ``done()``.

        With a ``deadline`` the clock jumps there when nothing else can happen,
        and the result is ``done()`` then. Without one, nothing left to run or
        to fire while not done is a :class:`Deadlock`.
        """
        run_one = self.run_one
        for _ in range(max_steps):
            if done():
                return True
            if run_one():
                continue
            nxt = self.next_deadline()
            if nxt is not None and (deadline is None or nxt <= deadline):
                self._jump(nxt)
                continue
            if deadline is not None:
                self.clock.jump_to(deadline)
                return done()
            raise Deadlock("waited for work that cannot run", op="scheduler")
        raise Deadlock(f"still not done after {max_steps} steps", op="scheduler")

    def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """A model's bounded wait: ``done()`` by ``timeout`` seconds of virtual time."""
        return self.run_until(done, deadline=self.clock.now() + timeout)

    def run_until_idle(self, max_steps: int = 1_000_000) -> int:
        """Run until nothing runnable is left (time does not move); return how many ran."""
        n = 0
        while n < max_steps and self.run_one():
            n += 1
        return n

    def advance(self, dt: float) -> int:
        """Let ``dt`` seconds of virtual time pass, running everything due on the way.

        Timers fire in deadline order, each at its own time, with the work it
        causes run before time moves on. Returns how many items ran.
        """
        if dt < 0:
            raise ValueError(f"time cannot go backwards ({dt} s)")
        target = self.clock.now() + dt
        n = self.run_until_idle()
        while (nxt := self.next_deadline()) is not None and nxt <= target:
            self._jump(nxt)
            n += self.run_until_idle()
        self.clock.jump_to(target)
        return n + self.run_until_idle()

    def current(self) -> SteppedVcpu | None:
        return self._running[-1] if self._running else None

    def running(self, vcpu: SteppedVcpu) -> bool:
        """Is work of ``vcpu`` on the stack (so it cannot run anything else now)?"""
        return vcpu in self._running

    def drop(self, vcpu: SteppedVcpu) -> list[Callable[[], None]]:
        with self._lock:
            mine = [item for v, item in self._queue if v is vcpu]
            keep = [(v, it) for v, it in self._queue if v is not vcpu]
            self._queue.clear()  # in place: every lane holds a reference to this deque
            self._queue.extend(keep)
        return mine


class SteppedVcpu:
    """A lane with no thread (a vCPU, or a task lane): its work is queued on the ``Scheduler``."""

    def __init__(
        self, name: str, on_error: Callable[[BaseException], None], scheduler: Scheduler
    ) -> None:
        self.name = name
        self.on_error = on_error
        self.scheduler = scheduler
        self._lock, self._queue = scheduler._lock, scheduler._queue
        self._stopped = False
        self.paused = False

    ident = None

    def pause(self, timeout: float) -> bool:
        # One thread runs everything: when the caller runs, no other vCPU's call can be
        # mid-flight except those on the caller's stack, which finish before it returns.
        self.paused = True
        return True

    def unpause(self) -> None:
        self.paused = False

    def on_this_vcpu(self) -> bool:
        return self.scheduler.current() is self

    def post(self, item: Callable[[], None]) -> None:
        if self._stopped:
            raise DomainDead(f"vCPU {self.name} has stopped")
        # Scheduler.post inlined: this is every event-channel upcall's way in.
        lock = self._lock
        lock.acquire()
        try:
            self._queue.append((self, item))
        finally:
            lock.release()

    def wait(self, fut: Future[Any], timeout: float | None) -> Any:
        # No deadline jump here: a call nobody can ever run is a deadlock to report,
        # not a timeout to wait out (timers still fire while waiting).
        self.scheduler.run_until(fut.done)
        return fut.result(0)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped = True
        for item in self.scheduler.drop(self):
            abandon = getattr(item, "abandon", None)
            if abandon is not None:
                abandon()

    @property
    def alive(self) -> bool:
        return not self._stopped


def wait_for(
    cond: threading.Condition,
    predicate: Callable[[], bool],
    timeout: float,
    executor: Scheduler | None,
) -> bool:
    """The one way a model waits for another party: ``predicate()`` within ``timeout``.

    Threaded mode: ``cond.wait_for`` (the caller holds ``cond``, whose owner
    notifies it). Deterministic mode: the executor runs the machine until the
    predicate holds or the deadline passes on the virtual clock.
    """
    if executor is not None:
        return executor.wait_until(predicate, timeout)
    return cond.wait_for(predicate, timeout)
