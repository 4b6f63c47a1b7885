"""The loopback NIC: descriptor rings reached by DMA, with the data checked."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.devices.conftest import enable
from xenpci.devices import catalog
from xenpci.devices.dma import DmaWindow, MemoryDmaPort
from xenpci.devices.errors import DmaFault
from xenpci.devices.irq import IrqLog
from xenpci.devices.nic import (
    CTRL_EN,
    E1000_CTRL,
    E1000_ICR,
    E1000_IMS,
    E1000_MPC,
    E1000_RDBAL,
    E1000_RDH,
    E1000_RDLEN,
    E1000_RDT,
    E1000_STATUS,
    E1000_TDBAL,
    E1000_TDH,
    E1000_TDLEN,
    E1000_TDT,
    ICR_DMA_ERR,
    ICR_RXO,
    ICR_RXT0,
    ICR_TXDW,
    STATUS_DMA_ERR,
    NicFunction,
)
from xenpci.devices.ring import DESC_STA_DD, RXD_STA_EOP, TXD_CMD_EOP, Descriptor
from xenpci.pci import regs
from xenpci.pci.address import SBDF

TX_RING, RX_RING, TX_BUF, RX_BUF = 0x10000, 0x20000, 0x100000, 0x200000
N = 8


class Driver:
    """Just enough of a NIC driver: rings in memory, registers through BAR0."""

    def __init__(self, fn: NicFunction, mem: MemoryDmaPort) -> None:
        self.fn, self.mem = fn, mem
        enable(fn)
        w = self.w
        w(E1000_TDBAL, TX_RING)
        w(E1000_TDLEN, 16 * N)
        w(E1000_RDBAL, RX_RING)
        w(E1000_RDLEN, 16 * N)
        for i in range(N):
            mem.write(RX_RING + 16 * i, Descriptor(RX_BUF + 0x1000 * i, 0).pack())
        w(E1000_RDT, N - 1)  # hand N-1 receive buffers to the device
        w(E1000_IMS, ICR_TXDW | ICR_RXT0 | ICR_RXO | ICR_DMA_ERR)
        w(E1000_CTRL, CTRL_EN)
        self.tx_tail = 0

    def w(self, off: int, value: int) -> None:
        self.fn.mmio_write(0, off, 4, value)

    def r(self, off: int) -> int:
        return self.fn.mmio_read(0, off, 4)

    def send(self, *fragments: bytes) -> None:
        for k, frag in enumerate(fragments):
            addr = TX_BUF + 0x1000 * self.tx_tail
            self.mem.write(addr, frag)
            cmd = TXD_CMD_EOP if k == len(fragments) - 1 else 0
            desc = Descriptor(addr, len(frag), cmd)
            self.mem.write(TX_RING + 16 * self.tx_tail, desc.pack())
            self.tx_tail = (self.tx_tail + 1) % N
        self.w(E1000_TDT, self.tx_tail)

    def rx_desc(self, i: int) -> Descriptor:
        return Descriptor.unpack(self.mem.read(RX_RING + 16 * i, 16))


@pytest.fixture
def setup() -> tuple[Driver, IrqLog]:
    log = IrqLog()
    mem = MemoryDmaPort()
    fn = NicFunction(SBDF(0, 3, 0, 0), dma=mem, raise_irq=log)
    return Driver(fn, mem), log


def test_packet_sent_on_tx_arrives_on_rx(setup: tuple[Driver, IrqLog]) -> None:
    drv, log = setup
    frame = bytes(range(256)) * 3
    drv.send(frame)
    d = drv.rx_desc(0)
    assert d.status == DESC_STA_DD | RXD_STA_EOP and d.length == len(frame)
    assert drv.mem.read(d.addr, d.length) == frame
    assert drv.r(E1000_TDH) == 1 and drv.r(E1000_RDH) == 1
    tx = Descriptor.unpack(drv.mem.read(TX_RING, 16))
    assert tx.status & DESC_STA_DD
    assert drv.r(E1000_ICR) & (ICR_TXDW | ICR_RXT0) == ICR_TXDW | ICR_RXT0
    assert log.events and all(e.kind == "intx" for e in log.events)
    drv.w(E1000_ICR, 0xFFFFFFFF)  # W1C acknowledges everything
    assert drv.r(E1000_ICR) == 0
    assert log.events[-1].asserted is False


def test_fragments_are_gathered_and_large_frames_span_rx_buffers(
    setup: tuple[Driver, IrqLog],
) -> None:
    drv, _log = setup
    frame = bytes((i * 7) & 0xFF for i in range(3000))
    drv.send(frame[:1000], frame[1000:2200], frame[2200:])
    first, second = drv.rx_desc(0), drv.rx_desc(1)
    assert first.status == DESC_STA_DD and second.status == DESC_STA_DD | RXD_STA_EOP
    got = drv.mem.read(first.addr, first.length) + drv.mem.read(second.addr, second.length)
    assert got == frame


def test_no_rx_buffers_counts_missed_packet(setup: tuple[Driver, IrqLog]) -> None:
    drv, _log = setup
    for i in range(N - 1):
        drv.send(bytes([i]) * 60)
    assert drv.r(E1000_MPC) == 0
    drv.send(b"x" * 60)  # ring full: RDH == RDT
    assert drv.r(E1000_MPC) == 1 and drv.r(E1000_ICR) & ICR_RXO


def test_back_to_back_functions() -> None:
    mem0, mem1 = MemoryDmaPort(), MemoryDmaPort()
    f0, f1 = catalog.make("multifunction", "0000:04:00.0")
    assert isinstance(f0, NicFunction) and isinstance(f1, NicFunction)
    f0.attach_dma(mem0)
    f1.attach_dma(mem1)
    d0, d1 = Driver(f0, mem0), Driver(f1, mem1)
    d0.send(b"ping" * 20)
    d1.send(b"pong" * 20)
    assert mem1.read(d1.rx_desc(0).addr, 80) == b"ping" * 20
    assert mem0.read(d0.rx_desc(0).addr, 80) == b"pong" * 20


def test_dma_fault_is_reported_not_raised() -> None:
    log = IrqLog()
    # Only the rings are mapped: the TX buffer fetch faults like an IOMMU miss.
    mem = MemoryDmaPort((DmaWindow(TX_RING, 0x1000), DmaWindow(RX_RING, 0x1000)))
    fn = NicFunction(SBDF(0, 3, 0, 0), dma=mem, raise_irq=log)
    drv = Driver(fn, mem)
    desc = Descriptor(0xDEAD_0000, 64, TXD_CMD_EOP)
    mem.write(TX_RING, desc.pack())
    drv.w(E1000_TDT, 1)  # must not raise
    assert drv.r(E1000_STATUS) & STATUS_DMA_ERR
    assert drv.r(E1000_ICR) & ICR_DMA_ERR
    assert fn.core.last_fault is not None and fn.core.last_fault.bus_addr == 0xDEAD_0000
    assert drv.r(E1000_TDH) == 0  # the faulting descriptor was not consumed
    fn.reset("flr")
    assert fn.mmio_read(0, E1000_STATUS, 4) == 0xFFFFFFFF  # decode off after FLR: master abort
    enable(fn)
    assert fn.mmio_read(0, E1000_STATUS, 4) & STATUS_DMA_ERR == 0


def test_bus_master_off_means_no_dma(setup: tuple[Driver, IrqLog]) -> None:
    drv, _log = setup
    cmd = drv.fn.config_read(regs.PCI_COMMAND, 2) & ~regs.PCI_COMMAND_MASTER
    drv.fn.config_write(regs.PCI_COMMAND, 2, cmd)
    before = drv.mem.bytes_read
    drv.send(b"z" * 64)
    assert drv.mem.bytes_read == before
    fault = drv.fn.core.last_fault
    assert fault is not None and "Bus Master" in fault.reason


def test_hostile_tail_beyond_ring_is_ignored(setup: tuple[Driver, IrqLog]) -> None:
    drv, _log = setup
    drv.w(E1000_TDT, 0xFFFF)
    assert drv.r(E1000_TDH) == 0
    assert drv.fn.core.errors


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(min_size=1, max_size=5000), min_size=1, max_size=3))
def test_any_frame_round_trips(frames: list[bytes]) -> None:
    mem = MemoryDmaPort()
    fn = NicFunction(SBDF(0, 3, 0, 0), dma=mem)
    drv = Driver(fn, mem)
    got: list[bytes] = []
    idx = 0
    for frame in frames:
        drv.send(frame)
        data = b""
        while True:
            d = drv.rx_desc(idx % N)
            data += mem.read(d.addr, d.length)
            idx += 1
            if d.status & RXD_STA_EOP:
                break
        got.append(data)
        # give the buffers back
        drv.w(E1000_RDT, (drv.r(E1000_RDH) + N - 1) % N)
    assert got == frames


def test_rx_buffer_fault_is_reported() -> None:
    mem = MemoryDmaPort(
        (DmaWindow(TX_RING, 0x1000), DmaWindow(RX_RING, 0x1000), DmaWindow(TX_BUF, 0x10000))
    )
    fn = NicFunction(SBDF(0, 3, 0, 0), dma=mem)
    drv = Driver(fn, mem)  # RX descriptors point at RX_BUF, which is not mapped
    drv.send(b"q" * 64)
    fault = fn.core.last_fault
    assert fault is not None and fault.write and fault.bus_addr == RX_BUF
    assert drv.r(E1000_STATUS) & STATUS_DMA_ERR
    assert drv.r(E1000_RDH) == 0


def test_no_dma_in_d3hot(setup: tuple[Driver, IrqLog]) -> None:
    drv, _log = setup
    assert drv.fn.dma.read(TX_RING, 4) == bytes(4)
    pm = drv.fn.caps[regs.PCI_CAP_ID_PM] + regs.PCI_PM_CTRL
    drv.fn.config_write(pm, 2, 3)
    with pytest.raises(DmaFault, match="not in D0"):
        drv.fn.dma.read(TX_RING, 4)
