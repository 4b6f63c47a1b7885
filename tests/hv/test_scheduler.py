"""Deterministic mode: no vCPU threads, FIFO order, the same trace on every run."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.hv.conftest import vcpu_threads
from xenpci.hv import Deadlock, DomainDead, Hypervisor

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
