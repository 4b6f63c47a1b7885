"""The XenBus shell over the real XenStore: libxl (toolstack) writes, both ends react.

The toolstack side is xenpci.toolstack.libxl_pci (create/hot-plug exactly as
libxl writes them); the two ends are XenbusWatch shells on separate clients,
the frontend acting as the guest domain with the guest's permissions.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TOOL_TIMEOUT
from tests.interop import require_executable
from xenpci.abi.xenbus import XenbusState as S
from xenpci.hv.scheduler import Scheduler, SteppedVcpu
from xenpci.pci.address import SBDF
from xenpci.toolstack import libxl_pci as lp
from xenpci.xenbus.state import DriverCallback as CB
from xenpci.xenbus.state import InvalidStateValue, Role, StateError, XenbusDevice
from xenpci.xenbus.watch import XenbusWatch
from xenpci.xenstore.client import WatchEvent, XsClient
from xenpci.xenstore.core import XenStore
from xenpci.xenstore.server import XenstoredServer

pytestmark = pytest.mark.timeout(30)
#: Bounds the few waits on a client's dispatcher thread (threaded mode, an OS edge).
OS_EDGE_TIMEOUT = 10.0
DOMID = 7
BE = lp.backend_path(DOMID)
FE = lp.frontend_path(DOMID)


class Pair:
    """A backend and a frontend end over one store.

    Deterministic by default: each client's watch callbacks are tasks on a lane
    of one executor, and ``wait_for`` runs it (deadlines on its virtual clock).
    ``threaded`` keeps the clients' dispatcher threads, for a test at an OS edge.
    """

    def __init__(self, *, threaded: bool = False) -> None:
        self.store = XenStore()
        self.ex = None if threaded else Scheduler()
        ex = self.ex

        def lane(name: str) -> SteppedVcpu | None:
            return ex.lane(name) if ex is not None else None

        self.tool = XsClient.in_process(self.store, 0, lane=lane("tool"))
        self.xs_be = XsClient.in_process(self.store, 0, lane=lane("backend"))
        self.xs_fe = XsClient.in_process(self.store, DOMID, lane=lane("frontend"))
        lp.device_pci_add_xenstore(
            self.tool, DOMID, "guest", lp.PciBackendDevice(SBDF(0, 3, 0, 0)), starting=True
        )
        self.be = XenbusWatch(
            self.xs_be, XenbusDevice(Role.BACKEND), BE, FE, error_path=f"{BE}/error"
        )
        self.fe = XenbusWatch(self.xs_fe, XenbusDevice(Role.FRONTEND), FE, BE)

    def close(self) -> None:
        for w in (self.be, self.fe):
            w.close()
        for c in (self.tool, self.xs_be, self.xs_fe):
            c.close()

    def state(self, path: str) -> bytes:
        return self.tool.read(f"{path}/state")

    def settle(self) -> None:
        """Run every queued watch callback (and what it causes) to the end."""
        assert self.ex is not None
        self.ex.run_until_idle()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        yield p
    finally:
        p.close()


def connected(dev: XenbusDevice) -> bool:
    return dev.state is S.XenbusStateConnected


def test_initial_connect_over_xenstore(pair: Pair) -> None:
    pair.be.start()
    pair.fe.start()
    assert pair.be.wait_for(connected) and pair.fe.wait_for(connected)
    assert pair.be.device.history == [1, 2, 3, 4]
    assert pair.fe.device.history == [1, 3, 4]
    assert pair.state(BE) == b"4" and pair.state(FE) == b"4"
    assert pair.be.calls == [CB.SETUP, CB.CONNECT]
    assert pair.fe.calls == [CB.PUBLISH, CB.CONNECT]
    assert pair.be.errors == [] and pair.fe.errors == []


def test_hotplug_driven_by_libxl(pair: Pair) -> None:
    pair.fe.start()
    pair.be.start()
    assert pair.be.wait_for(connected) and pair.fe.wait_for(connected)
    # libxl hot-plug: waits for 4, writes dev-1 and state = 7 in one transaction
    idx = lp.device_pci_add_xenstore(
        pair.tool, DOMID, "guest", lp.PciBackendDevice(SBDF(0, 4, 0, 0)), starting=False
    )
    assert idx == 1

    def cycled(d: XenbusDevice) -> bool:
        return d.history[-3:] == [7, 8, 4]

    assert pair.be.wait_for(cycled)
    assert pair.fe.wait_for(lambda d: d.history == [1, 3, 4, 7, 4])
    assert pair.be.device.history == [1, 2, 3, 4, 7, 8, 4]
    # and libxl's next operation would see Connected
    lp.wait_for_backend_state(pair.tool, DOMID, S.XenbusStateConnected)
    assert pair.be.errors == []


def test_frontend_closes_then_domain_released(pair: Pair) -> None:
    pair.be.start()
    pair.fe.start()
    assert pair.be.wait_for(connected) and pair.fe.wait_for(connected)
    pair.fe.switch_state(S.XenbusStateClosing)
    assert pair.be.wait_for(lambda d: d.state is S.XenbusStateClosing)
    pair.fe.switch_state(S.XenbusStateClosed)
    assert pair.be.wait_for(lambda d: d.state is S.XenbusStateClosed)
    assert pair.state(BE) == b"6"
    # online = 1: the backend stays until the frontend's node vanishes
    pair.tool.rm(FE)
    assert pair.be.wait_for(lambda d: d.state is S.XenbusStateUnknown)
    assert pair.be.calls[-2:] == [CB.DISCONNECT, CB.REMOVE]
    assert pair.be.device.history == [1, 2, 3, 4, 5, 6, 0]


def test_hostile_frontend_state_values(pair: Pair) -> None:
    pair.be.start()
    pair.fe.start()
    assert pair.be.wait_for(connected) and pair.fe.wait_for(connected)
    # out-of-enum number: recorded, ignored (no case for it in Linux either)
    pair.xs_fe.write(f"{FE}/state", "99")
    # (a pending event for the frontend's earlier write may read "99" too)
    assert pair.be.wait_for(lambda _d: len(pair.be.errors) >= 1)
    assert all(isinstance(e, InvalidStateValue) for e in pair.be.errors)
    assert pair.be.device.state is S.XenbusStateConnected
    # garbage reads as Unknown (xenbus_read_driver_state): the guest only
    # tears down its own connection
    pair.xs_fe.write(f"{FE}/state", "connected!")
    assert pair.be.wait_for(lambda d: d.state is S.XenbusStateUnknown)
    assert CB.REMOVE in pair.be.calls


def test_toolstack_illegal_backend_state_is_refused(pair: Pair) -> None:
    pair.be.start()
    pair.fe.start()
    assert pair.be.wait_for(connected) and pair.fe.wait_for(connected)
    pair.tool.write(f"{BE}/state", "2")  # Connected -> InitWait is no edge
    assert pair.be.wait_for(lambda _d: any(isinstance(e, StateError) for e in pair.be.errors))
    assert pair.be.device.state is S.XenbusStateConnected


def test_driver_failure_is_xenbus_dev_fatal(pair: Pair) -> None:
    from xenpci.errors import XenpciError

    def driver(cb: CB) -> None:
        if cb is CB.SETUP:
            raise XenpciError("no such device 0000:03:00.0")

    pair.be.driver = driver
    pair.be.start()
    assert pair.be.device.state is S.XenbusStateClosing
    assert pair.tool.read(f"{BE}/error") == b"setup: no such device 0000:03:00.0"
    assert pair.state(BE) == b"5"
    # setup failed before the switch to Initialised: that state never happened
    assert pair.be.device.history == [1, 2, 5]


def test_guest_domain_released_backend_removes_device(pair: Pair) -> None:
    """xenstored's RELEASE deletes the guest-owned frontend dir: the backend sees it vanish."""
    pair.store.introduce_domain(DOMID)
    pair.be.start()
    pair.fe.start()
    assert pair.be.wait_for(connected) and pair.fe.wait_for(connected)
    pair.store.release_domain(DOMID)
    assert pair.be.wait_for(lambda d: d.state is S.XenbusStateUnknown)
    assert pair.be.calls == [CB.SETUP, CB.CONNECT, CB.DISCONNECT, CB.REMOVE]
    assert pair.be.device.history == [1, 2, 3, 4, 6, 0]
    assert pair.be.device.otherend is S.XenbusStateUnknown


