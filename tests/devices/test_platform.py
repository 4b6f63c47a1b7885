"""Devices on the real hypervisor model: BAR handlers on the IoBus, DMA through the IOMMU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.devices.test_nic import RX_RING, TX_RING, N
from xenpci.devices import catalog
from xenpci.devices.nic import (
    CTRL_EN,
    E1000_CTRL,
    E1000_RDBAL,
    E1000_RDLEN,
    E1000_RDT,
    E1000_STATUS,
    E1000_TDBAL,
    E1000_TDLEN,
    E1000_TDT,
    STATUS_DMA_ERR,
    NicFunction,
)
from xenpci.devices.ring import DESC_STA_DD, RXD_STA_EOP, TXD_CMD_EOP, Descriptor
from xenpci.hv import Hypervisor
from xenpci.pci import regs

BAR0 = 0xFE00_0000


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    machine = Hypervisor(ram_frames=4096, dom0_memory_kib=1024, deterministic=True)
    yield machine
    machine.shutdown()


def test_nic_dma_through_the_iommu_into_guest_memory(hv: Hypervisor) -> None:
    guest = hv.create_domain("guest", 1024)  # 256 pages = 1 MiB of guest-physical space
    (fn,) = catalog.make("nic", "0000:03:00.0")
    assert isinstance(fn, NicFunction)
    hv.iommu.assign(guest.domid, fn.sbdf.sbdf_int)
    fn.attach_dma(hv.iommu.dma_port(fn.sbdf.sbdf_int))
    fn.assign_bar(0, BAR0)
    hv.iobus.register_mmio(BAR0, fn.bar_sizes[0], fn.bar_handler(0))
    cmd = regs.PCI_COMMAND_MEMORY | regs.PCI_COMMAND_MASTER
    fn.config_write(regs.PCI_COMMAND, 2, cmd)

    mem = guest.p2m
    tx_buf, rx_buf = 0x40000, 0x50000
    for i in range(N):
        mem.write(RX_RING + 16 * i, Descriptor(rx_buf + 0x800 * i, 0).pack())
    payload = b"through the IOMMU" * 10
    mem.write(tx_buf, payload)
    mem.write(TX_RING, Descriptor(tx_buf, len(payload), TXD_CMD_EOP).pack())
    bus = hv.iobus
    for off, value in (
        (E1000_TDBAL, TX_RING),
        (E1000_TDLEN, 16 * N),
        (E1000_RDBAL, RX_RING),
        (E1000_RDLEN, 16 * N),
        (E1000_RDT, N - 1),
        (E1000_CTRL, CTRL_EN),
        (E1000_TDT, 1),
    ):
        bus.mmio_write(BAR0 + off, 4, value)
    rx = Descriptor.unpack(mem.read(RX_RING, 16))
    assert rx.status == DESC_STA_DD | RXD_STA_EOP
    assert mem.read(rx.addr, rx.length) == payload

    # A descriptor pointing outside the guest's memory faults in the IOMMU;
    # the device reports it and the platform keeps running.
    faults_before = len(hv.iommu.faults)
    mem.write(TX_RING + 16, Descriptor(0x7FFF_0000, 64, TXD_CMD_EOP).pack())
    bus.mmio_write(BAR0 + E1000_TDT, 4, 2)
    assert bus.mmio_read(BAR0 + E1000_STATUS, 4) & STATUS_DMA_ERR
    assert len(hv.iommu.faults) == faults_before + 1
    assert fn.core.last_fault is not None and fn.core.last_fault.bus_addr == 0x7FFF_0000
