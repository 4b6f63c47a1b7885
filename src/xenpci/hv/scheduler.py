"""A deterministic scheduler: every vCPU's work runs on the caller's thread, in order.

The test double for ``xenpci.hv.domain.Vcpu`` (in the spirit of
``trio.testing``'s mock clock): instead of one thread per domain, all vCPUs
share one FIFO queue, and nothing runs until someone drives it
(``Hypervisor.run_until_idle``, or ``Domain.call`` waiting for its result).
The same program then produces the same trace on every run. It models Xen's
credit scheduler only in keeping each vCPU to one thing at a time: a vCPU
whose work is on the stack (it is waiting in a nested ``call``) is skipped
until that work returns, and waiting on such a vCPU is reported as the
deadlock it would be. A paused vCPU's work is skipped too (it stays queued, in
order) until it is unpaused.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from xenpci.hv.errors import Deadlock, DomainDead


class Scheduler:
    """One FIFO run queue for all stepped vCPUs."""

    def __init__(self) -> None:
        self._queue: deque[tuple[SteppedVcpu, Callable[[], None]]] = deque()
        self._lock = threading.Lock()
        self._running: list[SteppedVcpu] = []
        self.steps = 0

    def post(self, vcpu: SteppedVcpu, item: Callable[[], None]) -> None:
        with self._lock:
            self._queue.append((vcpu, item))

    def run_one(self) -> bool:
        """Run the oldest item whose vCPU is free; return whether one ran."""
        with self._lock:
            for i, entry in enumerate(self._queue):
                if not entry[0].paused and entry[0] not in self._running:
                    del self._queue[i]
                    break
            else:
                return False
        vcpu, item = entry
        self._running.append(vcpu)
        self.steps += 1
        try:
            item()
        except BaseException as exc:
            vcpu.on_error(exc)
        finally:
            self._running.pop()
        return True

    def run_until(self, done: Callable[[], bool], max_steps: int = 1_000_000) -> None:
        for _ in range(max_steps):
            if done():
                return
            if not self.run_one():
                break
        if not done():
            raise Deadlock("waited for work that cannot run", op="scheduler")

    def run_until_idle(self, max_steps: int = 1_000_000) -> int:
        """Run until nothing runnable is left; return how many items ran."""
        n = 0
        while n < max_steps and self.run_one():
            n += 1
        return n

    def current(self) -> SteppedVcpu | None:
        return self._running[-1] if self._running else None

    def drop(self, vcpu: SteppedVcpu) -> list[Callable[[], None]]:
        with self._lock:
            mine = [item for v, item in self._queue if v is vcpu]
            self._queue = deque((v, it) for v, it in self._queue if v is not vcpu)
        return mine


class SteppedVcpu:
    """A vCPU with no thread: its work is queued on the shared ``Scheduler``."""

    def __init__(
        self, name: str, on_error: Callable[[BaseException], None], scheduler: Scheduler
    ) -> None:
        self.name = name
        self.on_error = on_error
        self.scheduler = scheduler
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
        self.scheduler.post(self, item)

    def wait(self, fut: Future[Any], timeout: float | None) -> Any:
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