def test_backend_destroyed_frontend_closes(pair: Pair) -> None:
    """libxl__device_destroy removes the backend dir: the frontend treats it as gone."""
    pair.be.start()
    pair.fe.start()
    assert pair.be.wait_for(connected) and pair.fe.wait_for(connected)
    pair.be.close()
    pair.tool.rm(BE)
    assert pair.fe.wait_for(lambda d: d.state is S.XenbusStateUnknown)
    assert pair.fe.device.history == [1, 3, 4, 6, 0]
    assert pair.fe.calls[-1] is CB.DISCONNECT
    assert pair.state(FE) == b"6"


@pytest.mark.interop
def test_hotplug_written_by_the_c_xenstore_client(tmp_path: Path) -> None:
    """libxenstore's xenstore-write plays libxl; xenstore-read checks what the ends wrote.

    An OS edge: the backend's client is on the Unix socket (a reader thread), so
    this pair keeps its dispatcher threads.
    """
    pair = Pair(threaded=True)
    write = require_executable("xenstore-write")
    read = require_executable("xenstore-read")
    sock = str(tmp_path / "xs.sock")
    with XenstoredServer(pair.store, sock):
        xs_be = XsClient.unix(sock)
        be = XenbusWatch(xs_be, XenbusDevice(Role.BACKEND), BE, FE)
        try:
            be.start()
            pair.fe.start()
            assert be.wait_for(connected) and pair.fe.wait_for(connected)
            env = {**os.environ, "XENSTORED_PATH": sock}
            # libxl__device_pci_add_xenstore for a second device, as one write
            # in one transaction (xenstore-write wraps its key/value pairs in one)
            subprocess.run(
                [write, f"{BE}/dev-1", "0000:04:00.0", f"{BE}/state-1", "1",
                 f"{BE}/num_devs", "2", f"{BE}/state", "7"],
                env=env, check=True, timeout=TOOL_TIMEOUT,
            )  # fmt: skip
            assert be.wait_for(lambda d: d.history[-3:] == [7, 8, 4])
            assert pair.fe.wait_for(lambda d: d.history == [1, 3, 4, 7, 4])
            states = subprocess.run(
                [read, f"{BE}/state", f"{FE}/state"],
                env=env, check=True, timeout=TOOL_TIMEOUT, capture_output=True, text=True,
            ).stdout.split()  # fmt: skip
            assert states == ["4", "4"]
            assert be.errors == []
        finally:
            be.close()
            xs_be.close()
            pair.close()


