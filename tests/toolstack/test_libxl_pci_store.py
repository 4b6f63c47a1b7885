"""libxl_pci against the real XenStore: a scripted backend, watches, timeouts, xenstore-utils.

Waits: every client runs on a lane of one deterministic executor, so libxl's backend
waits are deadlines on its virtual clock: a timeout costs no wall time, and a test
asserts exactly when (in virtual time) a wait ended. Only the xenstore-utils test
crosses an OS edge (a Unix socket, a child process), bounded by the suite's named bound.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TOOL_TIMEOUT
from tests.interop import require_executable
from xenpci.hv.scheduler import Scheduler
from xenpci.pci.address import SBDF
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.errors import BackendMissing, BackendStateTimeout, DeviceNotAttached
from xenpci.xenstore.client import WatchEvent, XsClient
from xenpci.xenstore.core import XenStore
from xenpci.xenstore.errors import XsError
from xenpci.xenstore.server import XenstoredServer

pytestmark = pytest.mark.timeout(30)
DOMID = 7
BE = lp.backend_path(DOMID)
FE = lp.frontend_path(DOMID)
NIC = SBDF(0, 3, 0, 0)
DISK = SBDF(0, 4, 0, 0)
GPU = SBDF(0, 5, 0, 0)


class FakePciback:
    """Plays pciback's part of the state dance: Reconfiguring -> (Reconfigured) -> Connected.

    It answers every backend ``state`` = 7 with 4 after deleting the ``vdev-i`` of devices in
    state 5, like the real Reconfiguring cycle does (fact sheet §3.5/§3.6), and records every
    state it saw, so the test can assert the sequence libxl drove.
    """

    def __init__(self, store: XenStore, ex: Scheduler, *, answer: bool = True) -> None:
        self.xs = XsClient.in_process(store, 0, lane=ex.lane("pciback"))
        self.answer = answer
        self.seen: list[str] = []
        self.lock = threading.Lock()
        self.xs.watch(f"{BE}/state", "pciback", self._on)

    def _on(self, ev: WatchEvent) -> None:
        try:
            st = self.xs.read(f"{BE}/state").decode()
        except XsError:
            return
        with self.lock:
            self.seen.append(st)
        if st == "7" and self.answer:
            n = int(self.xs.read(f"{BE}/num_devs"))
            for i in range(n):
                if self.xs.read(f"{BE}/state-{i}") == b"5":
                    self.xs.write(f"{BE}/state-{i}", "6")
                elif self.xs.read(f"{BE}/state-{i}") == b"1":
                    self.xs.write(f"{BE}/vdev-{i}", f"0000:00:{i:02x}.0")
                    self.xs.write(f"{BE}/state-{i}", "4")
            self.xs.write(f"{BE}/state", "4")

    def connect(self) -> None:
        for i in range(int(self.xs.read(f"{BE}/num_devs"))):
            self.xs.write(f"{BE}/vdev-{i}", f"0000:00:{i:02x}.0")
            self.xs.write(f"{BE}/state-{i}", "4")
        self.xs.write(f"{BE}/state", "4")

    def close(self) -> None:
        self.xs.close()


@pytest.fixture
def store() -> XenStore:
    s = XenStore()
    s.introduce_domain(DOMID)
    return s


@pytest.fixture
def ex() -> Scheduler:
    """The deterministic executor every client's watch callbacks run on."""
    return Scheduler()


@pytest.fixture
def xs(store: XenStore, ex: Scheduler) -> Iterator[XsClient]:
    c = XsClient.in_process(store, 0, lane=ex.lane("tool"))
    yield c
    c.close()


@pytest.fixture
def pciback(store: XenStore, ex: Scheduler) -> Iterator[FakePciback]:
    p = FakePciback(store, ex)
    yield p
    p.close()


def dev(sbdf: SBDF, **kw: object) -> lp.PciBackendDevice:
    return lp.PciBackendDevice(sbdf, **kw)  # type: ignore[arg-type]


