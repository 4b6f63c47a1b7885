"""MSI-X through the real hypervisor model: pirqs owned by and bindable by the guest."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pciback.conftest import make_nic
from tests.pciback.test_ops import msix_op
from xenpci.abi import pciif
from xenpci.hv import Hypervisor
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
