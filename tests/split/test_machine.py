"""The machine's own pieces: the host-bridge allocator and dom0's MSI platform.

Truth: PCI BAR rules (naturally aligned, inside the window of its type, no
overlap), the MMIO decode of the hypervisor's I/O bus reaching the device's
own registers, and ``PHYSDEVOP_map_pirq`` semantics (pirqs owned by the guest,
errors as negative errnos as Linux's ``pci_enable_msi*`` returns them).
"""

from __future__ import annotations

import errno
import itertools

import pytest

from xenpci.devices import catalog
from xenpci.devices.nic import E1000_IMS
from xenpci.pci.address import SBDF
from xenpci.pciback.platform import HvInterruptPlatform
from xenpci.toolstack.machine import Machine, MachineError

pytestmark = pytest.mark.timeout(20)


def test_model_bars_are_placed_aligned_disjoint_and_decoded(machine: Machine) -> None:
    fns = [
        *catalog.make("nic", SBDF(0, 3, 0, 0)),
        *catalog.make("gpu", SBDF(0, 4, 0, 0)),
        *catalog.make("legacy", SBDF(0, 5, 0, 0)),
        *catalog.make("subpage", SBDF(0, 6, 0, 0)),
    ]
    machine.add_host_devices(fns)
    spans = []
    for fn in fns:
        for bar in fn.bars:
            assert bar.size and bar.address % bar.size == 0, bar
            if bar.kind == "io":
                assert 0xC000 <= bar.address < 0x10000
            elif bar.kind == "mem64" and bar.prefetchable:
                assert bar.address >= 1 << 32  # the 256 MiB GPU BAR goes above 4 GiB
            else:
                assert bar.address + bar.size <= 1 << 32
            spans.append((bar.kind == "io", bar.address, bar.address + bar.size))
    for a, b in itertools.combinations(spans, 2):
        assert a[0] != b[0] or a[2] <= b[1] or b[2] <= a[1], (a, b)
    # the machine's bus decodes the NIC's BAR0 to the NIC's registers (memory decode on)
    nic = fns[0]
    nic.config_write(0x04, 2, 0x0002)
    bar0 = nic.bars[0]
    machine.hv.iobus.mmio_write(bar0.address + E1000_IMS, 4, 0x80)
    assert machine.hv.iobus.mmio_read(bar0.address + E1000_IMS, 4) == 0x80
    assert nic.mmio_read(0, E1000_IMS, 4) == 0x80


def test_same_function_twice_is_refused(machine: Machine) -> None:
    machine.add_host_devices(catalog.make("nic", SBDF(0, 3, 0, 0)))
    with pytest.raises(MachineError):
        machine.add_host_devices(catalog.make("nvme", SBDF(0, 3, 0, 0)))


def test_msi_platform_maps_pirqs_for_the_owner_and_reports_errnos(machine: Machine) -> None:
    nic = catalog.make("nic", SBDF(0, 3, 0, 0))[0]
    machine.add_host_devices([nic])
    domid = machine.start_guest("g", 16 * 1024, paused=True)
    plat = machine.irq_platform
    pirqs = plat.enable_msix(nic, domid, [0, 2])
    assert isinstance(pirqs, list) and len(set(pirqs)) == 2
    assert all(machine.hv.pirq_owner(p) == domid for p in pirqs)
    assert all(machine.dom0.irq_access_permitted(domid, p) for p in pirqs)
    assert plat.pirq_for("msix", nic.sbdf, 2) == pirqs[1]
    plat.disable_msix(nic)
    assert all(machine.hv.pirq_owner(p) is None for p in pirqs)
    assert plat.pirq_for("msix", nic.sbdf, 2) is None
    # an owner that does not exist: a negative errno, nothing left mapped
    got = plat.enable_msi(nic, 999, 1)
    assert isinstance(got, int) and got < 0
    assert got in (-errno.ESRCH, -errno.EINVAL, -errno.ENOENT)


def test_one_msi_platform_in_pciback_programs_the_msix_table(machine: Machine) -> None:
    """pciback's platform is the machine's, and it writes/masks MSI-X entries like Xen.

    Truth: PCI 3.0 §6.8.2 (entry = address lo/hi, data, vector control with
    Mask bit 0) and the x86 MSI address base 0xFEE00000.
    """
    nic = catalog.make("nic", SBDF(0, 3, 0, 0))[0]
    machine.add_host_devices([nic])
    assert nic.msix is not None
    domid = machine.start_guest("g", 16 * 1024, paused=True)
    plat = machine.irq_platform
    assert isinstance(plat, HvInterruptPlatform)
    # a second platform over the same dom0 handle: the class pciback ships works alone
    alone = HvInterruptPlatform(machine.dom0)
    for p in (plat, alone):
        pirqs = p.enable_msix(nic, domid, [0, 2])
        assert isinstance(pirqs, list)
        for entry, pirq in zip([0, 2], pirqs, strict=True):
            assert nic.msix.read_table(entry * 16, 4) == 0xFEE00000
            assert nic.msix.read_table(entry * 16 + 8, 4) == pirq
            assert not nic.msix.masked(entry)
            assert p.pirq_for("msix", nic.sbdf, entry) == pirq
        assert nic.msix.masked(1)  # untouched entries keep their reset mask
        assert p.mapped(nic, "msix") == pirqs
        p.disable_msix(nic)
        assert nic.msix.masked(0) and nic.msix.masked(2)
        assert p.pirq_for("msix", nic.sbdf, 2) is None
        assert all(machine.hv.pirq_owner(x) is None for x in pirqs)
