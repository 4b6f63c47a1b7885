"""Privileged calls, iomem/ioport/irq capabilities, the data path, the IOMMU and pirqs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from xenpci.hv import (
    MMIO_BASE,
    PAGE_SHIFT,
    PAGE_SIZE,
    DeviceError,
    DmaFault,
    Domain,
    EvtchnError,
    Hypervisor,
    InvalidArgument,
    MmioDenied,
    NoSuchDomain,
    PermissionDenied,
)

pytestmark = pytest.mark.timeout(30)

SBDF = (0 << 16) | (3 << 8) | (0 << 3) | 0  # 0000:03:00.0
BAR_MFN = MMIO_BASE >> PAGE_SHIFT


class Regs:
    """A minimal device register file: little-endian bytes, access by offset/size."""

    def __init__(self, size: int) -> None:
        self.mem = bytearray(size)
        self.log: list[tuple[str, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.log.append(("r", offset, size))
        return int.from_bytes(self.mem[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("w", offset, size))
        self.mem[offset : offset + size] = value.to_bytes(size, "little")


PRIVILEGED: list[tuple[str, tuple[Any, ...]]] = [
    ("domctl_createdomain", ("evil", 64)),
    ("domctl_destroydomain", (0,)),
    ("iomem_permission", (1, BAR_MFN, 1, True)),
    ("ioport_permission", (1, 0xC000, 8, True)),
    ("irq_permission", (1, 16, True)),
    ("assign_device", (1, SBDF)),
    ("deassign_device", (1, SBDF)),
    ("map_pirq", (1, 16)),
    ("unmap_pirq", (1, 16)),
]


@pytest.mark.parametrize(("op", "args"), PRIVILEGED, ids=[p[0] for p in PRIVILEGED])
def test_privileged_calls_refuse_guests(
    hv: Hypervisor, guest: Domain, op: str, args: tuple[Any, ...]
) -> None:
    fn: Callable[..., Any] = getattr(guest.hypercalls, op)
    before = (len(hv.domains()), hv.permissions.snapshot(1), hv.iommu.assigned(1))
    with pytest.raises(PermissionDenied) as e:
        fn(*args)
    assert e.value.errno == "EPERM" and e.value.op == op and e.value.domid == guest.domid
    assert op in str(e.value) and "d1" in str(e.value)
    assert (len(hv.domains()), hv.permissions.snapshot(1), hv.iommu.assigned(1)) == before
    last = hv.trace.events[-1]
    assert (last.kind, last.domid, last.args["error"]) == (op, guest.domid, "EPERM")


def test_iomem_permission_gates_mmio_and_revocation_cuts_it_off(
    hv: Hypervisor, guest: Domain
) -> None:
    regs = Regs(2 * PAGE_SIZE)
    hv.iobus.register_mmio(MMIO_BASE, 2 * PAGE_SIZE, regs)
    hc, d0 = guest.hypercalls, hv.dom0.hypercalls
    assert not hc.iomem_access_permitted(guest.domid, BAR_MFN, BAR_MFN)
    with pytest.raises(MmioDenied):
        hc.mmio_map(BAR_MFN, 2)
    d0.iomem_permission(guest.domid, BAR_MFN, 1, True)
    with pytest.raises(MmioDenied):
        hc.mmio_map(BAR_MFN, 2)  # only the first page was granted
    d0.iomem_permission(guest.domid, BAR_MFN + 1, 1, True)
    assert hv.permissions.snapshot(guest.domid)["iomem"] == [(BAR_MFN, BAR_MFN + 1)]
    bar = hc.mmio_map(BAR_MFN, 2)
    bar.write(0x10, 4, 0xDEADBEEF)
    assert regs.mem[0x10:0x14] == bytes.fromhex("efbeadde")
    assert bar.read(PAGE_SIZE + 8, 2) == 0
    with pytest.raises(MmioDenied):
        bar.read(2 * PAGE_SIZE - 2, 4)  # runs off the mapping
    with pytest.raises(InvalidArgument):
        bar.write(0, 3, 1)
    assert hv.trace.count("mmio_write", domid=guest.domid) == 1
    d0.iomem_permission(guest.domid, BAR_MFN + 1, 1, False)
    bar.read(0, 4)  # page 0 still allowed
    with pytest.raises(MmioDenied):
        bar.read(PAGE_SIZE, 4)
    bar.unmap()
    with pytest.raises(MmioDenied):
        bar.read(0, 4)


def test_permission_calls_validate_and_need_an_existing_target(hv: Hypervisor) -> None:
    d0 = hv.dom0.hypercalls
    with pytest.raises(NoSuchDomain):
        d0.iomem_permission(9, BAR_MFN, 1, True)
    with pytest.raises(InvalidArgument):
        d0.iomem_permission(0, BAR_MFN, 0, True)
    with pytest.raises(InvalidArgument):
        d0.ioport_permission(0, 0xFFFF, 2, True)
    with pytest.raises(InvalidArgument):
        d0.irq_permission(0, 5000, True)


def test_ioports(hv: Hypervisor, guest: Domain) -> None:
    regs = Regs(8)
    hv.iobus.register_ioport(0xC000, 8, regs)
    hc = guest.hypercalls
    with pytest.raises(MmioDenied):
        hc.ioport_write(0xC000, 1, 1)
    hv.dom0.hypercalls.ioport_permission(guest.domid, 0xC000, 4, True)
    hc.ioport_write(0xC002, 2, 0xBEEF)
    assert hc.ioport_read(0xC002, 2) == 0xBEEF
    with pytest.raises(MmioDenied):
        hc.ioport_read(0xC003, 2)  # straddles the granted range
    assert regs.log == [("w", 2, 2), ("r", 2, 2)]
    assert hv.dom0.hypercalls.ioport_read(0x80, 1) == 0xFF  # nobody decodes it


def test_iobus_rejects_overlaps(hv: Hypervisor) -> None:
    hv.iobus.register_mmio(MMIO_BASE, PAGE_SIZE, Regs(PAGE_SIZE))
    with pytest.raises(InvalidArgument) as e:
        hv.iobus.register_mmio(MMIO_BASE + 0x800, PAGE_SIZE, Regs(PAGE_SIZE))
    assert e.value.errno == "EBUSY"
    hv.iobus.unregister(MMIO_BASE)
    hv.iobus.register_mmio(MMIO_BASE + 0x800, PAGE_SIZE, Regs(PAGE_SIZE))


def test_iommu_translates_through_the_owner_and_faults_outside(
    hv: Hypervisor, guest: Domain
) -> None:
    hv.dom0.hypercalls.assign_device(guest.domid, SBDF)
    dma = hv.iommu.dma_port(SBDF)
    dma.write(PAGE_SIZE - 2, b"abcd")  # crosses into the next guest frame
    assert guest.hypercalls.read(PAGE_SIZE - 2, 4) == b"abcd"
    assert dma.read(PAGE_SIZE - 2, 4) == b"abcd"
    end = guest.nr_pages * PAGE_SIZE
    before = guest.hypercalls.read(end - PAGE_SIZE, PAGE_SIZE)
    with pytest.raises(DmaFault) as e:
        dma.write(end - 2, b"over")  # half in, half out: nothing may be written
    assert e.value.data["bus_addr"] == end - 2
    assert guest.hypercalls.read(end - PAGE_SIZE, PAGE_SIZE) == before
    assert hv.iommu.faults[-1].sbdf == SBDF and hv.trace.count("dma_fault") == 1


def test_assign_and_deassign_errors(hv: Hypervisor, guest: Domain) -> None:
    other = hv.create_domain("other", 64)
    d0 = hv.dom0.hypercalls
    d0.assign_device(guest.domid, SBDF)
    with pytest.raises(DeviceError) as e:
        d0.assign_device(other.domid, SBDF)
    assert e.value.errno == "EBUSY"
    with pytest.raises(DeviceError) as e2:
        d0.deassign_device(other.domid, SBDF)
    assert e2.value.errno == "ENODEV"
    assert hv.iommu.owner(SBDF) == guest.domid
    hv.destroy_domain(guest.domid)
    assert hv.iommu.owner(SBDF) == 0  # back to the hardware domain


def attack_dom0(hv: Hypervisor) -> tuple[bytes, int, bool]:
    """A guest's device DMAs to the machine address of a dom0 frame."""
    secret = b"dom0 secret page"
    hv.dom0.hypercalls.write(0, secret)
    guest = hv.create_domain("attacker", 64)
    hv.dom0.hypercalls.assign_device(guest.domid, SBDF)
    target = hv.dom0.p2m.mfns[0] << PAGE_SHIFT
    faulted = False
    try:
        hv.iommu.dma_port(SBDF).write(target, b"PWNED")
    except DmaFault:
        faulted = True
    return hv.dom0.hypercalls.read(0, len(secret)), target, faulted


