"""The executor in real time: one serving thread, posts from OS-edge threads, real deadlines.

What the machine daemon runs on (``Scheduler(MonotonicClock())`` + ``serve``). The
waits here are on futures and events that the executor resolves; their bounds are
the suite's named OS-edge ones, and the only wait that runs out on purpose is
bounded by ``EXPECTED_TIMEOUT``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.conftest import EXPECTED_TIMEOUT, OS_EDGE_TIMEOUT
from xenpci.hv import Deadlock
from xenpci.hv.clock import MonotonicClock
from xenpci.hv.scheduler import ExecutorStopped, Scheduler

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ex() -> Iterator[Scheduler]:
    sched = Scheduler(MonotonicClock())
    t = threading.Thread(target=sched.serve, name="executor-under-test", daemon=True)
    t.start()
    try:
        yield sched
    finally:
        sched.stop()
        t.join(OS_EDGE_TIMEOUT)
        assert not t.is_alive()


def test_submitted_work_runs_on_the_serving_thread(ex: Scheduler) -> None:
    fut = ex.submit(lambda: threading.current_thread().name)
    assert fut.result(OS_EDGE_TIMEOUT) == "executor-under-test"
    boom = ex.submit(lambda: 1 // 0)
    with pytest.raises(ZeroDivisionError):
        boom.result(OS_EDGE_TIMEOUT)
    # an exception costs that task only: the executor goes on
    assert ex.submit(lambda: 42).result(OS_EDGE_TIMEOUT) == 42


def test_another_thread_cannot_run_machine_work(ex: Scheduler) -> None:
    lane = ex.lane("l")
    lane.paused = True  # keeps the item queued while we try
    fut = ex.submit(lambda: None, lane)
    with pytest.raises(RuntimeError, match="not on the executor's thread"):
        ex.run_one()
    # nothing was taken off the queue by the refused attempt
    ex.submit(lambda: setattr(lane, "paused", False)).result(OS_EDGE_TIMEOUT)
    fut.result(OS_EDGE_TIMEOUT)


def test_a_nested_wait_blocks_for_a_post_from_an_os_edge(ex: Scheduler) -> None:
    flag = threading.Event()
    waiting = threading.Event()

    def step() -> tuple[bool, float]:
        waiting.set()
        start = ex.clock.now()
        # a model wait with a long deadline: only a post from outside can satisfy it
        ok = ex.wait_until(flag.is_set, OS_EDGE_TIMEOUT)
        return ok, ex.clock.now() - start

    fut = ex.submit(step)
    assert waiting.wait(OS_EDGE_TIMEOUT)
    assert not fut.done()
    # posted work (on a lane of its own: the waiting one is busy) runs inside the
    # nested wait, on the executor's thread
    edge = ex.lane("edge")
    where = ex.submit(lambda: (flag.set(), threading.current_thread().name)[1], edge)
    ok, took = fut.result(OS_EDGE_TIMEOUT)
    assert ok and took < OS_EDGE_TIMEOUT
    assert where.result(OS_EDGE_TIMEOUT) == "executor-under-test"


def test_a_wait_runs_out_at_its_real_deadline_and_timers_fire(ex: Scheduler) -> None:
    fired: list[float] = []

    def step() -> tuple[bool, float, float]:
        start = ex.clock.now()
        ex.call_later(
            EXPECTED_TIMEOUT / 2, lambda: fired.append(ex.clock.now() - start), ex.lane("timer")
        )
        ok = ex.wait_until(lambda: False, EXPECTED_TIMEOUT)
        return ok, ex.clock.now() - start, start

    ok, took, _ = ex.submit(step).result(OS_EDGE_TIMEOUT)
    assert not ok
    assert took >= EXPECTED_TIMEOUT  # not a jump: real time passed
    assert len(fired) == 1 and EXPECTED_TIMEOUT / 2 <= fired[0] <= took


def test_a_paused_lane_runs_nothing(ex: Scheduler) -> None:
    lane = ex.lane("vcpu")
    ex.submit(lambda: setattr(lane, "paused", True)).result(OS_EDGE_TIMEOUT)
    ran: list[str] = []
    held = ex.submit(lambda: ran.append("paused work"), lane)
    # later work on another lane runs; the paused lane's stays queued, in order
    ex.submit(lambda: ran.append("other")).result(OS_EDGE_TIMEOUT)
    assert ran == ["other"] and not held.done()
    ex.submit(lambda: setattr(lane, "paused", False)).result(OS_EDGE_TIMEOUT)
    held.result(OS_EDGE_TIMEOUT)
    assert ran == ["other", "paused work"]


def test_stop_fails_what_is_left_and_what_comes_later() -> None:
    ex = Scheduler(MonotonicClock())
    t = threading.Thread(target=ex.serve, daemon=True)
    t.start()
    lane = ex.lane("stuck")
    ex.submit(lambda: setattr(lane, "paused", True)).result(OS_EDGE_TIMEOUT)
    left = ex.submit(lambda: None, lane)
    waiting = threading.Event()

    def wait_forever() -> None:
        waiting.set()
        ex.run_until(lambda: False)  # no deadline: waits for posts until stopped

    nested = ex.submit(wait_forever)
    assert waiting.wait(OS_EDGE_TIMEOUT)
    bounded_waiting = threading.Event()

    def wait_bounded() -> bool:
        bounded_waiting.set()
        # far beyond the join's bound below: only the stop can end it in time
        return ex.wait_until(lambda: False, 10 * OS_EDGE_TIMEOUT)

    bounded = ex.submit(wait_bounded, ex.lane("other"))
    assert bounded_waiting.wait(OS_EDGE_TIMEOUT)
    ex.stop()
    t.join(OS_EDGE_TIMEOUT)
    assert not t.is_alive()
    # a stop ends a bounded wait at once, as a timeout; an unbounded one as a Deadlock
    assert bounded.result(0) is False
    with pytest.raises(Deadlock):
        nested.result(0)
    with pytest.raises(ExecutorStopped):
        left.result(0)
    with pytest.raises(ExecutorStopped):
        ex.submit(lambda: None).result(0)


def test_the_virtual_clock_cannot_serve_and_real_time_cannot_advance() -> None:
    with pytest.raises(RuntimeError):
        Scheduler().serve()
    with pytest.raises(RuntimeError):
        Scheduler(MonotonicClock()).advance(1.0)
