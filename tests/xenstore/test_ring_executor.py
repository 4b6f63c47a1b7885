"""Guest rings on the deterministic executor: no thread, virtual-time waits, replayable runs.

In deterministic mode xenstored's ring service runs as a task on dom0's vCPU
lane (woken by the guest's event channel) and the guest's end queues its
request and runs the executor until the reply is on its rsp ring. These tests
drive only the executor: nothing sleeps, no timeout is guessed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenpci.abi import xs_wire as w
from xenpci.demo import run_demo
from xenpci.hv import Hypervisor
from xenpci.toolstack.machine import Machine
from xenpci.xenstore import Perms
from xenpci.xenstore.client import WatchEvent, XsClient, _InProcessTransport
from xenpci.xenstore.errors import ConnectionClosed
from xenpci.xenstore.ring import (
    ERROR,
    REPLY_TIMEOUT,
    REQ,
    REQ_CONS,
    REQ_PROD,
    RSP_PROD,
    GuestRing,
    _get,
    _put,
    ring_write,
)
from xenpci.xenstore.wire import encode, strings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def started_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads started while the test runs (none may be)."""
    started: list[str] = []
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return started


@pytest.fixture
def machine(started_threads: list[str]) -> Iterator[Machine]:
    m = Machine(deterministic=True)
    try:
        yield m
    finally:
        m.shutdown()
        assert started_threads == [], "the deterministic machine started threads"


def _ring_of(m: Machine, domid: int) -> GuestRing:
    transport = m.guest(domid).xs._t
    assert isinstance(transport, GuestRing)
    return transport


def test_deterministic_machine_serves_guests_over_their_rings(machine: Machine) -> None:
    assert machine.guest_xenstore == "ring"
    domid = machine.start_guest("g", 64 * 1024)
    ring = _ring_of(machine, domid)
    before = _get(ring.buf, REQ_PROD)
    xs = machine.guest(domid).xs
    xs.write("data/x", "42")
    # The bytes crossed the shared page, and xenstored consumed all of them.
    assert _get(ring.buf, REQ_PROD) > before
    assert _get(ring.buf, REQ_CONS) == _get(ring.buf, REQ_PROD)
    assert machine.xs.read(f"/local/domain/{domid}/data/x") == b"42"
    assert xs.read(f"/local/domain/{domid}/data/x") == b"42"


def test_a_paused_guest_runs_no_watch_callback_until_unpaused(machine: Machine) -> None:
    domid = machine.start_guest("g", 64 * 1024)
    xs = machine.guest(domid).xs
    seen: list[WatchEvent] = []
    xs.watch("data/w", "tok", seen.append)
    ex = machine.hv.scheduler
    assert ex is not None
    ex.run_until_idle()
    assert [e.path for e in seen] == ["data/w"]  # the watch's first event
    machine.pause_guest(domid)
    machine.xs.write(f"/local/domain/{domid}/data/w", "1")
    ex.advance(5.0)
    assert len(seen) == 1, "a paused vCPU ran a watch callback"
    machine.unpause_guest(domid)
    ex.run_until_idle()
    assert [e.path for e in seen] == ["data/w", "data/w"]


def test_a_callback_on_the_guest_lane_reads_over_the_ring(machine: Machine) -> None:
    """The upcall cannot run while the guest's lane is busy: the waiting request reads rsp."""
    domid = machine.start_guest("g", 64 * 1024)
    xs = machine.guest(domid).xs
    home = f"/local/domain/{domid}"
    got: list[bytes] = []

    def changed(ev: WatchEvent) -> None:
        if xs.exists(ev.path):
            got.append(xs.read(ev.path))

    xs.watch("data/v", "tok", changed)
    machine.xs.write(f"{home}/data/v", "hello")
    ex = machine.hv.scheduler
    assert ex is not None
    ex.run_until(lambda: bool(got))
    assert got == [b"hello"]


