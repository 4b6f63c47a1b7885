"""xenpci.kthread: the event-woken dom0 worker, in both of the machine's modes."""

from __future__ import annotations

import threading

from tests.conftest import OS_EDGE_TIMEOUT
from xenpci.hv.scheduler import Scheduler
from xenpci.kthread import Kthread


def test_executor_mode_coalesces_kicks_into_one_pass_per_run() -> None:
    sched = Scheduler()
    passes: list[int] = []
    k = Kthread("worker", lambda: passes.append(len(passes)), sched)
    assert k.thread_ident is None  # a lane, no thread
    for _ in range(5):
        k.kick()
    assert passes == []  # an interrupt handler never runs the work itself
    sched.run_until_idle()
    assert passes == [0]  # five kicks before the pass: one pass serves them all
    k.kick()
    sched.run_until_idle()
    assert passes == [0, 1]
    assert k.task_cpu_s >= 0.0
    k.kick()
    k.stop()  # the queued pass is dropped
    sched.run_until_idle()
    k.kick()  # a kick after stop is ignored
    sched.run_until_idle()
    assert passes == [0, 1]


def test_thread_mode_runs_on_its_own_thread_and_stops() -> None:
    ran = threading.Event()
    where: list[int | None] = []

    def work() -> None:
        where.append(threading.get_ident())
        ran.set()

    k = Kthread("worker", work, None)
    assert k.thread_ident is not None and k.thread_ident != threading.get_ident()
    k.kick()
    assert ran.wait(OS_EDGE_TIMEOUT)  # a real thread: the OS edge
    assert where[0] == k.thread_ident
    thread = next(t for t in threading.enumerate() if t.ident == k.thread_ident)
    k.stop()
    assert not thread.is_alive()
