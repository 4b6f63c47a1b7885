"""The hypervisor's side of the data path: BAR mapping follows decode, bus addresses.

Truth: the device's own registers (read from the device side), the machine
frames behind a guest page, and the IOMMU's fault log.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.datapath.conftest import NIC_BAR0, BareNic
from xenpci.hv import PAGE_SHIFT, PAGE_SIZE, DmaFault, Hypervisor, MmioDenied, PermissionDenied

pytestmark = pytest.mark.timeout(60)
FIRST = NIC_BAR0 >> PAGE_SHIFT


def test_mapping_follows_memory_decode(bare_nic: BareNic) -> None:
    g = bare_nic.guest.hypercalls
    m = g.mmio_map(FIRST, 0x20)
    m.write(0xD0, 4, 0x80)
    bare_nic.hv.dom0.hypercalls.memory_decode(bare_nic.guest.domid, FIRST, 0x20, False)
    assert m.read(0x8, 4) == 0xFFFF_FFFF  # not mapped: floats high
    m.write(0xD0, 4, 0x01)  # goes nowhere
    assert bare_nic.nic.core.regs["IMS"] == 0x80
    bare_nic.hv.dom0.hypercalls.memory_decode(bare_nic.guest.domid, FIRST, 0x20, True)
    assert m.read(0xD0, 4) == 0x80
    assert bare_nic.hv.trace.count("mmio_unmapped") == 2
    assert bare_nic.hv.decode_off == {}


def test_decode_is_per_guest_and_dom0_only(bare_nic: BareNic) -> None:
    g = bare_nic.guest.hypercalls
    with pytest.raises(PermissionDenied):
        g.memory_decode(g.domid, FIRST, 1, True)  # a guest cannot remap by itself
    other = bare_nic.hv.create_domain("other", 256)
    with pytest.raises(PermissionDenied):
        # dom0 cannot use the hook to hand out frames the guest was never granted.
        bare_nic.hv.dom0.hypercalls.memory_decode(other.domid, FIRST, 1, False)
    assert other.domid not in bare_nic.hv.decode_off


def test_unmapped_and_ungranted_accesses(bare_nic: BareNic) -> None:
    g = bare_nic.guest.hypercalls
    m = g.mmio_map(FIRST, 1)
    with pytest.raises(MmioDenied) as e:
        m.read(PAGE_SIZE, 4)  # beyond the mapping
    assert e.value.errno == "EINVAL"
    with pytest.raises(MmioDenied) as e2:
        g.mmio_map(FIRST + 0x24, 1)  # the page after BAR3 was not granted
    assert e2.value.errno == "EPERM"
    bare_nic.hv.dom0.hypercalls.iomem_permission(g.domid, FIRST, 0x20, False)
    with pytest.raises(MmioDenied):
        m.read(0, 4)  # revocation cuts an existing mapping off


@pytest.mark.parametrize("iommu", [True, False])
def test_bus_address_reaches_the_guest_page(iommu: bool) -> None:
    hv = Hypervisor(iommu=iommu, ram_frames=8192, dom0_memory_kib=1024, deterministic=True)
    try:
        guest = hv.create_domain("g", 256)
        g = guest.hypercalls
        gfn = g.alloc_page()
        bus = g.bus_address((gfn << PAGE_SHIFT) + 8)
        sbdf = 0x0300
        if iommu:
            hv.dom0.hypercalls.assign_device(guest.domid, sbdf)
            assert bus == (gfn << PAGE_SHIFT) + 8
        else:
            assert bus == (guest.p2m.mfn(gfn) << PAGE_SHIFT) + 8
        hv.iommu.dma_port(sbdf).write(bus, b"from the device")
        assert g.read((gfn << PAGE_SHIFT) + 8, 15) == b"from the device"
    finally:
        hv.shutdown()


def test_dma_outside_the_guest_faults_with_an_iommu() -> None:
    hv = Hypervisor(ram_frames=8192, dom0_memory_kib=1024, deterministic=True)
    try:
        guest = hv.create_domain("g", 256)
        hv.dom0.hypercalls.assign_device(guest.domid, 0x0300)
        dom0_frame = hv.dom0.p2m.mfn(0) << PAGE_SHIFT
        before = hv.dom0.hypercalls.read(0, 16)
        with pytest.raises(DmaFault):
            hv.iommu.dma_port(0x0300).write(dom0_frame, b"x" * 16)
        assert hv.dom0.hypercalls.read(0, 16) == before
        assert hv.iommu.faults[-1].bus_addr == dom0_frame
    finally:
        hv.shutdown()


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 64 * PAGE_SIZE), st.integers(0, 5 * PAGE_SIZE), st.booleans())
def test_dma_lands_exactly_where_the_guest_sees_it(start: int, n: int, iommu: bool) -> None:
    """Any span: bytes written by DMA are read back by the guest at the same place, or the
    whole DMA faults (nothing moves) when the span leaves the guest's 64 pages."""
    hv = Hypervisor(iommu=iommu, ram_frames=8192, dom0_memory_kib=1024, deterministic=True)
    try:
        guest = hv.create_domain("g", 256)
        g = guest.hypercalls
        if iommu:
            hv.dom0.hypercalls.assign_device(guest.domid, 0x0300)
        port = hv.iommu.dma_port(0x0300)
        data = bytes((i * 7) & 0xFF for i in range(n))
        if start + n > 64 * PAGE_SIZE or (not iommu and n == 0):
            if start + n > 64 * PAGE_SIZE and iommu:
                with pytest.raises(DmaFault):
                    port.write(g.bus_address(0) + start, data)
                assert g.read(0, 64 * PAGE_SIZE) == bytes(64 * PAGE_SIZE)
            return
        # Without an IOMMU the guest's frames are contiguous machine frames here.
        port.write(g.bus_address(0) + start, data)
        assert g.read(start, n) == data
        assert port.read(g.bus_address(0) + start, n) == data
        assert g.read(0, start) == bytes(start)
    finally:
        hv.shutdown()


class _Flat:
    """A register window that answers every read with one value."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return self.value & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def test_mapping_never_reaches_an_unregistered_device(bare_nic: BareNic) -> None:
    """The fast path caches the device window behind a mapping: a device that leaves
    the bus (hot-unplug) must stop answering at once, and a new one at the same
    address must get the accesses, offsets relative to its own window."""
    hv = bare_nic.hv
    m = bare_nic.guest.hypercalls.mmio_map(FIRST, 0x20)
    m.write(0xD0, 4, 0x80)
    assert m.read(0xD0, 4) == 0x80  # the NIC, through the cached window
    hv.iobus.unregister_mmio(NIC_BAR0)
    unclaimed = hv.iobus.unclaimed
    assert m.read(0xD0, 4) == 0xFFFF_FFFF  # master abort, not the departed NIC
    m.write(0xD0, 4, 0x01)
    assert hv.iobus.unclaimed == unclaimed + 2
    assert bare_nic.nic.core.regs["IMS"] == 0x80
    # A window starting one page below: the mapping's offsets shift by a page in it.
    new = _Flat(0x1234_5678)
    hv.iobus.register_mmio(NIC_BAR0 - PAGE_SIZE, 0x21 * PAGE_SIZE, new)
    assert m.read(0xD0, 4) == 0x1234_5678
    m.write(0xD0, 2, 0xBEEF)
    assert new.writes == [(PAGE_SIZE + 0xD0, 2, 0xBEEF)]