def test_initial_create_then_hotplug_then_remove(
    xs: XsClient, store: XenStore, pciback: FakePciback
) -> None:
    assert lp.device_pci_add_xenstore(xs, DOMID, "g", dev(NIC), starting=True) == 0
    # starting: no Reconfiguring, backend still Initialising
    assert xs.read(f"{BE}/state") == b"1"
    assert xs.read(f"{FE}/state") == b"1"
    pciback.connect()
    assert lp.device_pci_add_xenstore(xs, DOMID, "g", dev(DISK, vdevfn=0x10), starting=False) == 1
    # hot-plug wrote state 7 with the keys; our pciback answered 4
    assert lp.device_pci_add_xenstore(xs, DOMID, "g", dev(GPU), starting=False) == 2
    assert [str(e.sbdf) for e in lp.device_pci_list(xs, DOMID)] == [str(NIC), str(DISK), str(GPU)]
    lp.device_pci_remove_xenstore(xs, DOMID, NIC)
    got = lp.device_pci_list(xs, DOMID)
    assert [(e.index, e.sbdf, e.vdevfn) for e in got] == [(0, DISK, 0x10), (1, GPU, 0)]
    assert xs.read(f"{BE}/num_devs") == b"2"
    assert not xs.exists(f"{BE}/dev-2")
    lp.device_pci_remove_xenstore(xs, DOMID, GPU)
    lp.device_pci_remove_xenstore(xs, DOMID, DISK)
    # last device gone: both directories destroyed
    assert not xs.exists(BE)
    assert not xs.exists(FE)
    assert "7" in pciback.seen and pciback.seen[-1] in {"4", "7"}


def test_guest_cannot_write_backend_but_can_read(
    xs: XsClient, store: XenStore, ex: Scheduler
) -> None:
    lp.device_pci_add_xenstore(xs, DOMID, "g", dev(NIC), starting=True)
    guest = XsClient.in_process(store, DOMID, lane=ex.lane("guest"))
    other = XsClient.in_process(store, DOMID + 1, lane=ex.lane("other"))
    try:
        assert guest.read(f"{BE}/dev-0") == b"0000:03:00.0"
        with pytest.raises(XsError) as e:
            guest.write(f"{BE}/dev-0", "0000:00:00.0")
        assert e.value.code == "EACCES"
        guest.write(f"{FE}/state", "3")  # the guest owns its frontend
        with pytest.raises(XsError) as e2:
            other.read(f"{BE}/dev-0")
        assert e2.value.code == "EACCES"
    finally:
        guest.close()
        other.close()


def test_hotplug_waits_for_connected_and_times_out(xs: XsClient, ex: Scheduler) -> None:
    lp.device_pci_add_xenstore(xs, DOMID, "g", dev(NIC), starting=True)
    t0 = ex.clock.now()
    with pytest.raises(BackendStateTimeout) as e:
        lp.device_pci_add_xenstore(xs, DOMID, "g", dev(DISK), starting=False)
    assert ex.clock.now() - t0 == lp.DEFAULT_TIMEOUT  # libxl's whole wait, in virtual time
    assert e.value.path == f"{BE}/state"
    assert e.value.wanted == 4 and e.value.last == 1
    # nothing was written: the device is not half-added
    assert xs.read(f"{BE}/num_devs") == b"1"


def test_wait_is_a_watch_not_a_poll(xs: XsClient, store: XenStore, ex: Scheduler) -> None:
    """The waiter wakes on the write itself: at the virtual instant of the write, not
    at a later poll tick nor at its deadline."""
    lp.device_pci_add_xenstore(xs, DOMID, "g", dev(NIC), starting=True)
    other = XsClient.in_process(store, 0, lane=ex.lane("other"))
    t0 = ex.clock.now()
    ex.call_later(0.1, lambda: other.write(f"{BE}/state", "4"))
    try:
        lp.wait_for_backend_state(xs, DOMID)
        assert ex.clock.now() - t0 == pytest.approx(0.1, abs=1e-12)
    finally:
        other.close()


def test_wait_on_missing_backend(xs: XsClient) -> None:
    with pytest.raises(BackendMissing):
        lp.wait_for_backend_state(xs, DOMID)


def test_remove_unknown_device(xs: XsClient, pciback: FakePciback) -> None:
    lp.device_pci_add_xenstore(xs, DOMID, "g", dev(NIC), starting=True)
    with pytest.raises(DeviceNotAttached):
        lp.device_pci_remove_xenstore(xs, DOMID, DISK)


