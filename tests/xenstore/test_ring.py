"""A model guest reaches xenstored over its own ring page and event channel.

The threaded machine: each domain's vCPU is a thread (the deterministic one is
in test_ring_executor.py). Nothing here sleeps or polls. xenstored's ring
service runs as dom0's event upcall, and an upcall is queued on dom0's vCPU when
the guest signals; so a call queued on dom0's vCPU after the signal returns only
once xenstored has handled it (:func:`_dom0_barrier`). Waits for another thread
are bounded by the suite's OS-edge bound.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import OS_EDGE_TIMEOUT
from xenpci.abi import xs_wire as w
from xenpci.hv import Hypervisor
from xenpci.xenstore import Perms, XenStore, XsError
from xenpci.xenstore.client import WatchEvent, XsClient
from xenpci.xenstore.errors import ConnectionClosed
from xenpci.xenstore.ring import (
    REQ,
    REQ_CONS,
    REQ_PROD,
    RSP_CONS,
    RSP_PROD,
    GuestRing,
    RingIndexError,
    XenstoredRings,
    _get,
    ring_read,
    ring_write,
)
from xenpci.xenstore.wire import encode

pytestmark = pytest.mark.timeout(60)


@dataclass
class Machine:
    hv: Hypervisor
    store: XenStore
    rings: XenstoredRings
    dom0: XsClient


@pytest.fixture
def machine() -> Iterator[Machine]:
    hv = Hypervisor(iommu=True)
    store = XenStore()
    rings = XenstoredRings(store, hv.dom0)
    dom0 = XsClient.in_process(store, 0)
    try:
        yield Machine(hv, store, rings, dom0)
    finally:
        dom0.close()
        hv.shutdown()


def _dom0_barrier(m: Machine) -> None:
    """Return once dom0's vCPU has run everything queued on it before this call."""
    m.hv.dom0.call(lambda: None, timeout=OS_EDGE_TIMEOUT)


def boot_guest(m: Machine, name: str) -> tuple[int, GuestRing, XsClient]:
    dom = m.hv.create_domain(name, 16 * 1024)
    ring = GuestRing(dom)
    # Toolstack: the guest's home with the guest as owner, then INTRODUCE.
    home = f"/local/domain/{dom.domid}"
    m.dom0.mkdir(home)
    m.dom0.set_perms(home, Perms.of(f"n{dom.domid}"))
    m.dom0.introduce_domain(dom.domid, ring.gref, ring.port)
    return dom.domid, ring, XsClient.ring(ring)


def test_guest_sees_its_home_and_nothing_else(machine: Machine) -> None:
    domid, _, g = boot_guest(machine, "guest1")
    other, _, g2 = boot_guest(machine, "guest2")
    try:
        assert g.get_domain_path(domid) == f"/local/domain/{domid}"
        g.write("device/pci/0/state", "1")  # relative: its own home
        assert machine.dom0.read(f"/local/domain/{domid}/device/pci/0/state") == b"1"
        assert g.get_perms("device/pci/0/state") == Perms.of(f"n{domid}")
        for path in ("/local/domain/0/name", f"/local/domain/{other}", "/tool/xenstored"):
            with pytest.raises(XsError) as ei:
                g.read(path)
            assert ei.value.code == "EACCES"
        with pytest.raises(XsError) as ei:
            g.write(f"/local/domain/{other}/x", "evil")
        assert ei.value.code == "EACCES"
        with pytest.raises(XsError) as ei:
            g.introduce_domain(99, 1, 1)
        assert ei.value.code == "EACCES"
        # Large values cross the 1 KiB ring in several chunks each way.
        g.write("big", b"z" * 1900)
        assert g.read("big") == b"z" * 1900
        assert g2.ls(f"/local/domain/{other}") == []
    finally:
        g.close()
        g2.close()


