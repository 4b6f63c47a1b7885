"""Integration of the toolstack with the split driver: the order of ``xl create``, resets
that keep the BARs, re-attaching right after the last detach, and what destroy leaves.

Truth: xl's creation order (fact sheet §3.4: the domain is built paused, devices are
added, it is unpaused last), Linux's ``pci_reset_function``/``pcistub_put_pci_dev``
(config state saved, reset, restored: BARs keep firmware's addresses), libxl's
``libxl__device_destroy`` (the backend path and its now-empty parent go), and the
guest's own view of its devices.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from xenpci.hv.scheduler import SteppedVcpu
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.host import HostDescription, boot_machine
from xenpci.toolstack.libxl import Libxl
from xenpci.toolstack.machine import Machine
from xenpci.toolstack.xlcfg import load_domain_config, parse_pci_spec
from xenpci.xenstore.client import XsClient

pytestmark = pytest.mark.timeout(60)

NIC = SBDF(0, 3, 0, 0)
NVME = SBDF(0, 4, 0, 0)
LEGACY = SBDF(0, 7, 0, 0)
HEADER_DWORDS = range(0, 64, 4)


@pytest.fixture
def machine() -> Iterator[Machine]:
    """A deterministic machine: one thread, its waits deadlines on a virtual clock."""
    m = boot_machine(HostDescription(), deterministic=True)
    try:
        yield m
    finally:
        m.shutdown()


def guest_sees(machine: Machine, domid: int) -> set[tuple[int, int]]:
    return {(d.vendor, d.device) for d in machine.guest(domid).pci.devices()}


def ids(machine: Machine, *sbdfs: SBDF) -> set[tuple[int, int]]:
    return {(f.vendor_id, f.device_id) for f in map(machine.host_function, sbdfs)}


class RecordingPlatform:
    """The machine, recording which devices the backend held when the guest first ran."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.hv = m.hv
        self.at_first_run: list[SBDF] | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self.m, name)

    def _record(self, domid: int) -> None:
        if self.at_first_run is None:
            self.at_first_run = [e.sbdf for e in lp.device_pci_list(self.m.xs, domid)]

    def start_guest(self, name: str, memory_kib: int, *, paused: bool = False) -> int:
        domid = self.m.start_guest(name, memory_kib, paused=paused)
        if not paused:
            self._record(domid)  # its kernel is already probing
        return domid

    def unpause_guest(self, domid: int) -> None:
        self._record(domid)
        self.m.unpause_guest(domid)


def test_create_runs_the_guest_only_after_every_device_is_in_the_backend(
    machine: Machine,
) -> None:
    plat = RecordingPlatform(machine)
    libxl = Libxl(plat, machine.xs)  # type: ignore[arg-type]
    for s in (NIC, NVME, LEGACY):
        libxl.assignable_add(s)
    cfg = load_domain_config('name="g"\nmemory=16\npci=["03:00.0", "04:00.0", "07:00.0"]')
    domid = libxl.domain_create(cfg)
    assert plat.at_first_run == [NIC, NVME, LEGACY]
    lp.wait_for_backend_state(machine.xs, domid)
    assert machine.guest(domid).wait_for_pcifront().wait_connected(1)
    assert guest_sees(machine, domid) == ids(machine, NIC, NVME, LEGACY)


def test_reset_of_a_seized_device_restores_what_pciback_saved(machine: Machine) -> None:
    machine.pciback_bind(NIC)
    nic = machine.host_function(NIC)
    before = [nic.config_read(off, 4) for off in HEADER_DWORDS]
    assert any(b.address for b in nic.bars)
    method = machine.reset_device(NIC)
    assert method is not None  # the NIC model has FLR
    assert [nic.config_read(off, 4) for off in HEADER_DWORDS] == before
    # the MMIO decode still reaches the device at its BAR
    bar0 = nic.bars[0]
    assert nic.config_read(regs.PCI_BASE_ADDRESS_0, 4) & ~0xF == bar0.address & 0xFFFFFFF0


def test_reset_of_an_unbound_device_keeps_its_current_header(machine: Machine) -> None:
    nvme = machine.host_function(NVME)
    nvme.config_write(regs.PCI_COMMAND, 2, regs.PCI_COMMAND_MEMORY | regs.PCI_COMMAND_MASTER)
    before = [nvme.config_read(off, 4) for off in HEADER_DWORDS]
    assert machine.reset_device(NVME) == "flr"
    # pci_reset_function: saved, reset, restored (COMMAND included)
    assert [nvme.config_read(off, 4) for off in HEADER_DWORDS] == before


