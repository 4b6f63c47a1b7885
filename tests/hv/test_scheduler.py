"""Deterministic mode: no vCPU threads, FIFO order, the same trace on every run."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hv.conftest import vcpu_threads
from xenpci.hv import Deadlock, DomainDead, Hypervisor
from xenpci.hv.clock import Deadline, MonotonicClock, VirtualClock
from xenpci.hv.scheduler import Scheduler, SteppedVcpu

pytestmark = pytest.mark.timeout(30)


def ping_pong(rounds: int) -> tuple[list[tuple[str, int, dict[str, Any]]], list[str]]:
    hv = Hypervisor(deterministic=True, ram_frames=1024, dom0_memory_kib=64)
    try:
        a = hv.create_domain("a", 64)
        b = hv.create_domain("b", 64)
        log: list[str] = []
        pa = a.hypercalls.evtchn_alloc_unbound(b.domid)
        pb = b.hypercalls.evtchn_bind_interdomain(a.domid, pa)

        def on_a(port: int) -> None:
            log.append(f"a{len(log)}:{threading.current_thread().name}")
            if len(log) < 2 * rounds:
                a.hypercalls.evtchn_send(port)

        def on_b(port: int) -> None:
            log.append(f"b{len(log)}")
            b.hypercalls.evtchn_send(port)

        a.hypercalls.evtchn_set_handler(pa, on_a)
        b.hypercalls.evtchn_set_handler(pb, on_b)
        a.hypercalls.evtchn_send(pa)
        assert log == []  # nothing runs until driven
        ran = hv.run_until_idle()
        assert ran == 2 * rounds
        return [(e.kind, e.domid, dict(e.args)) for e in hv.trace.events], log
    finally:
        hv.shutdown()


def test_no_threads_and_the_same_trace_every_run() -> None:
    before = set(vcpu_threads())
    first, log = ping_pong(5)
    assert set(vcpu_threads()) == before
    second, log2 = ping_pong(5)
    assert first == second and log == log2
    main = threading.current_thread().name
    assert log[:2] == ["b0", f"a1:{main}"]
    assert len(log) == 10


def test_call_drives_the_queue_and_reports_deadlock() -> None:
    hv = Hypervisor(deterministic=True, ram_frames=1024, dom0_memory_kib=64)
    try:
        g = hv.create_domain("g", 64)
        order: list[str] = []
        g.run(order.append, "queued first")
        assert g.call(lambda: order.append("then call") or len(order)) == 2
        assert order == ["queued first", "then call"]
        # dom0 waits on the guest, which waits on dom0: a real deadlock, reported.
        with pytest.raises(Deadlock) as e:
            hv.dom0.call(lambda: g.call(lambda: hv.dom0.call(lambda: 1)))
        assert e.value.errno == "EDEADLK"
        assert g.call(lambda: "recovered") == "recovered"
    finally:
        hv.shutdown()


def test_destroy_abandons_queued_work() -> None:
    hv = Hypervisor(deterministic=True, ram_frames=1024, dom0_memory_kib=64)
    try:
        g = hv.create_domain("g", 64)
        fut = g.run(lambda: "never")
        hv.destroy_domain(g.domid)
        with pytest.raises(DomainDead):
            fut.result(0)
        with pytest.raises(DomainDead):
            g.run(lambda: None)
    finally:
        hv.shutdown()


def test_handler_errors_are_recorded_and_the_machine_goes_on() -> None:
    hv = Hypervisor(deterministic=True, ram_frames=1024, dom0_memory_kib=64)
    try:
        g = hv.create_domain("g", 64)
        pg = g.hypercalls.evtchn_alloc_unbound(0)
        p0 = hv.dom0.hypercalls.evtchn_bind_interdomain(g.domid, pg)
        g.hypercalls.evtchn_set_handler(pg, lambda port: [][port])
        hv.dom0.hypercalls.evtchn_send(p0)
        fut = g.run(lambda: "after")
        assert hv.run_until_idle() == 2
        assert hv.trace.count("vcpu_exception", domid=g.domid) == 1
        assert fut.result(0) == "after"
    finally:
        hv.shutdown()


# -- the executor: clock, timers, advance, waits ------------------------------------


def test_timers_fire_in_deadline_order_each_at_its_own_time() -> None:
    ex = Scheduler()
    seen: list[tuple[str, float]] = []
    for name, when in (("c", 3.0), ("a", 1.0), ("b", 2.0), ("a2", 1.0)):
        ex.call_at(when, lambda n=name: seen.append((n, ex.clock.now())))
    dropped = ex.call_later(1.5, lambda: seen.append(("cancelled", ex.clock.now())))
    dropped.cancel()
    assert ex.run_until_idle() == 0 and seen == []  # run_until_idle never moves time
    ex.advance(2.5)
    assert seen == [("a", 1.0), ("a2", 1.0), ("b", 2.0)]  # same deadline: FIFO
    assert ex.clock.now() == 2.5
    ex.advance(0.5)
    assert seen[-1] == ("c", 3.0) and ex.next_deadline() is None
    with pytest.raises(ValueError):
        ex.advance(-1)


def test_work_a_timer_causes_runs_before_time_moves_on() -> None:
    ex = Scheduler()
    lane = ex.lane("worker")
    seen: list[tuple[str, float]] = []

    def tick() -> None:
        seen.append(("tick", ex.clock.now()))
        lane.post(lambda: seen.append(("work", ex.clock.now())))
        if ex.clock.now() < 3.0:
            ex.call_later(1.0, tick)

    ex.call_later(1.0, tick)
    ex.advance(10.0)
    assert seen == [(k, float(t)) for t in (1, 2, 3) for k in ("tick", "work")]


def test_wait_until_jumps_to_the_deadline_only_when_nothing_can_run() -> None:
    ex = Scheduler()
    flag: list[int] = []
    assert not ex.wait_until(lambda: bool(flag), 2.0)
    assert ex.clock.now() == 2.0
    ex.call_later(0.5, lambda: flag.append(1))
    assert ex.wait_until(lambda: bool(flag), 2.0)
    assert ex.clock.now() == 2.5  # woken by the timer, not at the deadline
    flag.clear()
    ex.spawn(lambda: flag.append(2))
    assert ex.wait_until(lambda: bool(flag), 2.0) and ex.clock.now() == 2.5


def test_errors_of_domainless_work_are_kept_and_the_executor_goes_on() -> None:
    ex = Scheduler()
    ex.spawn(lambda: [][1])
    ex.spawn(lambda: None)
    assert ex.run_until_idle() == 2
    assert [type(e) for e in ex.errors] == [IndexError]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("post"), st.sampled_from("ab")),
            st.tuples(st.just("timer"), st.sampled_from("ab")),
            st.tuples(st.just("pause"), st.just("a")),
            st.tuples(st.just("unpause"), st.just("a")),
            st.tuples(st.just("advance"), st.sampled_from("ab")),
            st.tuples(st.just("idle"), st.sampled_from("ab")),
        ),
        max_size=40,
    )
)
def test_a_paused_vcpu_runs_nothing_and_keeps_its_order(ops: list[tuple[str, str]]) -> None:
    """Whatever is posted, fired or advanced, a paused vCPU runs nothing; unpaused, it
    runs what it was given in the order it was given, and the other vCPU never waits."""
    hv = Hypervisor(deterministic=True, ram_frames=1024, dom0_memory_kib=64)
    try:
        assert hv.scheduler is not None
        ex = hv.scheduler
        doms = {"a": hv.create_domain("a", 64), "b": hv.create_domain("b", 64)}
        ran: dict[str, list[tuple[str, int]]] = {"a": [], "b": []}
        given_: dict[str, list[tuple[str, int]]] = {"a": [], "b": []}
        paused = {"a": False}
        for n, (op, who) in enumerate(ops):
            dom = doms[who]

            def item(who: str = who, tag: tuple[str, int] = (op, n)) -> None:
                assert not paused.get(who), "a paused vCPU ran"
                ran[who].append(tag)

            if op == "post":
                given_[who].append((op, n))
                dom.run(item)
            elif op == "timer":
                given_[who].append((op, n))
                assert isinstance(dom.vcpu, SteppedVcpu)
                ex.call_later(0.25, item, lane=dom.vcpu)
            elif op == "pause" and not paused["a"]:
                hv.dom0.hypercalls.domctl_pausedomain(dom.domid)
                paused["a"] = True
            elif op == "unpause" and paused["a"]:
                hv.dom0.hypercalls.domctl_unpausedomain(dom.domid)
                paused["a"] = False
            elif op == "advance":
                ex.advance(0.25)
            elif op == "idle":
                ex.run_until_idle()
        ex.advance(1.0)

        def in_order(got: list[tuple[str, int]], want: list[tuple[str, int]]) -> None:
            # Posts run in the order posted, timers in deadline order (here: set-up
            # order); the two interleave by when each became due.
            for kind in ("post", "timer"):
                assert [t for t in got if t[0] == kind] == [t for t in want if t[0] == kind]

        assert sorted(ran["b"]) == sorted(given_["b"])
        in_order(ran["b"], given_["b"])
        if paused["a"]:
            hv.dom0.hypercalls.domctl_unpausedomain(doms["a"].domid)
            paused["a"] = False
            ex.run_until_idle()
        assert sorted(ran["a"]) == sorted(given_["a"])
        in_order(ran["a"], given_["a"])
    finally:
        hv.shutdown()


def test_clocks_and_deadlines() -> None:
    virtual = VirtualClock(10.0)
    d = Deadline(virtual, 2.0)
    assert (d.when, d.remaining(), d.expired()) == (12.0, 2.0, False)
    virtual.advance(1.5)
    assert d.remaining() == 0.5 and not d.expired()
    virtual.jump_to(11.0)  # a deadline in the past: time never goes back
    assert virtual.now() == 11.5
    virtual.jump_to(12.0)
    assert d.expired() and d.remaining() == 0.0
    with pytest.raises(ValueError):
        virtual.advance(-0.1)
    real = MonotonicClock()
    first = real.now()
    assert real.now() >= first  # monotonic, whatever the load
