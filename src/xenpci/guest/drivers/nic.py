"""The guest driver for the catalog's loopback NIC: frames through descriptor rings.

Models what an e1000-family Linux driver (``drivers/net/ethernet/intel/e1000``:
``e1000_configure_tx``/``_rx``, ``e1000_xmit_frame``, ``e1000_clean_rx_irq``)
does with the registers of :mod:`xenpci.devices.nic`: rings of 16-byte
legacy descriptors in guest pages, the tail doorbell written by MMIO straight
to the device, the device DMAing frames in and out of guest memory through
the IOMMU, and completions signalled by MSI-X vectors that reach the guest as
event channels. Deliberate differences: one frame per descriptor
(no scatter-gather on send), no NAPI budget, interrupts are waited for
synchronously.
"""

from __future__ import annotations

from typing import ClassVar

from xenpci.devices import nic as hw
from xenpci.devices.ring import (
    DESC_SIZE,
    DESC_STA_DD,
    RXD_STA_EOP,
    TXD_CMD_EOP,
    TXD_CMD_RS,
    Descriptor,
)
from xenpci.guest.drivers.base import (
    DEFAULT_IRQ_TIMEOUT,
    BarMapping,
    DeviceFailed,
    DmaBuffer,
    DriverError,
    PciDriver,
)
from xenpci.guest.kernel import GuestKernel
from xenpci.guest.pci_core import GuestPciDevice
from xenpci.hv import PAGE_SIZE

RING_ENTRIES = 16  # a page holds 256; a small ring exercises wrap-around sooner
BUFS_PER_PAGE = PAGE_SIZE // hw.RX_BUFFER_SIZE
MAX_TX_FRAME = PAGE_SIZE