def test_same_device_twice_refused(xs: XsClient, pciback: FakePciback) -> None:
    lp.device_pci_add_xenstore(xs, DOMID, "g", dev(NIC), starting=True)
    pciback.connect()
    with pytest.raises(lp.ToolstackError):
        lp.device_pci_add_xenstore(xs, DOMID, "g", dev(NIC), starting=False)


def test_force_remove_without_backend_answer(store: XenStore, xs: XsClient) -> None:
    lp.device_pci_add_xenstore(xs, DOMID, "g", dev(NIC), starting=True)
    lp.device_pci_remove_xenstore(xs, DOMID, NIC, force=True)
    assert not xs.exists(BE)


def test_bookkeeping(xs: XsClient) -> None:
    lp.set_assignable_name(xs, NIC, "nic0")
    lp.set_driver_path(xs, NIC, "/sys/bus/pci/drivers/e1000e")
    lp.set_assigned_domid(xs, NIC, DOMID)
    assert xs.read("/libxl/pci/0000-03-00-0/domid") == b"7"
    assert lp.assigned_domid(xs, NIC) == DOMID
    assert lp.resolve_name(xs, "nic0") == NIC
    assert lp.resolve_name(xs, "nope") is None
    assert lp.driver_path(xs, NIC) == "/sys/bus/pci/drivers/e1000e"
    lp.clear_assigned_domid(xs, NIC)
    lp.clear_assigned_domid(xs, NIC)  # idempotent, as libxl's rm
    assert lp.assigned_domid(xs, NIC) is None
    with pytest.raises(ValueError):
        lp.set_assignable_name(xs, NIC, "bad name")


@pytest.mark.interop
def test_xenstore_ls_reads_the_layout(tmp_path: Path, store: XenStore) -> None:
    """The C client (libxenstore) sees exactly the keys and permissions libxl would write."""
    ls = require_executable("xenstore-ls")
    sock = str(tmp_path / "xs.sock")
    with XenstoredServer(store, sock):
        xs = XsClient.unix(sock)
        try:
            lp.device_pci_add_xenstore(
                xs, DOMID, "guest1", dev(NIC, vdevfn=0x28, name="nic0"), starting=True
            )
        finally:
            xs.close()
        env = {**os.environ, "XENSTORED_PATH": sock}
        out = subprocess.run(
            [ls, "-p", BE],
            env=env,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=True,
        ).stdout
        lines = {ln.split("=")[0].strip(): ln for ln in out.splitlines()}
        assert '"0000:03:00.0"' in lines["dev-0"]
        assert '"28"' in lines["vdevfn-0"]
        assert '"msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict"' in lines["opts-0"]
        assert "(n0,r7)" in lines["num_devs"]
        fe = subprocess.run(
            [ls, "-p", FE],
            env=env,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=True,
        ).stdout
        assert f'backend = "{BE}"' in fe
        assert "(n7,r0)" in fe


def test_wait_ends_when_the_guest_dies(xs: XsClient, store: XenStore, ex: Scheduler) -> None:
    """@releaseDomain during the wait: a precise DomainGone at the instant of the
    release, not a timeout."""
    from xenpci.toolstack.errors import DomainGone

    lp.device_pci_add_xenstore(xs, DOMID, "g", dev(NIC), starting=True)
    t0 = ex.clock.now()
    ex.call_later(0.1, lambda: store.release_domain(DOMID))
    with pytest.raises(DomainGone) as e:
        lp.wait_for_backend_state(xs, DOMID)
    assert e.value.domid == DOMID
    assert ex.clock.now() - t0 == pytest.approx(0.1, abs=1e-12)


def test_remove_from_a_closed_backend_does_not_wait(xs: XsClient, ex: Scheduler) -> None:
    """Backend already Closed (guest shutting down): keys go at once, even without force."""
    lp.device_pci_add_xenstore(xs, DOMID, "g", dev(NIC), starting=True)
    xs.write(f"{BE}/state", "6")
    t0 = ex.clock.now()
    lp.device_pci_remove_xenstore(xs, DOMID, NIC)
    assert ex.clock.now() == t0  # not one virtual instant waited
    assert not xs.exists(BE)
