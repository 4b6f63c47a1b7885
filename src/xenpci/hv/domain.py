"""A domain and its one virtual CPU.

Models ``struct domain`` / ``struct vcpu`` (``xen/include/xen/sched.h``) as far
as this project needs: a domid, a name, whether it is privileged (dom0, the
hardware domain), its memory (``P2M``) and a single vCPU. The vCPU is a thread
with a run queue: everything a domain's kernel does (boot code, event-channel
upcalls) runs on that thread, one thing at a time, as on a one-vCPU guest.

Pausing mirrors ``domain_pause_by_systemcontroller`` /
``domain_unpause_by_systemcontroller`` (``xen/common/domain.c``, reached by
``XEN_DOMCTL_pausedomain`` / ``unpausedomain``): a counted controller pause,
at most 255 (``EOVERFLOW`` beyond), an unpause of a domain the controller has
not paused is ``EINVAL``. While paused the vCPU starts nothing; what was
queued for it (event-channel upcalls, jobs) stays queued and runs in order on
the last unpause, as pending events wait for a descheduled vCPU. The pause
returns once the vCPU is off the CPU (``vcpu_sleep_sync``).

In deterministic mode the vCPU is a lane of the machine's one executor
(:class:`xenpci.hv.scheduler.SteppedVcpu`) instead of a thread: the same
calls, run on the driving thread, and a paused vCPU runs nothing at all.

Deliberate differences: no scheduler, no preemption, no SMP guests; an upcall
is a queued Python call rather than an interrupt on the vCPU's stack, so a
pause takes effect between two calls, never inside one (the pause waits for
the call in progress, bounded: a call blocked for good makes it ``EBUSY`` and
the pause is undone). Domains are created running (Xen creates them with a
controller pause count of 1, which the toolstack drops on its last unpause);
the toolstack pauses a new domain itself when it wants it built paused.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from xenpci.hv.errors import DomainDead, HvError, InvalidArgument
from xenpci.hv.memory import P2M
from xenpci.hv.scheduler import Scheduler, SteppedVcpu

if TYPE_CHECKING:
    from xenpci.hv.hypercalls import Hypercalls

T = TypeVar("T")

#: ``DOMID_FIRST_RESERVED`` in ``xen/include/public/xen.h``: domids at or above are special.
DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
#: ``_domain_pause_by_systemcontroller``'s limit on the toolstack's pause count.
MAX_CONTROLLER_PAUSES = 255
#: How long a pause waits for the call the vCPU is in to end (``vcpu_sleep_sync``).
PAUSE_SYNC_TIMEOUT = 10.0


class Vcpu:
    """One worker thread draining a queue of calls.

    The queue is a deque; the wake-up is a lock used as a binary semaphore (a
    "doorbell"): ``post`` appends and makes sure the doorbell is rung, the
    thread drains the queue and then blocks on the doorbell. A token rung while
    the thread is busy just makes it look at the queue once more, so no wake-up
    is ever lost. This is the whole event path, deliberately two primitives
    deep: no Condition (which allocates a lock per wait) and no extra thread.

    An exception in a queued call is handed to ``on_error`` and the vCPU keeps
    running (a buggy handler must not kill the domain, let alone the machine).

    ``pause`` sets a flag the loop reads between calls (one attribute read per
    call on the hot path); the loop then parks on the doorbell and says so on
    ``_parked``, which is what a pausing thread waits for.
    """

    def __init__(self, name: str, on_error: Callable[[BaseException], None]) -> None:
        self._queue: deque[Callable[[], None]] = deque()
        self._doorbell = threading.Lock()
        self._doorbell.acquire()
        self._stopping = False
        self._paused = False
        self._parked = threading.Event()
        self._on_error = on_error
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self._thread.name

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def on_this_vcpu(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def post(self, item: Callable[[], None]) -> None:
        # No lock: deque.append and Lock.release are atomic in CPython, and this is
        # the event-channel hot path. A post racing with stop() may be dropped
        # (the domain is being destroyed; its events are lost as on real Xen).
        if self._stopping:
            raise DomainDead(f"vCPU {self._thread.name} has stopped")
        self._queue.append(item)
        try:  # noqa: SIM105 - suppress() would cost a context manager per event
            self._doorbell.release()
        except RuntimeError:
            pass  # already rung: one token is enough

    def _ring(self) -> None:
        try:  # noqa: SIM105 - as in post()
            self._doorbell.release()
        except RuntimeError:
            pass

    def _loop(self) -> None:
        queue, doorbell, on_error = self._queue, self._doorbell, self._on_error
        while True:
            while queue and not self._paused:
                item = queue.popleft()
                try:
                    item()
                except BaseException as exc:
                    on_error(exc)
            if self._paused:
                # Off the CPU: a paused vCPU being destroyed never runs again; its
                # queued work is abandoned by stop(), not run.
                self._parked.set()
                if self._stopping:
                    return
            elif self._stopping and not queue:
                return
            doorbell.acquire()

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self, timeout: float) -> bool:
        """Start nothing more; wait until the call in progress (if any) has ended.

        Returns False (still paused) when that call did not end within ``timeout``.
        """
        self._parked.clear()  # before the flag: a park seen after it is for this pause
        self._paused = True
        self._ring()
        if self.on_this_vcpu() or not self._thread.is_alive():
            return True
        return self._parked.wait(timeout)

    def unpause(self) -> None:
        """Run again, starting with what was queued while paused."""
        self._paused = False
        self._ring()

    def wait(self, fut: Future[Any], timeout: float | None) -> Any:
        """Block until another thread's vCPU has run the job behind ``fut``."""
        return fut.result(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Finish queued work (none if paused), then end the thread (idempotent)."""
        self._stopping = True
        self._ring()
        if not self.on_this_vcpu():
            self._thread.join(timeout)
            # Work posted in the instant between the last check and the thread's exit
            # never runs: tell its waiters instead of leaving them hanging.
            while self._queue:
                abandon = getattr(self._queue.popleft(), "abandon", None)
                if abandon is not None:
                    abandon()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class _Job(Generic[T]):
    """A call queued on a vCPU, with the Future its caller waits on."""

    __slots__ = ("args", "fn", "future", "vcpu")

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...], vcpu: str) -> None:
        self.fn, self.args, self.vcpu = fn, args, vcpu
        self.future: Future[T] = Future()

    def __call__(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            self.future.set_result(self.fn(*self.args))
        except BaseException as exc:
            self.future.set_exception(exc)

    def abandon(self) -> None:
        if self.future.set_running_or_notify_cancel():
            self.future.set_exception(DomainDead(f"vCPU {self.vcpu} stopped before running it"))


class Domain:
    """A domain: identity, memory, one vCPU and its hypercall handle."""

    def __init__(
        self,
        domid: int,
        name: str,
        p2m: P2M,
        *,
        privileged: bool,
        on_error: Callable[[int, BaseException], None],
        scheduler: Scheduler | None = None,
    ) -> None:
        self.domid = domid
        self.name = name
        self.privileged = privileged
        self.p2m = p2m
        self.dying = False
        self.hypercalls: Hypercalls  # set by the hypervisor right after construction
        self._pause_lock = threading.Lock()
        self._controller_pauses = 0
        vcpu_name = f"d{domid}v0-{name}"
        self.vcpu: Vcpu | SteppedVcpu = (
            Vcpu(vcpu_name, lambda exc: on_error(domid, exc))
            if scheduler is None
            else SteppedVcpu(vcpu_name, lambda exc: on_error(domid, exc), scheduler)
        )

    @property
    def nr_pages(self) -> int:
        return self.p2m.nr_pages

    @property
    def executor(self) -> Scheduler | None:
        """The machine's deterministic executor, or None in threaded mode."""
        vcpu = self.vcpu
        return vcpu.scheduler if isinstance(vcpu, SteppedVcpu) else None

    def run(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)`` on this domain's vCPU; the Future carries its result."""
        job = _Job(fn, args, self.vcpu.name)
        self.vcpu.post(job)
        return job.future

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = 30.0) -> T:
        """Run ``fn(*args)`` on this domain's vCPU and wait for its result.

        Called from the vCPU itself it runs inline (waiting would deadlock).
        """
        if self.vcpu.on_this_vcpu():
            return fn(*args)
        result: T = self.vcpu.wait(self.run(fn, *args), timeout)
        return result

    @property
    def controller_pause_count(self) -> int:
        """``d->controller_pause_count``: the toolstack's outstanding pauses."""
        return self._controller_pauses

    @property
    def paused(self) -> bool:
        return self._controller_pauses > 0

    def pause_by_systemcontroller(self, timeout: float = PAUSE_SYNC_TIMEOUT) -> None:
        """One more controller pause; the first takes the vCPU off the CPU (synchronously).

        Raises ``EOVERFLOW`` past :data:`MAX_CONTROLLER_PAUSES` and ``EBUSY`` (pause
        undone) when the call the vCPU is in does not end within ``timeout``.
        """
        op = "domctl_pausedomain"
        with self._pause_lock:
            if self._controller_pauses >= MAX_CONTROLLER_PAUSES:
                raise HvError(
                    f"d{self.domid} is already paused {MAX_CONTROLLER_PAUSES} times",
                    errno="EOVERFLOW",
                    op=op,
                    target=self.domid,
                )
            self._controller_pauses += 1
            if self._controller_pauses > 1:
                return
            # Under the lock: an unpause racing with this first pause must find the
            # vCPU paused, not have its unpause overtaken by our pause.
            if self.vcpu.pause(timeout):
                return
            self._controller_pauses -= 1
            self.vcpu.unpause()
        raise HvError(
            f"d{self.domid}'s vCPU is still busy after {timeout:g} s",
            errno="EBUSY",
            op=op,
            target=self.domid,
        )

    def unpause_by_systemcontroller(self) -> bool:
        """One controller pause less; True when that was the last (the vCPU runs again)."""
        with self._pause_lock:
            if self._controller_pauses == 0:
                raise InvalidArgument(
                    f"d{self.domid} is not paused by the controller",
                    op="domctl_unpausedomain",
                    target=self.domid,
                )
            self._controller_pauses -= 1
            if self._controller_pauses:
                return False
            self.vcpu.unpause()
            return True

    def __repr__(self) -> str:
        kind = "privileged" if self.privileged else "guest"
        return f"Domain(d{self.domid} {self.name!r} {kind} {self.nr_pages} pages)"
