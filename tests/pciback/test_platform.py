"""MSI-X through the real hypervisor model: pirqs owned by and bindable by the guest."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from tests.pciback.conftest import NIC_BAR0, NIC_BAR3, make_nic
from tests.pciback.test_ops import msix_op
from xenpci.abi import pciif
from xenpci.hv import PAGE_SHIFT, Hypervisor
from xenpci.hv.errors import HvError
from xenpci.pci import regs
from xenpci.pciback.pci_stub import PciStub
from xenpci.pciback.pciback_ops import handle_op
from xenpci.pciback.platform import HvInterruptPlatform
from xenpci.pciback.vpci import VpciBackend


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    machine = Hypervisor(ram_frames=4096, dom0_memory_kib=512)
    yield machine
    machine.shutdown()


def test_msix_pirqs_belong_to_the_guest(hv: Hypervisor) -> None:
    guest = hv.create_domain("guest", 256)
    other = hv.create_domain("other", 256)
    plat = HvInterruptPlatform(hv.dom0.hypercalls)
    stub = PciStub(platform=plat)
    hw = make_nic()
    psdev = stub.seize(hw)
    stub.get_pci_dev(hw.sbdf, guest.domid)
    vpci = VpciBackend()
    vpci.add(psdev, 0)
    hw.config_write(4, 2, hw.config_read(4, 2) | regs.PCI_COMMAND_MEMORY)
    r = handle_op(msix_op([0, 1]), vpci, plat)
    assert r.err == 0 and r.msix_vectors is not None
    for pirq in r.msix_vectors:
        assert hv.pirq_owner(pirq) == guest.domid
    port = guest.hypercalls.evtchn_bind_pirq(r.msix_vectors[0])
    assert port > 0
    with pytest.raises(HvError):
        other.hypercalls.evtchn_bind_pirq(r.msix_vectors[1])
    guest.hypercalls.evtchn_close(port)
    r2 = handle_op(msix_op([0]).__class__(cmd=pciif.XEN_PCI_OP_disable_msix), vpci, plat)
    assert r2.err == 0
    assert all(hv.pirq_owner(p) is None for p in r.msix_vectors)
    # Release from the guest also tears down whatever is still mapped.
    r = handle_op(msix_op([2]), vpci, plat)
    assert r.err == 0 and r.msix_vectors is not None
    stub.put_pci_dev(hw.sbdf)
    assert hv.pirq_owner(r.msix_vectors[0]) is None
    assert not hw.config_read(0x84 + 2, 2) & regs.PCI_MSIX_FLAGS_ENABLE


def test_seize_protects_msix_and_release_lifts_it(hv: Hypervisor) -> None:
    """pcistub_init_device issues PHYSDEVOP_prepare_msix, pcistub_device_release
    release_msix; the windows come from the NIC's MSI-X capability (table in BAR3)."""
    plat = HvInterruptPlatform(hv.dom0.hypercalls)
    stub = PciStub(platform=plat)
    hw = make_nic()
    stub.seize(hw)
    (region,) = hv.msixtbl.regions()
    assert region.sbdf == hw.sbdf.sbdf_int
    assert region.table_paddr == NIC_BAR3  # the capability's BIR 3, offset 0
    assert hv.msixtbl.is_protected(NIC_BAR3 >> PAGE_SHIFT)
    assert not hv.msixtbl.is_protected(NIC_BAR0 >> PAGE_SHIFT)
    stub.release(hw.sbdf)
    assert hv.msixtbl.regions() == []
    assert not hv.msixtbl.is_protected(NIC_BAR3 >> PAGE_SHIFT)
    stub.seize(hw)  # seizable again: nothing stale was left in the hypervisor
    assert len(hv.msixtbl.regions()) == 1


def test_prepare_refusal_is_logged_not_fatal(hv: Hypervisor) -> None:
    plat = HvInterruptPlatform(hv.dom0.hypercalls)
    hw = make_nic()
    hv.dom0.hypercalls.prepare_msix(hw.sbdf.sbdf_int, 0x1000, 16, 0x2000, 8)  # someone else's
    psdev = PciStub(platform=plat).seize(hw)
    assert any("MSI-X preparation failed (-16)" in w for w in psdev.dev_data.warnings)


def test_memory_decode_maps_only_granted_bars(hv: Hypervisor) -> None:
    guest = hv.create_domain("guest", 256)
    plat = HvInterruptPlatform(hv.dom0.hypercalls)
    hw = make_nic()
    bar0 = NIC_BAR0 >> PAGE_SHIFT
    # Nothing granted yet: the hypervisor refuses, the platform answers -EPERM, never raises.
    assert plat.memory_decode(hw, guest.domid, False) == -errno.EPERM
    assert guest.domid not in hv.decode_off
    hv.dom0.hypercalls.iomem_permission(guest.domid, bar0, 0x20, True)
    # BAR3 is still not granted: BAR0 follows anyway, the refusal is reported.
    assert plat.memory_decode(hw, guest.domid, False) == -errno.EPERM
    off = hv.decode_off[guest.domid]
    assert bar0 in off and bar0 + 0x1F in off and NIC_BAR3 >> PAGE_SHIFT not in off
    assert plat.memory_decode(hw, guest.domid, True) == -errno.EPERM
    assert guest.domid not in hv.decode_off