def test_no_reply_fails_at_the_virtual_deadline_without_waiting() -> None:
    """A guest whose ring nobody serves gets ConnectionClosed after exactly REPLY_TIMEOUT."""
    hv = Hypervisor(iommu=True, deterministic=True)
    try:
        ex = hv.scheduler
        assert ex is not None
        ring = GuestRing(hv.create_domain("lonely", 16 * 1024))  # never introduced
        start = ex.clock.now()
        with pytest.raises(ConnectionClosed, match="no reply"):
            XsClient.ring(ring).read("/")
        assert ex.clock.now() == start + REPLY_TIMEOUT
    finally:
        hv.shutdown()


def test_a_guest_that_breaks_its_indexes_is_cut_off_and_others_keep_going(
    machine: Machine,
) -> None:
    bad = machine.start_guest("bad", 64 * 1024)
    good = machine.start_guest("good", 64 * 1024)
    ring = _ring_of(machine, bad)
    ex = machine.hv.scheduler
    assert ex is not None
    # Claim more request bytes than a ring holds: XENSTORE_ERROR_RINGIDX, as C xenstored.
    _put(ring.buf, REQ_PROD, _get(ring.buf, REQ_CONS) + 5000)
    ring.hc.evtchn_send(ring.port)
    ex.run_until_idle()
    assert _get(ring.buf, ERROR) == w.XENSTORE_ERROR_RINGIDX
    assert machine.rings is not None and machine.rings.channels[bad].dead
    with pytest.raises(ConnectionClosed, match="ring error"):
        machine.guest(bad).xs.read("data")
    machine.guest(good).xs.write("data/ok", "1")
    assert machine.xs.read(f"/local/domain/{good}/data/ok") == b"1"


def test_a_flooding_guest_is_held_to_its_outstanding_quota(machine: Machine) -> None:
    """Requests whose replies cannot go out stop being consumed at C's default of 20."""
    domid = machine.start_guest("g", 64 * 1024)
    home = f"/local/domain/{domid}"
    machine.xs.write(f"{home}/data/big", b"x" * 3000)  # each reply fills the rsp ring
    machine.xs.set_perms(f"{home}/data/big", Perms.of(f"n{domid}"))
    ring = _ring_of(machine, domid)
    assert machine.rings is not None
    ex_ch = machine.rings.channels[domid]
    baseline = ex_ch.requests
    ring.close()  # the guest stops reading rsp; we write raw frames below
    frame = encode(w.XS_READ, 1, 0, strings(f"{home}/data/big"))
    ex = machine.hv.scheduler
    assert ex is not None
    sent = 0
    for _ in range(40):
        room_before = (_get(ring.buf, REQ_PROD) - _get(ring.buf, REQ_CONS)) & 0xFFFFFFFF
        if room_before + len(frame) > w.XENSTORE_RING_SIZE:
            ex.run_until_idle()
            room_before = (_get(ring.buf, REQ_PROD) - _get(ring.buf, REQ_CONS)) & 0xFFFFFFFF
            if room_before + len(frame) > w.XENSTORE_RING_SIZE:
                break  # xenstored stopped consuming
        assert ring_write(ring.buf, REQ, REQ_PROD, REQ_CONS, frame) == len(frame)
        ring.hc.evtchn_send(ring.port)
        sent += 1
        ex.run_until_idle()
    taken = ex_ch.requests - baseline
    assert taken == 20, f"xenstored took {taken} requests with no reply sent"
    assert sent > taken  # the rest wait on the ring, unconsumed
    assert _get(ring.buf, RSP_PROD) > 0  # the first reply went out as far as it fit


def test_two_deterministic_demo_runs_over_rings_give_identical_traces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_process: list[int] = []
    real_init = _InProcessTransport.__init__

    def spy(self: _InProcessTransport, conn: object) -> None:
        in_process.append(conn.domid)  # type: ignore[attr-defined]
        real_init(self, conn)  # type: ignore[arg-type]

    monkeypatch.setattr(_InProcessTransport, "__init__", spy)
    traces = []
    for n in range(2):
        report = run_demo(frames=2, blocks=16, deterministic=True)
        out = tmp_path / f"{n}.jsonl"
        report.trace.to_jsonl(out)
        traces.append(out.read_bytes())
    assert set(in_process) == {0}, "a guest reached XenStore in-process, not over its ring"
    assert traces[0] == traces[1]
    # The guests' requests are in the trace: the rings carried them.
    assert b'"xenstore_request"' in traces[0]
