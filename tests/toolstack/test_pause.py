"""``xl pause`` / ``xl unpause`` in process: a paused guest's vCPU runs nothing until unpaused.

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

from tests.toolstack.test_libxl_machine import LEGACY, NIC, NVME, spec, wait_node
from xenpci.hv import MAX_CONTROLLER_PAUSES
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
    return Libxl(machine, machine.xs, timeout=20.0)


def guest_with_nic(machine: Machine, libxl: Libxl) -> int:
    for s in (NIC, NVME, LEGACY):
        libxl.assignable_add(s)
    domid = libxl.domain_create(load_domain_config('name="g"\nmemory=16\npci=["03:00.0"]'))
    wait_node(machine.xs, f"{lp.frontend_path(domid)}/state", "4", timeout=30)
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


def test_paused_vcpu_runs_nothing_until_unpaused(machine: Machine, libxl: Libxl) -> None:
    """Work queued for the vCPU waits, then runs in order on unpause."""
    domid = libxl.domain_create(load_domain_config('name="g"\nmemory=16'))
    dom = machine.hv.domain(domid)
    libxl.domain_pause(domid)
    ran: list[int] = []
    futures = [dom.run(ran.append, i) for i in range(3)]
    time.sleep(0.3)
    assert ran == [] and not any(f.done() for f in futures)
    libxl.domain_unpause(domid)
    for f in futures:
        f.result(timeout=10)
    assert ran == [0, 1, 2]


def test_attach_to_a_paused_guest_completes_after_unpause(machine: Machine, libxl: Libxl) -> None:
    """libxl's hot-plug writes Reconfiguring and returns; the next one waits for Connected,
    which only a running frontend can bring about."""
    domid = guest_with_nic(machine, libxl)
    kernel = machine.guest(domid)
    front = kernel.wait_for_pcifront(10)
    libxl.domain_pause(domid)
    libxl.pci_attach(domid, spec("04:00.0"))  # state 7 written; nobody answers yet
    errors: list[BaseException] = []

    def attach() -> None:
        try:
            libxl.pci_attach(domid, spec("07:00.0"))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=attach)
    t.start()
    try:
        time.sleep(1.0)
        assert t.is_alive(), errors  # waiting for the backend to be Connected again
        assert lp.assigned_domid(machine.xs, LEGACY) == domid  # claimed, now waiting
        assert len(list(kernel.pci.devices())) == 1  # the paused guest has not rescanned
        assert front.xenbus.state is S.XenbusStateConnected
        libxl.domain_unpause(domid)
        t.join(timeout=30)
        assert not t.is_alive()
    finally:
        if t.is_alive() and machine.guest_paused(domid):
            machine.unpause_guest(domid)
        t.join(timeout=30)
    assert errors == []
    assert [e.sbdf for e in libxl.pci_list(domid)] == [NIC, NVME, LEGACY]
    # the guest ran its queued work: two rescans (Connected twice more), three devices
    assert front.wait_connected(3, 30), front.xenbus.history
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
    wait_node(machine.xs, f"{lp.libxl_pci_path(LEGACY)}/domid", str(domid), timeout=30)
    time.sleep(0.5)
    assert t.is_alive()  # waiting for the backend to be Connected again
    t0 = time.monotonic()
    libxl.domain_destroy(domid)
    t.join(timeout=30)
    assert not t.is_alive()
    assert time.monotonic() - t0 < 5  # ended by the death, not a reply or backend timeout
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
    the ring's 30 s reply timeout or the client's 5 s thread join."""
    domid = guest_with_nic(machine, libxl)
    kernel = machine.guest(domid)
    home = f"/local/domain/{domid}"
    entered, go = threading.Event(), threading.Event()
    outcome: list[BaseException | bytes] = []

    def on_change(ev: WatchEvent) -> None:  # runs on the guest client's callback thread
        if ev.path != f"{home}/data/poke":
            return
        entered.set()
        go.wait(10)
        try:
            outcome.append(kernel.xs.read(f"{home}/name"))
        except BaseException as e:
            outcome.append(e)

    machine.xs.write(f"{home}/data/poke", "0")
    kernel.xs.watch(f"{home}/data/poke", "busy", on_change)  # fires once at once
    assert entered.wait(10)
    libxl.domain_pause(domid)
    go.set()  # the request goes out; its reply's upcall is queued on the paused vCPU
    time.sleep(0.2)
    assert outcome == []  # in flight
    t0 = time.monotonic()
    libxl.domain_destroy(domid)
    elapsed = time.monotonic() - t0
    assert elapsed < 5, elapsed
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
    front.chan.timeout = 30.0  # a stalled op would hold destroy for 30 s per devfn
    started = threading.Event()
    results: list[int] = []

    def scan() -> None:  # the guest kernel's rescan of root 0000:00
        started.set()
        for devfn in range(256):
            try:
                results.append(front.read(0, 0, devfn, 0, 4)[0])
            except PcifrontError:  # the frontend is gone: the scan stops as in Linux
                results.append(-1)

    libxl.domain_pause(domid)
    scanner = threading.Thread(target=scan)
    scanner.start()
    assert started.wait(10)
    time.sleep(0.2)  # the first op is posted; its answer's upcall waits on the paused vCPU
    t0 = time.monotonic()
    libxl.domain_destroy(domid)
    scanner.join(10)
    elapsed = time.monotonic() - t0
    assert not scanner.is_alive()
    assert elapsed < 5, elapsed
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
    assert started.wait(30)
    cancel.cancel()
    t.join(timeout=30)
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
    wait_node(machine.xs, f"{lp.frontend_path(h)}/state", "4", timeout=30)
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
        wait_node(machine.xs, f"{lp.backend_path(h)}/state-0", "5", timeout=30)
        libxl.domain_destroy(g)  # returns while the other domain's detach still waits
        assert t.is_alive(), errors
        assert [d.name for d in libxl.domain_list()] == ["Domain-0", "h"]
    finally:
        libxl.domain_unpause(h)
        t.join(timeout=30)
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
