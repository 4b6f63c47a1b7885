"""``xl pause`` / ``xl unpause`` in process: a paused guest's vCPU runs nothing until unpaused.

Waits: the exact properties (queued work does not run while paused, however long) run
on a deterministic machine, driven by its executor on a virtual clock; the tests that
remain threaded (an attach or a destroy racing a paused guest from other threads) wait on
XenStore watches and events, bounded by the suite's OS-edge constant.

The truth checked: Xen's pause semantics (a counted controller pause, ``EINVAL`` for an
unpause of a domain not paused, ``EOVERFLOW`` past 255), xl list's ``rbpscd`` flags,
and the XenBus handshake: a paused frontend cannot answer a Reconfiguring backend, so
a hot attach waits, and completes once the guest runs again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import OS_EDGE_TIMEOUT, THREADED_MODEL_TIMEOUT
from tests.toolstack.test_libxl_machine import LEGACY, NIC, NVME, spec, wait_node
from xenpci.hv import MAX_CONTROLLER_PAUSES
from xenpci.hv.scheduler import Scheduler
from xenpci.pcifront.errors import PcifrontError
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.errors import DomainGone, PauseError, ToolstackError
from xenpci.toolstack.host import HostDescription, boot_machine
from xenpci.toolstack.libxl import Libxl
from xenpci.toolstack.machine import Machine
from xenpci.toolstack.xlcfg import load_domain_config
from xenpci.xenbus.state import XenbusState as S
from xenpci.xenstore.client import WatchEvent
from xenpci.xenstore.errors import ConnectionClosed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = boot_machine(HostDescription())
    try:
        yield m
    finally:
        m.shutdown()


@pytest.fixture
def libxl(machine: Machine) -> Libxl:
    return Libxl(machine, machine.xs, timeout=THREADED_MODEL_TIMEOUT)


@pytest.fixture
def det() -> Iterator[Machine]:
    """A deterministic machine: one thread, a virtual clock, driven by its executor."""
    m = boot_machine(HostDescription(), deterministic=True)
    try:
        yield m
    finally:
        m.shutdown()


def executor(machine: Machine) -> Scheduler:
    assert machine.hv.scheduler is not None
    return machine.hv.scheduler


def guest_with_nic(machine: Machine, libxl: Libxl) -> int:
    for s in (NIC, NVME, LEGACY):
        libxl.assignable_add(s)
    domid = libxl.domain_create(load_domain_config('name="g"\nmemory=16\npci=["03:00.0"]'))
    if machine.hv.scheduler is not None:
        front = machine.guest(domid).wait_for_pcifront(10.0)  # virtual seconds
        assert front.wait_connected(1, 10.0)
    else:
        wait_node(machine.xs, f"{lp.frontend_path(domid)}/state", "4", OS_EDGE_TIMEOUT)
    return domid


def states(libxl: Libxl) -> dict[str, str]:
    return {d.name: d.state for d in libxl.domain_list()}


def test_pause_counts_and_list_flags(machine: Machine, libxl: Libxl) -> None:
    domid = guest_with_nic(machine, libxl)
    assert states(libxl) == {"Domain-0": "r-----", "g": "-b----"}
    libxl.domain_pause("g")
    libxl.domain_pause(domid)  # counted: two pauses need two unpauses
    assert states(libxl)["g"] == "--p---"
    libxl.domain_unpause("g")
    assert states(libxl)["g"] == "--p---"
    libxl.domain_unpause("g")
    assert states(libxl)["g"] == "-b----"
    with pytest.raises(PauseError) as e:
        libxl.domain_unpause("g")  # Xen: unpausing a domain the controller did not pause
    assert e.value.errno == "EINVAL" and e.value.domid == domid
    with pytest.raises(ToolstackError, match="nobody is an invalid domain identifier"):
        libxl.domain_pause("nobody")


def test_pause_count_is_capped(machine: Machine, libxl: Libxl) -> None:
    domid = libxl.domain_create(load_domain_config('name="g"\nmemory=16'))
    for _ in range(MAX_CONTROLLER_PAUSES):
        machine.pause_guest(domid)
    with pytest.raises(PauseError) as e:
        machine.pause_guest(domid)
    assert e.value.errno == "EOVERFLOW"
    for _ in range(MAX_CONTROLLER_PAUSES):
        machine.unpause_guest(domid)
    assert not machine.guest_paused(domid)


def test_paused_vcpu_runs_nothing_until_unpaused(det: Machine) -> None:
    """Work queued for the vCPU waits (an exact property: the executor runs everything
    else and an hour of virtual time passes), then runs in order on unpause."""
    libxl = Libxl(det, det.xs)
    ex = executor(det)
    domid = libxl.domain_create(load_domain_config('name="g"\nmemory=16'))
    dom = det.hv.domain(domid)
    libxl.domain_pause(domid)
    ran: list[int] = []
    futures = [dom.run(ran.append, i) for i in range(3)]
    ex.run_until_idle()
    ex.advance(3600.0)
    assert ran == [] and not any(f.done() for f in futures)
    libxl.domain_unpause(domid)
    ex.run_until_idle()
    assert ran == [0, 1, 2] and all(f.done() for f in futures)


def test_attach_to_a_paused_guest_completes_after_unpause(det: Machine) -> None:
    """libxl's hot-plug writes Reconfiguring and returns; the next one waits for Connected,
    which only a running frontend can bring about. The unpause comes at 1 s of virtual
    time, from a timer that fires while that attach waits."""
    libxl = Libxl(det, det.xs)
    ex = executor(det)
    domid = guest_with_nic(det, libxl)
    kernel = det.guest(domid)
    front = kernel.pcifront
    assert front is not None
    libxl.domain_pause(domid)
    libxl.pci_attach(domid, spec("04:00.0"))  # state 7 written; nobody answers yet
    seen: dict[str, object] = {}

    def while_waiting() -> None:
        seen["claimed"] = lp.assigned_domid(det.xs, LEGACY)  # claimed, now waiting
        seen["devices"] = len(list(kernel.pci.devices()))  # the paused guest has not rescanned
        seen["state"] = front.xenbus.state
        libxl.domain_unpause(domid)

    t0 = ex.clock.now()
    ex.call_later(1.0, while_waiting)
    libxl.pci_attach(domid, spec("07:00.0"))  # returns only once the guest ran again
    assert ex.clock.now() == t0 + 1.0  # it waited for the unpause, and no longer
    assert seen == {"claimed": domid, "devices": 1, "state": S.XenbusStateConnected}
    assert [e.sbdf for e in libxl.pci_list(domid)] == [NIC, NVME, LEGACY]
    # the guest ran its queued work: two rescans (Connected twice more), three devices
    assert front.wait_connected(3, 10.0), front.xenbus.history
    assert len(list(kernel.pci.devices())) == 3


def test_destroying_a_paused_guest_mid_attach(machine: Machine, libxl: Libxl) -> None:
    """The guest is paused, an attach waits on it, xl destroy: DomainGone, all reset."""
    domid = guest_with_nic(machine, libxl)
    libxl.domain_pause(domid)
    libxl.pci_attach(domid, spec("04:00.0"))  # state 7 written; the paused guest never answers
    nvme = machine.host_function(NVME)
    resets_before = len(nvme.resets)  # type: ignore[attr-defined]
    errors: list[BaseException] = []

    def attach() -> None:
        try:
            libxl.pci_attach(domid, spec("07:00.0"))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=attach)
    t.start()
    # claimed: from here the attach waits for Connected, which the paused guest cannot
    # bring about (its backend stays Reconfiguring)
    wait_node(machine.xs, f"{lp.libxl_pci_path(LEGACY)}/domid", str(domid), OS_EDGE_TIMEOUT)
    assert machine.xs.read(f"{lp.backend_path(domid)}/state") == b"7"
    assert t.is_alive()
    t0 = time.monotonic()
    libxl.domain_destroy(domid)
    t.join(OS_EDGE_TIMEOUT)
    assert not t.is_alive()
    # ended by the death, not by waiting out the backend timeout
    assert time.monotonic() - t0 < THREADED_MODEL_TIMEOUT
    assert len(errors) == 1 and isinstance(errors[0], DomainGone), errors
    assert {d.sbdf for d in libxl.assignable_list()} == {NIC, NVME, LEGACY}
    assert len(nvme.resets) > resets_before  # type: ignore[attr-defined]
    assert machine.hv.iommu.owner(NVME.sbdf_int) == 0
    assert not machine.xs.exists(lp.backend_path(domid))
    assert not machine.xs.exists(f"/local/domain/{domid}")
    assert [d.name for d in libxl.domain_list()] == ["Domain-0"]


def test_pause_at_the_busy_moment_then_destroy_is_prompt(machine: Machine, libxl: Libxl) -> None:
    """xl pause lands while the guest's XenStore callback thread has a request in flight
    (the reply can only come through the now-paused vCPU); xl destroy still ends at once:
    the closed ring fails that request, the callback thread lets go, nothing waits out
    the ring's 30 s reply timeout or the client's 5 s thread join. The request is a write,
    so dom0 can see (on a watch) that xenstored served it while its reply is stuck."""
    domid = guest_with_nic(machine, libxl)
    kernel = machine.guest(domid)
    home = f"/local/domain/{domid}"
    entered, go = threading.Event(), threading.Event()
    outcome: list[BaseException | None] = []
    sent = f"{home}/data/sent"

    def on_change(ev: WatchEvent) -> None:  # runs on the guest client's callback thread
        if ev.path != f"{home}/data/poke":
            return
        entered.set()
        go.wait(OS_EDGE_TIMEOUT)
        try:
            kernel.xs.write(sent, "1")  # xenstored applies it; the reply needs the vCPU
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    machine.xs.write(f"{home}/data/poke", "0")
    kernel.xs.watch(f"{home}/data/poke", "busy", on_change)  # fires once at once
    assert entered.wait(OS_EDGE_TIMEOUT)
    libxl.domain_pause(domid)
    go.set()  # the request goes out; its reply's upcall is queued on the paused vCPU
    # dom0 sees the write land: the request was served and its reply is in flight
    wait_node(machine.xs, sent, "1", OS_EDGE_TIMEOUT)
    assert outcome == []  # in flight: the reply cannot reach the paused guest
    t0 = time.monotonic()
    libxl.domain_destroy(domid)
    elapsed = time.monotonic() - t0
    assert elapsed < 5, elapsed  # under the client's 5 s thread join (client.py)
    assert len(outcome) == 1 and isinstance(outcome[0], ConnectionClosed), outcome
    assert [d.name for d in libxl.domain_list()] == ["Domain-0"]
    assert not machine.xs.exists(home)
    assert {d.sbdf for d in libxl.assignable_list()} == {NIC, NVME, LEGACY}


def test_pause_during_a_pcifront_scan_then_destroy_is_prompt(
    machine: Machine, libxl: Libxl
) -> None:
    """xl pause lands while the guest kernel scans through pcifront (Linux probes all
    256 devfns of a root, one op each); every answer needs the paused vCPU's upcall.
    xl destroy must not wait out the op timeout once per devfn: the kernel halts its
    channel first, the op in flight and the rest of the scan fail at once."""
    domid = guest_with_nic(machine, libxl)
    kernel = machine.guest(domid)
    front = kernel.pcifront
    assert front is not None and front.chan is not None
    op_timeout = front.chan.timeout = 30.0  # a stalled op would hold destroy 30 s per devfn
    posted = threading.Event()
    notify = front.chan._notify

    def notify_and_tell() -> None:  # the channel's doorbell, and the test told it rang
        notify()
        posted.set()

    front.chan._notify = notify_and_tell
    results: list[int] = []

    def scan() -> None:  # the guest kernel's rescan of root 0000:00
        for devfn in range(256):
            try:
                results.append(front.read(0, 0, devfn, 0, 4)[0])
            except PcifrontError:  # the frontend is gone: the scan stops as in Linux
                results.append(-1)

    libxl.domain_pause(domid)
    scanner = threading.Thread(target=scan)
    scanner.start()
    assert posted.wait(OS_EDGE_TIMEOUT)  # an op is posted; its answer's upcall waits
    t0 = time.monotonic()
    libxl.domain_destroy(domid)
    scanner.join(OS_EDGE_TIMEOUT)
    elapsed = time.monotonic() - t0
    assert not scanner.is_alive()
    assert elapsed < op_timeout, elapsed  # not one op timeout waited out
    # the scan did not go on as if devices answered: every op after the halt failed
    assert len(results) == 256 and results[-1] != 0
    assert {d.sbdf for d in libxl.assignable_list()} == {NIC, NVME, LEGACY}


def test_cancel_ends_a_backend_wait_at_once(machine: Machine) -> None:
    """``Cancel``: a wait on a backend that will never change ends when cancelled (and a
    wait that starts after the cancel ends at once), with no timeout involved."""
    cancel = lp.Cancel()
    errors: list[BaseException] = []
    started = threading.Event()

    def wait() -> None:
        started.set()
        try:
            # no backend for d77 yet: state absent; a huge timeout that must not matter
            machine.xs.write(f"{lp.backend_path(77)}/state", "1")
            lp.wait_for_backend_state(machine.xs, 77, S.XenbusStateConnected, 3600, cancel)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=wait)
    t.start()
    assert started.wait(OS_EDGE_TIMEOUT)
    cancel.cancel()
    t.join(OS_EDGE_TIMEOUT)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], DomainGone) and errors[0].domid == 77
    with pytest.raises(DomainGone):  # already cancelled: no wait at all
        lp.wait_for_backend_state(machine.xs, 77, S.XenbusStateConnected, 3600, cancel)


def test_destroy_of_one_guest_does_not_wait_on_anothers_detach(
    machine: Machine, libxl: Libxl
) -> None:
    """Per-domain locks: a detach waiting on a paused guest holds only that guest's
    lock, so destroying another guest meanwhile goes through (libxl's per-domain locks)."""
    g = guest_with_nic(machine, libxl)
    h = libxl.domain_create(load_domain_config('name="h"\nmemory=16\npci=["04:00.0"]'))
    wait_node(machine.xs, f"{lp.frontend_path(h)}/state", "4", OS_EDGE_TIMEOUT)
    libxl.domain_pause(h)
    errors: list[BaseException] = []

    def detach() -> None:
        try:
            libxl.pci_detach(h, spec("04:00.0"))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=detach)
    t.start()
    try:
        # the detach has asked the paused guest to let go (state-0 Closing) and waits
        wait_node(machine.xs, f"{lp.backend_path(h)}/state-0", "5", OS_EDGE_TIMEOUT)
        libxl.domain_destroy(g)  # returns while the other domain's detach still waits
        assert t.is_alive(), errors
        assert [d.name for d in libxl.domain_list()] == ["Domain-0", "h"]
    finally:
        libxl.domain_unpause(h)
        t.join(OS_EDGE_TIMEOUT)
    assert not t.is_alive() and errors == []
    assert libxl.pci_list(h) == []


def test_a_name_xenstore_refuses_leaves_no_domain(machine: Machine, libxl: Libxl) -> None:
    """A domain whose XenStore home cannot be written is undone: no hypervisor domain
    and no toolstack record are left (the XenStore client's own E2BIG refusal, which
    keeps the connection usable, is the XenStore layer's)."""
    with pytest.raises(Exception) as e:  # E2BIG from the client, or the closed link
        libxl.domain_create(load_domain_config('name="' + "n" * 5000 + '"'))
    assert "Traceback" not in str(e.value)
    assert [d.domid for d in machine.hv.domains()] == [0]
    assert libxl.domains == {}
