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

Real-time mode (a :class:`~xenpci.hv.clock.MonotonicClock`, what the machine
daemon runs on): the same queue and lanes, but time is not the executor's to
move. One thread runs :meth:`Scheduler.serve`; OS-edge threads (socket
servers, control connections) hand it work with :meth:`Scheduler.submit`. When
nothing is runnable the executor blocks on a condition until a post arrives or
the next timer (or a wait's own deadline) is due: no polling. A nested model
wait (``wait_until``: libxl's backend waits, pcifront's op timeout) blocks the
same way, so work posted from outside (a ``xenstore-write`` over the socket)
runs inside it and can satisfy it; a wait with no deadline that nothing can
satisfy waits for such a post rather than reporting a :class:`Deadlock`, until
the executor is stopped.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from xenpci.hv.clock import Clock, VirtualClock
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


_T = TypeVar("_T")


class _Task:
    """``fn`` run for a :meth:`Scheduler.submit` caller: its outcome goes to a future."""

    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[], Any], future: Future[Any]) -> None:
        self.fn = fn
        self.future = future

    def __call__(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn()
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)

    def abandon(self) -> None:
        """The executor stopped (or the lane died) before running it."""
        if self.future.set_running_or_notify_cancel():
            self.future.set_exception(ExecutorStopped("the machine's executor has stopped"))


class ExecutorStopped(RuntimeError):
    """Work handed to an executor that has stopped (or stops before running it)."""