def test_switch_state_never_recreates_a_removed_node(pair: Pair) -> None:
    """``__xenbus_switch_state`` checks ``state`` exists in its transaction: a backend
    (dom0, privileged) must not re-create ``backend/pci/<domid>/0`` after libxl removed it."""
    pair.be.start()
    pair.fe.start()
    assert pair.be.wait_for(connected) and pair.fe.wait_for(connected)
    pair.tool.rm(BE)
    # the frontend sees the backend gone and closes; the backend follows the frontend ...
    assert pair.fe.wait_for(lambda d: d.state is S.XenbusStateUnknown)
    assert pair.be.wait_for(lambda d: d.state is S.XenbusStateClosed)  # it "wrote" 6
    assert not pair.tool.exists(BE)
    assert pair.state(FE) == b"6"  # the frontend's own node still exists: written


def test_events_queued_before_close_are_dropped(pair: Pair) -> None:
    """``unregister_xenbus_watch``: an event already queued for the watch never acts."""
    pair.be.start()
    pair.settle()  # the watches' initial events have been handled
    state_before, calls_before = pair.be.device.state, list(pair.be.calls)
    assert state_before is not S.XenbusStateClosing
    queued: list[bool] = []

    def blocker(_ev: object) -> None:
        # Runs on the backend client's lane: the state event this write fires is
        # queued behind it, and the watch is closed before that event can run.
        if not queued:
            pair.tool.write(f"{BE}/state", str(int(S.XenbusStateClosing)))
            pair.be.close()
            queued.append(True)

    pair.tool.write("/test/block", "1")
    pair.xs_be.watch("/test/block", "blocker", blocker)
    pair.settle()
    assert queued == [True]
    assert pair.be.device.state is state_before
    assert pair.be.calls == calls_before
    assert pair.be.errors == []


