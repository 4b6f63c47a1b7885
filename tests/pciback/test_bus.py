"""Guest-visible topology: vpci (default) and passthrough (``vpci.c``, ``passthrough.c``)."""

from __future__ import annotations

import pytest

from tests.pciback.conftest import make_gpu, make_legacy, make_nic, seize
from xenpci.devices import catalog
from xenpci.pci.address import SBDF
from xenpci.pciback.errors import ENOMEM, BusError
from xenpci.pciback.passthrough import PassthroughBackend
from xenpci.pciback.pci_stub import PciStub
from xenpci.pciback.vpci import GuestAddress, VpciBackend, format_root, format_vdev


def test_vpci_keeps_physical_function_and_groups_slots(stub: PciStub) -> None:
    vpci = VpciBackend()
    f0, f1 = catalog.make("multifunction", "0000:03:00.0")
    gpu = make_gpu("0000:04:00.0")
    lone = make_nic("0000:05:00.3")
    a1 = vpci.add(seize(stub, f1, domid=None), 0)  # function 1 first: takes slot 0
    a_gpu = vpci.add(seize(stub, gpu, domid=None), 1)
    a0 = vpci.add(seize(stub, f0, domid=None), 2)  # joins its sibling in slot 0
    a3 = vpci.add(seize(stub, lone, domid=None), 3)
    assert [format_vdev(a) for a in (a1, a_gpu, a0, a3)] == [
        "0000:00:00.01",
        "0000:00:01.00",
        "0000:00:00.00",
        "0000:00:02.03",  # a lone function 3, no function 0 at that slot
    ]
    assert vpci.roots() == [(0, 0)]
    assert vpci.get(0, 0, 0x13) is not None and vpci.get(0, 0, 0x10) is None
    assert vpci.get(0, 0, 0x108) is vpci.get(0, 0, 0x08)  # devfn masked to 8 bits
    assert vpci.get(0, 1, 0x08) is None and vpci.get(1, 0, 0x08) is None
    psdev = stub.get(SBDF.parse("0000:04:00.0"))
    assert vpci.find(psdev) == GuestAddress(0, 0, 0x08)
    vpci.release(psdev)
    assert vpci.get(0, 0, 0x08) is None
    # The freed slot is reused first.
    assert format_vdev(vpci.add(psdev, 4)) == "0000:00:01.00"


def test_vpci_accepts_bridges(stub: PciStub) -> None:
    """Linux's refusal tests (class >> 24) on a 24-bit class: never true."""
    bridge, _ = catalog.make("bridge", "0000:07:00.0")
    assert bridge.class_code >> 16 == 0x06
    vpci = VpciBackend()
    assert vpci.add(seize(stub, bridge, domid=None), 0) == GuestAddress(0, 0, 0)


def test_vpci_full_bus(stub: PciStub) -> None:
    vpci = VpciBackend()
    for slot in range(32):
        vpci.add(seize(stub, make_legacy(f"0000:10:{slot:02x}.0"), domid=None), slot)
    with pytest.raises(BusError) as e:
        vpci.add(seize(stub, make_legacy("0000:11:00.0"), domid=None), 32)
    assert e.value.code == ENOMEM


def test_passthrough_real_bdfs_and_root_dedup(stub: PciStub) -> None:
    pt = PassthroughBackend()
    bridge, behind = catalog.make("bridge", "0000:07:00.0")
    nic = make_nic("0000:03:00.0")
    nic2 = make_nic("0000:03:01.0")
    for i, hw in enumerate((nic, bridge, behind, nic2)):
        addr = pt.add(seize(stub, hw, domid=None), i)
        assert addr.sbdf == hw.sbdf
    # 03 and 07 are roots; 08 (behind the exported bridge) is reached through it.
    assert behind.sbdf.bus == bridge.config_read(0x19, 1)
    assert pt.roots() == [(0, 3), (0, 7)]
    assert [format_root(*r) for r in pt.roots()] == ["0000:03", "0000:07"]
    assert pt.get(0, 3, 0x08) is stub.get(nic2.sbdf)
    assert pt.get(0, 3, 0x108) is None  # exact devfn, no masking
    assert pt.get(1, 3, 0x08) is None


def test_passthrough_root_without_bridge_export(stub: PciStub) -> None:
    pt = PassthroughBackend()
    _, behind = catalog.make("bridge", "0000:07:00.0")
    pt.add(seize(stub, behind, domid=None), 0)
    assert pt.roots() == [(0, behind.sbdf.bus)]


def test_new_root_entries_dedup() -> None:
    from xenpci.pciback.vpci import new_root_entries

    assert new_root_entries([(0, 3), (0, 7), (0, 3)], ["0000:03"]) == ["0000:07"]
    assert new_root_entries([(0, 0)], []) == ["0000:00"]
