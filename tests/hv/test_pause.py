"""``XEN_DOMCTL_pausedomain`` / ``unpausedomain``: Xen's counted controller pause.

The truth checked is ``xen/common/domain.c`` (``_domain_pause_by_systemcontroller``,
``domain_unpause_by_systemcontroller``) and ``do_domctl``: dom0 only (``EPERM``
under XSM's default policy), not on itself (``EINVAL``), at most 255 pauses
(``EOVERFLOW``), an unpause with none outstanding ``EINVAL``, an unknown domain
``ESRCH``; a paused vCPU starts nothing, and what was queued runs in order on the
last unpause; the pause returns only once the vCPU is off the CPU.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.conftest import EXPECTED_TIMEOUT, OS_EDGE_TIMEOUT
from xenpci.hv import (
    MAX_CONTROLLER_PAUSES,
    Domain,
    DomainDead,
    HvError,
    Hypervisor,
    InvalidArgument,
    NoSuchDomain,
    PermissionDenied,
)

pytestmark = pytest.mark.timeout(30)

#: Bounds the waits on the threaded vCPU tests, which test an OS edge (real threads).


def test_errors_are_xens(hv: Hypervisor, guest: Domain) -> None:
    dom0 = hv.dom0.hypercalls
    with pytest.raises(PermissionDenied) as denied:
        guest.hypercalls.domctl_pausedomain(0)
    assert denied.value.errno == "EPERM"
    with pytest.raises(PermissionDenied):
        guest.hypercalls.domctl_unpausedomain(guest.domid)
    with pytest.raises(InvalidArgument) as itself:
        dom0.domctl_pausedomain(0)  # do_domctl: d == current->domain
    assert itself.value.errno == "EINVAL"
    with pytest.raises(NoSuchDomain) as missing:
        dom0.domctl_pausedomain(99)
    assert missing.value.errno == "ESRCH"
    with pytest.raises(InvalidArgument) as never:
        dom0.domctl_unpausedomain(guest.domid)  # never paused
    assert never.value.errno == "EINVAL"
    assert not guest.paused and guest.controller_pause_count == 0


def test_count_is_capped_at_255(dhv: Hypervisor, dguest: Domain) -> None:
    hv, guest = dhv, dguest
    assert hv.scheduler is not None
    dom0 = hv.dom0.hypercalls
    for _ in range(MAX_CONTROLLER_PAUSES):
        dom0.domctl_pausedomain(guest.domid)
    with pytest.raises(HvError) as e:
        dom0.domctl_pausedomain(guest.domid)
    assert e.value.errno == "EOVERFLOW"
    assert guest.controller_pause_count == MAX_CONTROLLER_PAUSES  # the failure changed nothing
    ran: list[int] = []
    fut = guest.run(ran.append, 1)
    for _ in range(MAX_CONTROLLER_PAUSES - 1):
        dom0.domctl_unpausedomain(guest.domid)
    hv.scheduler.advance(60.0)  # any amount of time: a paused vCPU runs nothing
    assert guest.paused and ran == []  # still one pause outstanding
    dom0.domctl_unpausedomain(guest.domid)
    hv.run_until_idle()
    assert fut.done() and ran == [1] and not guest.paused


def test_queued_work_waits_then_runs_in_order(dhv: Hypervisor, dguest: Domain) -> None:
    hv, guest = dhv, dguest
    assert hv.scheduler is not None
    dom0 = hv.dom0.hypercalls
    dom0.domctl_pausedomain(guest.domid)
    ran: list[int] = []
    futures = [guest.run(ran.append, i) for i in range(50)]
    hv.scheduler.advance(60.0)
    assert ran == [] and not any(f.done() for f in futures)
    dom0.domctl_unpausedomain(guest.domid)
    hv.run_until_idle()
    assert all(f.done() for f in futures) and ran == list(range(50))


def test_event_upcalls_wait_for_unpause(dhv: Hypervisor, dguest: Domain) -> None:
    """An event sent to a paused guest stays pending; its upcall runs on unpause."""
    hv, guest = dhv, dguest
    assert hv.scheduler is not None
    port = guest.hypercalls.evtchn_alloc_unbound(0)
    got: list[int] = []
    guest.hypercalls.evtchn_set_handler(port, got.append)
    local = hv.dom0.hypercalls.evtchn_bind_interdomain(guest.domid, port)
    hv.dom0.hypercalls.domctl_pausedomain(guest.domid)
    hv.dom0.hypercalls.evtchn_send(local)
    hv.scheduler.advance(60.0)
    assert got == [] and hv.evtchn.pending(guest.domid, port)
    hv.dom0.hypercalls.domctl_unpausedomain(guest.domid)
    hv.run_until_idle()
    assert got == [port]


def test_pause_waits_for_the_call_in_progress(hv: Hypervisor, guest: Domain) -> None:
    """vcpu_sleep_sync: when the domctl returns, the vCPU is not running anything.

    Threaded mode (the vCPU is an OS thread): what the pause saw when it returned
    is recorded by the pausing thread itself, so nothing here depends on timing.
    """
    inside, release = threading.Event(), threading.Event()
    finished: list[str] = []
    seen_by_pause: list[list[str]] = []

    def busy() -> None:
        inside.set()
        release.wait(OS_EDGE_TIMEOUT)
        finished.append("busy")

    def pause() -> None:
        hv.dom0.hypercalls.domctl_pausedomain(guest.domid)
        seen_by_pause.append(list(finished))

    guest.run(busy)
    assert inside.wait(OS_EDGE_TIMEOUT)
    pauser = threading.Thread(target=pause)
    pauser.start()
    while not guest.vcpu.paused:  # flagged: the pauser now waits for busy() to end
        os.sched_yield()
    after = guest.run(finished.append, "after")
    release.set()
    pauser.join(OS_EDGE_TIMEOUT)
    assert seen_by_pause == [["busy"]]  # it returned only once busy() had ended
    assert not after.done()  # queued behind the pause
    hv.dom0.hypercalls.domctl_unpausedomain(guest.domid)
    after.result(timeout=OS_EDGE_TIMEOUT)
    assert finished == ["busy", "after"]


def test_a_vcpu_stuck_in_a_call_makes_the_pause_ebusy_and_undone(
    hv: Hypervisor, guest: Domain
) -> None:
    inside, release = threading.Event(), threading.Event()

    def stuck() -> None:
        inside.set()
        release.wait(OS_EDGE_TIMEOUT)

    guest.run(stuck)
    assert inside.wait(OS_EDGE_TIMEOUT)
    try:
        with pytest.raises(HvError) as e:
            guest.pause_by_systemcontroller(timeout=EXPECTED_TIMEOUT)
        assert e.value.errno == "EBUSY"
        assert not guest.paused and guest.controller_pause_count == 0
    finally:
        release.set()
    assert guest.call(lambda: 7, timeout=OS_EDGE_TIMEOUT) == 7  # running normally again


def test_destroying_a_paused_domain_is_prompt_and_runs_nothing(
    hv: Hypervisor, guest: Domain
) -> None:
    hv.dom0.hypercalls.domctl_pausedomain(guest.domid)
    ran: list[int] = []
    futures = [guest.run(ran.append, i) for i in range(3)]
    t0 = time.monotonic()
    hv.destroy_domain(guest.domid)
    assert time.monotonic() - t0 < 1.0
    assert not guest.vcpu.alive and ran == []
    for f in futures:  # abandoned, not left hanging
        with pytest.raises(DomainDead):
            f.result(timeout=OS_EDGE_TIMEOUT)
    with pytest.raises(NoSuchDomain):
        hv.dom0.hypercalls.domctl_unpausedomain(guest.domid)


def test_deterministic_scheduler_skips_a_paused_vcpu() -> None:
    with Hypervisor(ram_frames=4096, dom0_memory_kib=1024, deterministic=True) as hv:
        a = hv.create_domain("a", 256)
        b = hv.create_domain("b", 256)
        ran: list[str] = []
        hv.dom0.hypercalls.domctl_pausedomain(a.domid)
        a.run(ran.append, "a1")
        b.run(ran.append, "b1")
        a.run(ran.append, "a2")
        hv.run_until_idle()
        assert ran == ["b1"]
        with pytest.raises(HvError) as e:
            a.call(lambda: None)  # waiting on a paused vCPU can never finish
        assert e.value.errno == "EDEADLK"
        hv.dom0.hypercalls.domctl_unpausedomain(a.domid)
        hv.run_until_idle()
        assert ran[:3] == ["b1", "a1", "a2"]


def test_pausing_is_traced_with_errno(hv: Hypervisor, guest: Domain) -> None:
    hv.dom0.hypercalls.domctl_pausedomain(guest.domid)
    with pytest.raises(InvalidArgument):
        hv.dom0.hypercalls.domctl_pausedomain(0)
    hv.dom0.hypercalls.domctl_unpausedomain(guest.domid)
    kinds = [
        (r.kind, r.args.get("error"))
        for r in hv.trace.events
        if r.kind in ("domctl_pausedomain", "domctl_unpausedomain")
    ]
    assert kinds == [
        ("domctl_pausedomain", None),
        ("domctl_pausedomain", "EINVAL"),
        ("domctl_unpausedomain", None),
    ]


def test_run_until_idle_does_not_wait_on_a_paused_domain(hv: Hypervisor, guest: Domain) -> None:
    other = hv.create_domain("other", 256)
    hv.dom0.hypercalls.domctl_pausedomain(guest.domid)
    ran: list[str] = []
    guest.run(ran.append, "paused")
    other.run(ran.append, "running")
    t0 = time.monotonic()
    hv.run_until_idle()
    assert time.monotonic() - t0 < 2.0 and ran == ["running"]
    hv.dom0.hypercalls.domctl_unpausedomain(guest.domid)
    hv.run_until_idle()
    assert ran == ["running", "paused"]