def test_recreated_nodes_are_a_new_generation_the_old_ends_leave_alone(pair: Pair) -> None:
    """libxl deletes both directories and creates them again (a re-attach) whenever the
    ends handle the deletion: the old ends must never write into the new nodes."""
    pair.be.start()
    pair.fe.start()
    assert pair.be.wait_for(connected) and pair.fe.wait_for(connected)
    lp.device_destroy(pair.tool, DOMID)
    lp.device_pci_add_xenstore(
        pair.tool, DOMID, "guest", lp.PciBackendDevice(SBDF(0, 4, 0, 0)), starting=False
    )
    assert pair.be.wait_for(lambda _d: pair.be.superseded())
    assert pair.fe.wait_for(lambda _d: pair.fe.superseded())
    pair.settle()  # let any queued event run: they all see a new generation, do nothing
    assert pair.state(BE) == b"1" and pair.state(FE) == b"1"
    with contextlib.suppress(StateError):  # (refused if the deletion was seen first)
        pair.be.switch_state(S.XenbusStateClosing)  # even a local request writes nothing
    pair.be.remove()
    pair.fe.remove()
    assert pair.state(BE) == b"1" and pair.state(FE) == b"1"


def test_a_client_on_an_executor_lane_delivers_watches_as_tasks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Deterministic mode: no dispatcher thread; a callback runs when the executor
    runs its lane, a failing one is handed to the lane's owner (never printed), and
    ``next_event`` waits on the virtual clock."""
    store, ex = XenStore(), Scheduler()
    before = set(threading.enumerate())
    xs = XsClient.in_process(store, 0, lane=ex.lane("tool"))
    got: list[str] = []
    xs.watch("/w", "cb", lambda ev: got.append(ev.path))
    xs.watch("/bad", "bad", lambda ev: [][0])
    xs.write("/w/x", "1")
    assert got == []  # nothing runs until the executor is driven
    ex.run_until_idle()
    assert got == ["/w", "/w/x"]
    assert [type(e) for e in ex.errors] == [IndexError]  # /bad's first event
    assert capsys.readouterr().err == ""
    xs.watch("/q", "queued")  # no callback: filed for next_event
    # no timeout: an event nothing could cause would be the executor's Deadlock
    assert xs.next_event() == WatchEvent("/q", "queued")
    virtual_wait = 2.0  # a deadline on the virtual clock, not a guess: asserted exactly
    with pytest.raises(queue.Empty):
        xs.next_event(timeout=virtual_wait)
    assert ex.clock.now() == virtual_wait  # the empty wait cost virtual time, no wall time
    assert set(threading.enumerate()) <= before
    xs.close()


def test_a_failing_callback_on_the_dispatcher_thread_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Threaded mode (an OS edge): the failure is kept and reported in one line, and
    delivery goes on (callbacks run in order on one thread, so once the later one ran,
    the failing one has)."""
    store = XenStore()
    xs = XsClient.in_process(store, 0)
    later = threading.Event()
    try:
        xs.watch("/bad", "bad", lambda ev: [][0])
        xs.watch("/later", "later", lambda ev: later.set())
        assert later.wait(OS_EDGE_TIMEOUT)
        assert [type(e) for e in xs.callback_errors] == [IndexError]
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert err.count("\n") == 1 and "watch callback for /bad (bad) failed" in err
    finally:
        xs.close()