def test_watch_over_ring_and_release(machine: Machine) -> None:
    domid, _, g = boot_guest(machine, "watcher")
    got: list[WatchEvent] = []
    seen = threading.Event()

    def cb(ev: WatchEvent) -> None:
        got.append(ev)
        if len(got) == 2:
            seen.set()

    g.watch("backend", "be", cb)
    machine.dom0.write(f"/local/domain/{domid}/backend/pci", "x")
    assert seen.wait(OS_EDGE_TIMEOUT)  # the client's xenwatch worker, a thread
    assert got == [WatchEvent("backend", "be"), WatchEvent("backend/pci", "be")]
    machine.dom0.release_domain(domid)
    with pytest.raises(XsError):
        machine.dom0.read(f"/local/domain/{domid}")
    g.close()


def test_ring_index_arithmetic_wraps() -> None:
    buf = memoryview(bytearray(4096))
    struct.pack_into("<II", buf, REQ_CONS, 0xFFFFFF00, 0xFFFFFF00)
    data = bytes(range(256)) * 4
    assert ring_write(buf, REQ, REQ_PROD, REQ_CONS, data + b"extra") == w.XENSTORE_RING_SIZE
    assert ring_read(buf, REQ, REQ_PROD, REQ_CONS) == data
    assert struct.unpack_from("<II", buf, REQ_CONS) == (0x300, 0x300)  # wrapped


def test_bad_ring_indexes_cut_off_that_guest_only(machine: Machine) -> None:
    _, ring, g = boot_guest(machine, "hostile")
    _, _, good = boot_guest(machine, "good")
    try:
        g.write("ok", "1")
        # The guest claims 4000 bytes of requests on a 1 KiB ring.
        struct.pack_into(
            "<I", ring.buf, REQ_PROD, struct.unpack_from("<I", ring.buf, REQ_CONS)[0] + 4000
        )
        ring.hc.evtchn_send(ring.port)
        _dom0_barrier(machine)  # xenstored has looked at the ring
        assert ring.error == w.XENSTORE_ERROR_RINGIDX
        with pytest.raises(ConnectionClosed):
            g.read("ok")
        good.write("still", "works")
        assert good.read("still") == b"works"
    finally:
        g.close()
        good.close()


def test_oversized_frame_on_ring_sets_proto_error(machine: Machine) -> None:
    _, ring, g = boot_guest(machine, "proto")
    try:
        with pytest.raises(ConnectionClosed):
            ring.request(encode(w.XS_READ, 0, 0, b"")[:12] + struct.pack("<I", 5000))
        assert ring.error == w.XENSTORE_ERROR_PROTO
        assert machine.dom0.read("/local/domain/0/name") == b"Domain-0"
    finally:
        g.close()


def test_requests_are_traced_with_the_guest_domid() -> None:
    hv = Hypervisor(iommu=True)
    store = XenStore(trace=hv.trace)
    m = Machine(hv, store, XenstoredRings(store, hv.dom0), XsClient.in_process(store, 0))
    try:
        domid, _, g = boot_guest(m, "traced")
        with pytest.raises(XsError):
            g.read("/local/domain/0/name")
        g.close()
        recs = [e for e in hv.trace.events if e.kind == "xenstore_request"]
        mine = [(e.args["op"], e.args["result"]) for e in recs if e.domid == domid]
        assert ("XS_READ", "EACCES") in mine
        assert all(e.path == "dom0" for e in recs)
        assert ("XS_INTRODUCE", "OK") in [(e.args["op"], e.args["result"]) for e in recs]
    finally:
        m.dom0.close()
        hv.shutdown()