def test_without_iommu_a_guests_device_overwrites_dom0(nohv: Hypervisor) -> None:
    got, _, faulted = attack_dom0(nohv)
    assert got.startswith(b"PWNED") and not faulted
    assert nohv.trace.count("dma_write") == 1


def test_with_iommu_the_same_attack_faults(hv: Hypervisor) -> None:
    got, target, faulted = attack_dom0(hv)
    assert got == b"dom0 secret page" and faulted
    assert hv.iommu.faults[-1].bus_addr == target


def test_pirq_delivery_needs_mapping_permission_and_binding(hv: Hypervisor, guest: Domain) -> None:
    d0, hc = hv.dom0.hypercalls, guest.hypercalls
    pirq = d0.map_pirq(guest.domid, "msi:0000:03:00.0:0")
    assert pirq >= 256
    assert d0.map_pirq(guest.domid, 16) == 16  # a GSI keeps its number
    with pytest.raises(InvalidArgument) as busy:
        d0.map_pirq(0, 16)
    assert busy.value.errno == "EBUSY"
    with pytest.raises(PermissionDenied):
        hc.evtchn_bind_pirq(pirq)  # mapped but not permitted
    with pytest.raises(EvtchnError):
        hc.evtchn_bind_pirq(17)  # not mapped to the guest
    d0.irq_permission(guest.domid, pirq, True)
    port = hc.evtchn_bind_pirq(pirq)
    got: list[int] = []
    hc.evtchn_set_handler(port, got.append)
    assert hv.raise_pirq(pirq)
    guest.call(lambda: None)
    assert got == [port]
    assert not hv.raise_pirq(16)  # mapped, nobody bound it: dropped, recorded
    hc.evtchn_close(port)
    assert not hv.raise_pirq(pirq)
    d0.unmap_pirq(guest.domid, pirq)
    assert hv.pirq_owner(pirq) is None