def test_attach_detach_keeps_bars_and_routing(machine: Machine) -> None:
    libxl = Libxl(machine, machine.xs)
    libxl.assignable_add(NIC)
    nic = machine.host_function(NIC)
    assert "flr" in nic.reset_methods()  # libxl's resets really zero the header here
    before = [nic.config_read(off, 4) for off in HEADER_DWORDS[4:]]  # BARs .. INT_LINE
    g = libxl.domain_create(load_domain_config('name="g"\nmemory=16\npci=["03:00.0"]'))
    lp.wait_for_backend_state(machine.xs, g)
    assert [nic.config_read(off, 4) for off in HEADER_DWORDS[4:]] == before
    assert machine.guest(g).wait_for_pcifront().wait_connected(1)
    assert guest_sees(machine, g) == ids(machine, NIC)
    libxl.pci_detach(g, parse_pci_spec("03:00.0"))
    assert [nic.config_read(off, 4) for off in HEADER_DWORDS[4:]] == before
    libxl.domain_destroy(g)


def test_last_detach_and_destroy_leave_no_backend_directory(machine: Machine) -> None:
    libxl = Libxl(machine, machine.xs)
    for s in (NIC, NVME):
        libxl.assignable_add(s)
    g = libxl.domain_create(load_domain_config('name="g"\nmemory=16\npci=["03:00.0"]'))
    h = libxl.domain_create(load_domain_config('name="h"\nmemory=16\npci=["04:00.0"]'))
    for d in (g, h):
        lp.wait_for_backend_state(machine.xs, d)
    root = "/local/domain/0/backend/pci"
    libxl.pci_detach(g, parse_pci_spec("03:00.0"))
    assert not machine.xs.exists(f"{root}/{g}")  # xenstore-rm -t: the empty parent too
    assert not machine.xs.exists(f"/local/domain/{g}/device/pci")
    libxl.domain_destroy(g)
    assert machine.xs.ls(root) == [str(h)]  # a parent still in use is kept
    libxl.domain_destroy(h)
    assert not machine.xs.exists(root)
    # and the next guest's first device recreates everything
    g2 = libxl.domain_create(load_domain_config('name="g2"\nmemory=16\npci=["03:00.0"]'))
    lp.wait_for_backend_state(machine.xs, g2)
    assert machine.guest(g2).wait_for_pcifront().wait_connected(1)
    assert guest_sees(machine, g2) == ids(machine, NIC)


def hold(xs: XsClient) -> SteppedVcpu:
    """Hold one XenStore client's watch callbacks (they queue on its executor lane)."""
    assert xs.lane is not None
    xs.lane.pause(0.0)  # one thread runs everything: the pause takes effect at once
    return xs.lane


def test_reattach_right_after_the_last_detach_reconnects(
    machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``xl pci-detach g X; xl pci-attach g X`` with both drivers still holding the old
    device objects when libxl re-creates the directories: both must probe afresh.

    The drivers are held by pausing their clients' executor lanes: their watch events
    queue, exactly, until the lanes run again (no thread is blocked, no time guessed)."""
    assert machine.hv.scheduler is not None
    ex = machine.hv.scheduler
    libxl = Libxl(machine, machine.xs)
    libxl.assignable_add(NIC)
    g = libxl.domain_create(load_domain_config('name="g"\nmemory=16\npci=["03:00.0"]'))
    kernel = machine.guest(g)
    first = kernel.wait_for_pcifront()
    assert first.wait_connected(1)
    old_back = machine.pciback.wait_for_device(g)
    held: list[SteppedVcpu] = []
    real_destroy_ops = lp.destroy_ops

    def destroy_ops_with_drivers_held(domid: int) -> list[lp.XsOp]:
        # the handshake is done; hold both drivers so the deletion queues behind
        if not held:
            held.extend(hold(xs) for xs in (machine.pciback.xs, kernel.xs))
        return real_destroy_ops(domid)

    monkeypatch.setattr(lp, "destroy_ops", destroy_ops_with_drivers_held)
    try:
        libxl.pci_detach(g, parse_pci_spec("03:00.0"))
        assert held and not machine.xs.exists(lp.backend_path(g))
        ex.run_until_idle()  # all else runs; the held drivers have not seen the deletion
        monkeypatch.setattr(lp, "destroy_ops", real_destroy_ops)
        libxl.pci_attach(g, parse_pci_spec("03:00.0"))  # re-creates both directories
        ex.run_until_idle()
        assert kernel.pcifront is first and machine.pciback.devices[g] is old_back  # stale
    finally:
        for lane in held:
            lane.unpause()
    lp.wait_for_backend_state(machine.xs, g)
    front = kernel.wait_for_pcifront()
    assert front is not first and front.wait_connected(1)
    assert machine.pciback.devices[g] is not old_back
    assert guest_sees(machine, g) == ids(machine, NIC)
    # the stale objects wrote nothing into the new generation
    assert first.watch is not None and old_back.watch is not None
    assert first.watch.superseded() and old_back.watch.superseded()
    assert front.xenbus.history == [1, 3, 4]
    assert machine.pciback.devices[g].xenbus.history == [1, 2, 3, 4]
    dev = next(kernel.pci.devices())
    assert dev.read_config(regs.PCI_VENDOR_ID, 2) == machine.host_function(NIC).vendor_id
    libxl.domain_destroy(g)