class NicDriver(PciDriver):
    """Probe, send, receive, remove for one NIC function."""

    VENDOR: ClassVar[int] = hw.NIC_VENDOR
    DEVICE: ClassVar[int] = hw.NIC_DEVICE

    def __init__(self, kernel: GuestKernel, dev: GuestPciDevice | None = None) -> None:
        super().__init__(kernel, dev)
        self.regs: BarMapping | None = None
        self.tx_ring: DmaBuffer | None = None
        self.rx_ring: DmaBuffer | None = None
        self.tx_bufs: list[DmaBuffer] = []
        self.rx_bufs: list[tuple[DmaBuffer, int]] = []  # (page, offset) per RX descriptor
        self.rx_next = 0
        self.tx_tail = 0
        self.frames_sent = 0
        self.frames_received = 0

    # -- probe ------------------------------------------------------------------------
    def probe(self) -> None:
        """``e1000_probe`` + ``e1000_open``: enable, map, rings, MSI-X, engine on."""
        self.enable(memory=True, master=True)
        regs = self.iomap(0)
        self.regs = regs
        self.enable_msix([hw.VEC_RX, hw.VEC_TX, hw.VEC_OTHER])
        self.tx_ring = self.alloc_dma()
        self.rx_ring = self.alloc_dma()
        self.tx_bufs = [self.alloc_dma() for _ in range(RING_ENTRIES)]
        pages = [self.alloc_dma() for _ in range(RING_ENTRIES // BUFS_PER_PAGE)]
        self.rx_bufs = [
            (page, slot * hw.RX_BUFFER_SIZE) for page in pages for slot in range(BUFS_PER_PAGE)
        ]
        for i, (page, off) in enumerate(self.rx_bufs):
            self._put_desc(self.rx_ring, i, Descriptor(page.bus + off, 0))
        for prefix, ring in (("R", self.rx_ring), ("T", self.tx_ring)):
            base = hw.E1000_RDBAL if prefix == "R" else hw.E1000_TDBAL
            regs.write(base, 4, ring.bus & 0xFFFF_FFFF)
            regs.write(base + 4, 4, ring.bus >> 32)
            regs.write(base + 8, 4, RING_ENTRIES * DESC_SIZE)
            regs.write(base + 0x10, 4, 0)  # head
            regs.write(base + 0x18, 4, 0)  # tail
        # Give the device every RX descriptor but one (head == tail means "owns none").
        regs.write(hw.E1000_RDT, 4, RING_ENTRIES - 1)
        regs.write(hw.E1000_IMS, 4, hw.ICR_RXT0 | hw.ICR_TXDW | hw.ICR_RXO | hw.ICR_DMA_ERR)
        regs.write(hw.E1000_CTRL, 4, hw.CTRL_EN)

    def _regs(self) -> BarMapping:
        if self.regs is None:
            raise DriverError(f"d{self.domid}: NIC not probed")
        return self.regs

    def _put_desc(self, ring: DmaBuffer, index: int, desc: Descriptor) -> None:
        self.hc.write(ring.gpaddr + DESC_SIZE * index, desc.pack())

    def _get_desc(self, ring: DmaBuffer, index: int) -> Descriptor:
        return Descriptor.unpack(self.hc.read(ring.gpaddr + DESC_SIZE * index, DESC_SIZE))

    def _check_status(self) -> None:
        status = self._regs().read(hw.E1000_STATUS, 4)
        if status & hw.STATUS_DMA_ERR:
            raise DeviceFailed(f"d{self.domid} NIC DMA error", status)

    # -- data path ------------------------------------------------------------------------
    def send(self, frame: bytes, timeout: float = DEFAULT_IRQ_TIMEOUT) -> None:
        """``e1000_xmit_frame``: one frame, one descriptor; wait for TX done (TXDW)."""
        if not 0 < len(frame) <= MAX_TX_FRAME:
            raise DriverError(f"frame of {len(frame)} bytes (1..{MAX_TX_FRAME})")
        if self.tx_ring is None:
            raise DriverError(f"d{self.domid}: NIC not probed")
        regs = self._regs()
        idx = self.tx_tail
        buf = self.tx_bufs[idx]
        self.hc.write(buf.gpaddr, frame)
        self._put_desc(self.tx_ring, idx, Descriptor(buf.bus, len(frame), TXD_CMD_EOP | TXD_CMD_RS))
        before = self.irq_count(hw.VEC_TX)
        self.tx_tail = (idx + 1) % RING_ENTRIES
        regs.write(hw.E1000_TDT, 4, self.tx_tail)  # the doorbell, straight to the device
        self.wait_irq(hw.VEC_TX, before, timeout)
        self._check_status()
        done = self._get_desc(self.tx_ring, idx)
        if not done.status & DESC_STA_DD:
            raise DeviceFailed(f"d{self.domid} NIC TX descriptor {idx} not written back", 0)
        regs.write(hw.E1000_ICR, 4, hw.ICR_TXDW)  # write-1-to-clear
        self.frames_sent += 1

    def receive(self) -> list[bytes]:
        """``e1000_clean_rx_irq``: collect finished frames, hand descriptors back."""
        if self.rx_ring is None:
            raise DriverError(f"d{self.domid}: NIC not probed")
        regs = self._regs()
        frames: list[bytes] = []
        frame = bytearray()
        for _ in range(RING_ENTRIES):
            idx = self.rx_next
            desc = self._get_desc(self.rx_ring, idx)
            if not desc.status & DESC_STA_DD:
                break
            page, off = self.rx_bufs[idx]
            frame += self.hc.read(page.gpaddr + off, desc.length)
            if desc.status & RXD_STA_EOP:
                frames.append(bytes(frame))
                frame.clear()
            self._put_desc(self.rx_ring, idx, Descriptor(page.bus + off, 0))
            # The descriptor just cleaned becomes the new tail: the device may use it again.
            regs.write(hw.E1000_RDT, 4, idx)
            self.rx_next = (idx + 1) % RING_ENTRIES
        regs.write(hw.E1000_ICR, 4, hw.ICR_RXT0)
        self.frames_received += len(frames)
        return frames

    def loopback(self, frames: list[bytes], timeout: float = DEFAULT_IRQ_TIMEOUT) -> list[bytes]:
        """Send each frame and collect what comes back (the NIC is wired to itself)."""
        got: list[bytes] = []
        for frame in frames:
            before = self.irq_count(hw.VEC_RX)
            self.send(frame, timeout)
            self.wait_irq(hw.VEC_RX, before, timeout)
            got += self.receive()
        return got

    def remove(self) -> None:
        if self.regs is not None:
            self.regs.write(hw.E1000_CTRL, 4, 0)
            self.regs.write(hw.E1000_IMS, 4, 0)
        self.regs = None
        super().remove()