def test_close_fails_a_request_waiting_for_its_reply_at_once(
    machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guest's vCPU is paused, so the reply it would deliver never comes; closing the
    ring (the domain is being destroyed) fails the waiting request with ConnectionClosed
    instead of leaving it for the 30 s reply timeout."""
    domid, ring, g = boot_guest(machine, "guest1")
    g.write("data/x", "1")
    machine.hv.dom0.hypercalls.domctl_pausedomain(domid)
    outcome: list[BaseException | bytes] = []
    sent = threading.Event()
    real_send = ring.hc.evtchn_send

    def send(port: int) -> None:
        real_send(port)
        if port == ring.port:
            sent.set()  # the request is on the req ring and xenstored is signalled

    monkeypatch.setattr(ring.hc, "evtchn_send", send)

    def read() -> None:
        try:
            outcome.append(g.read("data/x"))
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=read)
    t.start()
    try:
        assert sent.wait(OS_EDGE_TIMEOUT)
        _dom0_barrier(machine)  # xenstored has answered...
        # ...onto rsp, where it stays: the vCPU that would read it is paused.
        assert _get(ring.buf, RSP_PROD) != _get(ring.buf, RSP_CONS)
        assert t.is_alive() and outcome == []  # in flight
        ring.close()
        t.join(OS_EDGE_TIMEOUT)
        assert not t.is_alive()
    finally:
        ring.close()
        machine.hv.dom0.hypercalls.domctl_unpausedomain(domid)
        t.join(OS_EDGE_TIMEOUT)
    assert len(outcome) == 1 and isinstance(outcome[0], ConnectionClosed), outcome
    # Woken by the close, not by the reply timeout ("no reply from xenstored"). The
    # request may be past its send but not yet waiting for the reply: either wording.
    assert str(outcome[0]) in (
        "ring closed while waiting for the reply",
        "ring closed while waiting for space",
    )
    with pytest.raises(ConnectionClosed):
        g.read("data/x")  # and nothing more goes through a closed ring


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, 0xFFFFFFFF),
    steps=st.lists(
        st.tuples(st.booleans(), st.integers(0, 1500), st.one_of(st.none(), st.integers(0, 1100))),
        max_size=25,
    ),
)
def test_ring_read_and_write_match_a_byte_queue(
    start: int, steps: list[tuple[bool, int, int | None]]
) -> None:
    """Writes and reads of any size, at any free-running index (wrapping the ring and
    the u32), move exactly the bytes a FIFO of XENSTORE_RING_SIZE bytes would, and the
    indexes advance by what moved (an empty read or a full write leaves them as
    they were, with the other half of the page untouched)."""
    page = bytearray(4096)
    buf = memoryview(page)
    struct.pack_into("<II", buf, REQ_CONS, start, start)
    queue_ = bytearray()
    counter = 0
    for is_write, n, limit in steps:
        cons, prod = struct.unpack_from("<II", buf, REQ_CONS)
        before = bytes(page[w.XENSTORE_RING_SIZE : REQ_CONS])  # the rsp ring: never touched
        if is_write:
            src = bytes((counter + i) & 0xFF for i in range(n))
            counter += n
            took = ring_write(buf, REQ, REQ_PROD, REQ_CONS, src)
            assert took == min(n, w.XENSTORE_RING_SIZE - len(queue_))
            queue_ += src[:took]
            assert struct.unpack_from("<II", buf, REQ_CONS) == (cons, (prod + took) & 0xFFFFFFFF)
        else:
            got = ring_read(buf, REQ, REQ_PROD, REQ_CONS, limit)
            want = bytes(queue_[: len(queue_) if limit is None else limit])
            assert got == want
            del queue_[: len(got)]
            assert struct.unpack_from("<II", buf, REQ_CONS) == (
                (cons + len(got)) & 0xFFFFFFFF,
                prod,
            )
        assert bytes(page[w.XENSTORE_RING_SIZE : REQ_CONS]) == before


def test_ring_read_and_write_refuse_indexes_more_than_a_ring_apart() -> None:
    buf = memoryview(bytearray(4096))
    struct.pack_into("<II", buf, REQ_CONS, 5, 5 + w.XENSTORE_RING_SIZE + 1)
    with pytest.raises(RingIndexError):
        ring_read(buf, REQ, REQ_PROD, REQ_CONS)
    with pytest.raises(RingIndexError):
        ring_write(buf, REQ, REQ_PROD, REQ_CONS, b"x")
