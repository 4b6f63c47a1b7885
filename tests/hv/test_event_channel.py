"""Event channels: binding, delivery on the receiver's vCPU, mask/pending, errors."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from tests.conftest import OS_EDGE_TIMEOUT
from tests.hv.conftest import drain
from xenpci.hv import NR_EVTCHN_PORTS, Domain, EvtchnError, Hypervisor, NoSuchDomain, PortState

pytestmark = pytest.mark.timeout(30)

#: These tests are of the threaded mode (a vCPU is an OS thread): a bound on its waits.


def connect(a: Domain, b: Domain) -> tuple[int, int]:
    pa = a.hypercalls.evtchn_alloc_unbound(b.domid)
    pb = b.hypercalls.evtchn_bind_interdomain(a.domid, pa)
    return pa, pb


def recorder(dom: Domain) -> tuple[list[tuple[int, str]], threading.Event]:
    return [], threading.Event()


def handler_of(got: list[tuple[int, str]], ev: threading.Event) -> Callable[[int], None]:
    def handler(port: int) -> None:
        got.append((port, threading.current_thread().name))
        ev.set()

    return handler


def test_send_runs_the_handler_on_the_receivers_thread(hv: Hypervisor, guest: Domain) -> None:
    pg, p0 = connect(guest, hv.dom0)
    got, ev = recorder(guest)
    guest.hypercalls.evtchn_set_handler(pg, handler_of(got, ev))
    hv.dom0.hypercalls.evtchn_send(p0)
    assert ev.wait(OS_EDGE_TIMEOUT)
    assert got == [(pg, "d1v0-guest")]
    st = guest.hypercalls.evtchn_status(pg)
    assert st.state is PortState.INTERDOMAIN and (st.remote_domid, st.remote_port) == (0, p0)
    assert hv.evtchn.upcalls(guest.domid) == 1
    (send,) = [e for e in hv.trace.events if e.kind == "evtchn_send"]
    assert (send.domid, send.path) == (0, "dom0")
    assert send.args == {"port": p0, "to_domid": guest.domid, "to_port": pg}


def test_ping_pong(hv: Hypervisor, guest: Domain) -> None:
    pg, p0 = connect(guest, hv.dom0)
    done = threading.Event()
    counts = {"g": 0, "d0": 0}

    def on_guest(port: int) -> None:
        counts["g"] += 1
        guest.hypercalls.evtchn_send(port)

    def on_dom0(port: int) -> None:
        counts["d0"] += 1
        if counts["d0"] == 100:
            done.set()
        else:
            hv.dom0.hypercalls.evtchn_send(port)

    guest.hypercalls.evtchn_set_handler(pg, on_guest)
    hv.dom0.hypercalls.evtchn_set_handler(p0, on_dom0)
    hv.dom0.hypercalls.evtchn_send(p0)
    assert done.wait(OS_EDGE_TIMEOUT)
    assert counts == {"g": 100, "d0": 100}


def test_mask_keeps_pending_and_unmask_delivers(hv: Hypervisor, guest: Domain) -> None:
    pg, p0 = connect(guest, hv.dom0)
    got: list[int] = []
    guest.hypercalls.evtchn_set_handler(pg, got.append)
    guest.hypercalls.evtchn_mask(pg)
    for _ in range(3):
        hv.dom0.hypercalls.evtchn_send(p0)
    drain(guest)
    assert got == [] and guest.hypercalls.evtchn_pending(pg)
    guest.hypercalls.evtchn_unmask(pg)
    drain(guest)
    assert got == [pg]  # three sends coalesced into one pending bit
    assert not guest.hypercalls.evtchn_pending(pg)


def test_no_handler_leaves_the_bit_pending_for_polling(hv: Hypervisor, guest: Domain) -> None:
    pg, p0 = connect(guest, hv.dom0)
    hv.dom0.hypercalls.evtchn_send(p0)
    assert guest.hypercalls.evtchn_pending(pg)
    got: list[int] = []
    guest.hypercalls.evtchn_set_handler(pg, got.append)
    drain(guest)
    assert got == [pg]


def test_close_unbinds_the_peer_and_sending_is_an_error(hv: Hypervisor, guest: Domain) -> None:
    pg, p0 = connect(guest, hv.dom0)
    guest.hypercalls.evtchn_close(pg)
    st = hv.dom0.hypercalls.evtchn_status(p0)
    assert st.state is PortState.UNBOUND and st.remote_domid == guest.domid
    with pytest.raises(EvtchnError) as e:
        hv.dom0.hypercalls.evtchn_send(p0)
    assert e.value.errno == "ENOTCONN"
    with pytest.raises(EvtchnError) as e2:
        guest.hypercalls.evtchn_send(pg)
    assert e2.value.errno == "EINVAL"
    # The guest can rebind to the now-unbound dom0 port.
    again = guest.hypercalls.evtchn_bind_interdomain(0, p0)
    assert again == pg  # lowest free port is reused
    hv.dom0.hypercalls.evtchn_send(p0)
    assert guest.hypercalls.evtchn_pending(again)


def test_upcall_queued_before_close_never_reaches_the_reused_port(
    hv: Hypervisor, guest: Domain
) -> None:
    pg, p0 = connect(guest, hv.dom0)
    got: list[str] = []
    gate = threading.Event()
    guest.run(gate.wait, 5)  # hold the guest vCPU so the upcall stays queued
    guest.hypercalls.evtchn_set_handler(pg, lambda p: got.append("old"))
    hv.dom0.hypercalls.evtchn_send(p0)
    guest.hypercalls.evtchn_close(pg)
    other = hv.create_domain("other", 64)
    po = other.hypercalls.evtchn_alloc_unbound(guest.domid)
    reused = guest.hypercalls.evtchn_bind_interdomain(other.domid, po)
    assert reused == pg
    guest.hypercalls.evtchn_set_handler(reused, lambda p: got.append("new"))
    gate.set()
    drain(guest)
    assert got == []


def test_bad_ports_and_domains(hv: Hypervisor, guest: Domain) -> None:
    pg, p0 = connect(guest, hv.dom0)
    hc = guest.hypercalls
    before = (hc.evtchn_status(pg), hv.evtchn.ports(0), hv.evtchn.ports(guest.domid))
    for port in (0, -1, NR_EVTCHN_PORTS, pg + 1):
        for op in (hc.evtchn_send, hc.evtchn_close, hc.evtchn_mask, hc.evtchn_unmask):
            with pytest.raises(EvtchnError) as e:
                op(port)
            assert e.value.errno == "EINVAL" and e.value.domid == guest.domid
    with pytest.raises(NoSuchDomain):
        hc.evtchn_alloc_unbound(55)
    with pytest.raises(NoSuchDomain):
        hc.evtchn_bind_interdomain(55, 1)
    with pytest.raises(EvtchnError):
        hc.evtchn_bind_interdomain(0, p0)  # already bound
    third = hv.create_domain("third", 64)
    p3 = third.hypercalls.evtchn_alloc_unbound(0)  # unbound for dom0, not for the guest
    with pytest.raises(EvtchnError):
        hc.evtchn_bind_interdomain(third.domid, p3)
    after = (hc.evtchn_status(pg), hv.evtchn.ports(0), hv.evtchn.ports(guest.domid))
    assert after == before


def test_handler_exception_does_not_kill_the_vcpu(hv: Hypervisor, guest: Domain) -> None:
    pg, p0 = connect(guest, hv.dom0)
    guest.hypercalls.evtchn_set_handler(pg, lambda p: 1 // 0)  # type: ignore[func-returns-value]
    hv.dom0.hypercalls.evtchn_send(p0)
    drain(guest)
    assert hv.trace.count("vcpu_exception", domid=guest.domid) == 1
    assert guest.call(lambda: 5) == 5


def test_destroying_a_domain_unbinds_its_peers(hv: Hypervisor, guest: Domain) -> None:
    _pg, p0 = connect(guest, hv.dom0)
    hv.destroy_domain(guest.domid)
    assert hv.dom0.hypercalls.evtchn_status(p0).state is PortState.UNBOUND
    with pytest.raises(EvtchnError):
        hv.dom0.hypercalls.evtchn_send(p0)


def test_a_refused_send_is_traced_with_its_errno_and_nothing_is_signalled(
    hv: Hypervisor, guest: Domain
) -> None:
    """``evtchn_send`` on a port that is not connected: one ``evtchn_send`` record with
    the port and the error (no ``to_domid``), the exception raised, no peer pending;
    a good send then records where it went, and ``EventChannels.send`` returns it."""
    pg, p0 = connect(guest, hv.dom0)
    unbound = guest.hypercalls.evtchn_alloc_unbound(0)
    with pytest.raises(EvtchnError) as e:
        guest.hypercalls.evtchn_send(unbound)
    assert e.value.errno == "ENOTCONN"
    sends = [ev for ev in hv.trace.events if ev.kind == "evtchn_send"]
    assert [(ev.domid, dict(ev.args)) for ev in sends] == [
        (guest.domid, {"port": unbound, "error": "ENOTCONN"})
    ]
    assert not hv.evtchn.pending(0, p0)
    assert hv.evtchn.send(guest.domid, pg) == (0, p0)
    assert hv.evtchn.pending(0, p0)
    guest.hypercalls.evtchn_send(pg)  # coalesced: still one pending bit, but recorded
    sends = [ev for ev in hv.trace.events if ev.kind == "evtchn_send"]
    assert dict(sends[-1].args) == {"port": pg, "to_domid": 0, "to_port": p0}