class Scheduler:
    """One FIFO run queue for all lanes, and the timers of one clock.

    A :class:`VirtualClock` (the default) makes it the deterministic executor;
    any other clock (``MonotonicClock``) the real-time one, see the module
    docstring.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else VirtualClock()
        #: Real time: idle waits block for posts and timers instead of moving the clock.
        self.realtime = not isinstance(self.clock, VirtualClock)
        self._queue: deque[tuple[SteppedVcpu, Callable[[], None]]] = deque()
        self._lock = threading.Lock()
        #: Real-time mode: the executor sleeps on this (with ``_lock``) while idle;
        #: a post or a new timer notifies it when ``_sleeping``.
        self._cond = threading.Condition(self._lock)
        self._sleeping = False
        self._stopping = False
        #: the thread running :meth:`serve` (real-time mode)
        self.thread: threading.Thread | None = None
        #: real time: CPU seconds of the items nested in each running one (see _run_timed)
        self._nested_cpu: list[float] = []
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
            if self._sleeping:
                self._cond.notify()
        finally:
            lock.release()

    def lane(self, name: str) -> SteppedVcpu:
        """A lane for work that is no domain's (a toolstack step, a tool's watch delivery)."""
        return SteppedVcpu(name, self.errors.append, self)

    def spawn(self, item: Callable[[], None]) -> None:
        """Run ``item`` as a task on the executor's own lane."""
        self._default.post(item)

    def submit(self, fn: Callable[[], _T], lane: SteppedVcpu | None = None) -> Future[_T]:
        """Run ``fn`` on ``lane`` (default: the executor's own); thread-safe.

        The way an OS-edge thread hands machine work to the executor: the
        returned future holds ``fn``'s result or exception. Work submitted to a
        stopped executor fails with :class:`ExecutorStopped` instead of waiting
        forever.
        """
        fut: Future[_T] = Future()
        task = _Task(fn, fut)
        lane = lane if lane is not None else self._default
        with self._lock:
            # Checked under the queue's lock: serve() drains the queue under it once
            # stopping, so a task is either queued before that or refused here.
            if not self._stopping and not lane._stopped:
                self._queue.append((lane, task))
                if self._sleeping:
                    self._cond.notify()
                return fut
        task.abandon()
        return fut

    # -- timers ---------------------------------------------------------------
    def call_at(
        self, when: float, fn: Callable[[], None], lane: SteppedVcpu | None = None
    ) -> Timer:
        """Post ``fn`` on ``lane`` (default: the executor's) once the clock reaches ``when``."""
        timer = Timer(when, fn, lane if lane is not None else self._default)
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._seq), timer))
            if self._sleeping:  # real time: the executor may sleep past this one
                self._cond.notify()
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
        self._vclock().jump_to(when)
        self._fire_due()

    def _vclock(self) -> VirtualClock:
        clock = self.clock
        assert isinstance(clock, VirtualClock), "only a virtual clock jumps"
        return clock

    # -- running --------------------------------------------------------------
    def _pop_runnable(self) -> tuple[SteppedVcpu, Callable[[], None]] | None:
        """Take the oldest item whose lane is free and not paused (None: no such item)."""
        queue, running, lock = self._queue, self._running, self._lock
        lock.acquire()  # explicit acquire/release: this is the event hot path
        try:
            if not queue:
                return None
            entry = queue[0]
            vcpu = entry[0]
            if not vcpu.paused and vcpu not in running:
                queue.popleft()  # the common case: the oldest item can run
                return entry
            for i, entry in enumerate(queue):
                if not entry[0].paused and entry[0] not in running:
                    del queue[i]
                    return entry
            return None
        finally:
            lock.release()

    def run_one(self) -> bool:
        """Run the oldest item whose lane is free and not paused; return whether one ran."""
        if self.realtime:
            return self._run_one_timed()
        # _pop_runnable inlined: this is the event hot path of the virtual executor
        queue, running, lock = self._queue, self._running, self._lock
        lock.acquire()
        try:
            if not queue:
                return False
            vcpu, item = queue[0]
            if not vcpu.paused and vcpu not in running:
                queue.popleft()
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

    def _run_one_timed(self) -> bool:
        """Real time: run an item on the executor thread only (another thread trying
        is a bug, reported before anything is taken off the queue), and charge its
        lane the CPU time it used, less that of the items run nested inside it
        (``xl list``'s Time(s) of a guest is its vCPU lane's)."""
        if self.thread is not None and threading.current_thread() is not self.thread:
            raise RuntimeError(
                f"machine work run on {threading.current_thread().name!r}, "
                f"not on the executor's thread {self.thread.name!r}"
            )
        entry = self._pop_runnable()
        if entry is None:
            return False
        vcpu, item = entry
        running, nested = self._running, self._nested_cpu
        running.append(vcpu)
        nested.append(0.0)
        self.steps += 1
        start = time.thread_time()
        try:
            item()
        except BaseException as exc:
            vcpu.on_error(exc)
        finally:
            running.pop()
            used = time.thread_time() - start
            vcpu.cpu_seconds += used - nested.pop()
            if nested:
                nested[-1] += used
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
        to fire while not done is a :class:`Deadlock`. In real-time mode nothing
        jumps: see :meth:`_run_until_realtime`.
        """
        if self.realtime:
            return self._run_until_realtime(done, deadline)
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
                self._vclock().jump_to(deadline)
                return done()
            raise Deadlock("waited for work that cannot run", op="scheduler")
        raise Deadlock(f"still not done after {max_steps} steps", op="scheduler")

    def _run_until_realtime(self, done: Callable[[], bool], deadline: float | None) -> bool:
        """Real time: run work and due timers; when idle, sleep until a post, the
        next timer or ``deadline``. Without a deadline, only a stopping executor
        ends a wait nothing satisfies (:class:`Deadlock`)."""
        run_one, clock = self.run_one, self.clock
        while True:
            if done():
                return True
            if run_one() or self._fire_due():
                continue
            if deadline is not None and clock.now() >= deadline:
                return done()
            if self._stopping:
                # nothing will be posted any more: a bounded wait ends now, as if
                # timed out; an unbounded one can never end otherwise
                if deadline is not None:
                    return done()
                raise Deadlock("the executor stopped during a wait", op="scheduler")
            self._sleep(deadline)

    def _runnable_locked(self) -> bool:
        running = self._running
        return any(not v.paused and v not in running for v, _ in self._queue)

    def _sleep(self, until: float | None) -> None:
        """Block (real time) until a post, a new timer, the next timer or ``until``."""
        with self._lock:
            if self._stopping or self._runnable_locked():
                return  # posted between our last look and taking the lock
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            wake = self._timers[0][0] if self._timers else None
            if until is not None and (wake is None or until < wake):
                wake = until
            timeout = None if wake is None else wake - self.clock.now()
            if timeout is not None and timeout <= 0:
                return
            self._sleeping = True
            try:
                self._cond.wait(timeout)
            finally:
                self._sleeping = False

    def serve(self) -> None:
        """Run as the real-time executor on the calling thread until :meth:`stop`.

        Then what is still queued is abandoned (a submitted task's future fails
        with :class:`ExecutorStopped`).
        """
        if not self.realtime:
            raise RuntimeError("serve() is the real-time executor's loop (a MonotonicClock)")
        self.thread = threading.current_thread()
        run_one = self.run_one
        while not self._stopping:
            if run_one() or self._fire_due():
                continue
            self._sleep(None)
        with self._lock:
            left = [item for _, item in self._queue]
            self._queue.clear()
        for item in left:
            abandon = getattr(item, "abandon", None)
            if abandon is not None:
                abandon()

    def stop(self) -> None:
        """Make :meth:`serve` return (thread-safe); later submits fail at once."""
        with self._lock:
            self._stopping = True
            self._cond.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping

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
        if self.realtime:
            raise RuntimeError("real time cannot be advanced: only a VirtualClock moves")
        target = self.clock.now() + dt
        n = self.run_until_idle()
        while (nxt := self.next_deadline()) is not None and nxt <= target:
            self._jump(nxt)
            n += self.run_until_idle()
        self._vclock().jump_to(target)
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
        #: CPU seconds its work used (real-time executor only: a virtual run has no cost)
        self.cpu_seconds = 0.0

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
            if self.scheduler._sleeping:  # real-time mode: wake the idle executor
                self.scheduler._cond.notify()
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
