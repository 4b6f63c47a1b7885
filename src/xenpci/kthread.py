"""A dom0 service loop woken by events: a kernel thread, or a lane of the executor.

Models the shape Linux's ``xenblkd`` has (``xen_blkif_schedule``,
``drivers/block/xen-blkback/blkback.c``: ``kthread_run``, then
``wait_event_interruptible`` until the event-channel interrupt's
``wake_up``, serve, repeat) and QEMU's main loop as a Xen device model
runs it (woken by its ioreq event channels). The interrupt handler only
kicks; the work runs on the worker, which may block (on dom0's disk).

Two modes, as the machine runs: with threads, a daemon thread sleeps on a
condition; with the deterministic executor (:mod:`xenpci.hv.scheduler`),
each kick posts one pass to a lane of its own, and the CPU time of those
passes is counted in :attr:`Kthread.task_cpu_s` (no thread has a clock).

Deliberate differences: kicks coalesce into one pending pass (a pass
serves everything posted so far, as one wake-up does in Linux); stopping
drops a pass still queued on the lane.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xenpci.hv.scheduler import Scheduler, SteppedVcpu


class Kthread:
    """Runs ``work`` once per wake-up, on its own thread or on an executor lane."""

    def __init__(self, name: str, work: Callable[[], None], executor: Scheduler | None) -> None:
        self.name = name
        self._work = work
        self._cond = threading.Condition()
        self._kicked = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._lane: SteppedVcpu | None = None
        #: CPU seconds of the executor passes (deterministic mode).
        self.task_cpu_s = 0.0
        if executor is not None:
            self._lane = executor.lane(name)
        else:
            self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._thread.start()

    @property
    def thread_ident(self) -> int | None:
        """The thread (for its CPU clock); None on the executor."""
        thread = self._thread
        return thread.ident if thread is not None else None

    def kick(self) -> None:
        """``wake_up`` from an interrupt handler: never runs the work itself."""
        lane = self._lane
        with self._cond:
            if lane is not None:
                if not self._kicked and not self._stop:  # one queued pass serves all
                    self._kicked = True
                    lane.post(self._serve)
                return
            self._kicked = True
            self._cond.notify()

    def stop(self) -> None:
        """``kthread_stop``: the thread ends (joined unless it is the caller)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        if self._lane is not None:
            self._lane.stop()  # a queued pass is dropped with the lane

    def _serve(self) -> None:
        """One pass as an executor task (deterministic mode)."""
        with self._cond:
            self._kicked = False
            if self._stop:
                return
        start = time.thread_time()
        try:
            self._work()
        finally:
            self.task_cpu_s += time.thread_time() - start

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._kicked or self._stop)
                if self._stop:
                    return
                self._kicked = False
            self._work()
