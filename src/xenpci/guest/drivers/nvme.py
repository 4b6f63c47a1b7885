"""The guest driver for the catalog's NVMe-like controller: write blocks, read them back.

Models the path of Linux ``drivers/nvme/host/pci.c`` a block I/O takes:
``nvme_pci_enable`` (enable, bus master, map BAR0), ``nvme_pci_configure_admin_queue``
(AQA/ASQ/ACQ, CC.EN, wait for CSTS.RDY), ``nvme_create_io_queues`` (Create I/O
CQ with an MSI-X vector, Create I/O SQ), then ``nvme_queue_rq`` (a 64-byte
command in the SQ, the SQ tail doorbell by MMIO) and ``nvme_irq`` (completions
found by their phase tag, CQ head doorbell). Data moves by DMA between guest
pages (named by PRP1/PRP2) and the device; the completion arrives as an MSI-X
vector delivered on an event channel. Constants are NVMe 1.4's
(:mod:`xenpci.devices.nvme`).

A command moves up to the controller's Maximum Data Transfer Size (MDTS,
``PAGE_SIZE << MDTS`` = 128 KiB, 32 pages): PRP1 names the first page; PRP2
the second page when the transfer spans exactly two, otherwise a PRP list (a
page of 8-byte entries naming every page after the first), as NVMe 1.4
section 4.3 prescribes and ``nvme_pci_setup_prps`` builds.

Deliberate differences: one I/O queue pair, one command in flight, the
driver polls nothing (it waits for the vector); the data pages are fixed
buffers allocated at probe (Linux maps each request's own pages), so the PRP
list is written once; the transfer limit is the model's MDTS constant
(Linux reads it from Identify Controller byte 77, which the model reports
with the same value).
"""

from __future__ import annotations

import struct
import time
from typing import ClassVar

from xenpci.devices import nvme as hw
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

QUEUE_ENTRIES = 16
IO_QID = 1
ADMIN_VECTOR = 0
IO_VECTOR = 1
#: Pages one command moves: the controller's MDTS (Identify byte 77), 32 pages.
MAX_PAGES_PER_CMD = 1 << hw.MDTS
MAX_BLOCKS_PER_CMD = MAX_PAGES_PER_CMD * PAGE_SIZE // hw.BLOCK_SIZE
_PRP_ENTRY = 8


class NvmeDriver(PciDriver):
    """Probe, block write/read, remove for one NVMe-like function."""

    VENDOR: ClassVar[int] = hw.NVME_VENDOR
    DEVICE: ClassVar[int] = hw.NVME_DEVICE

    def __init__(self, kernel: GuestKernel, dev: GuestPciDevice | None = None) -> None:
        super().__init__(kernel, dev)
        self.regs: BarMapping | None = None
        # qid -> (SQ page, CQ page, SQ tail, CQ head, CQ phase)
        self._q: dict[int, list[int]] = {}
        self._pages: dict[int, tuple[DmaBuffer, DmaBuffer]] = {}
        self._cid = 0
        self.data: list[DmaBuffer] = []
        self.prp_list: DmaBuffer | None = None
        self.commands = 0

    # -- probe ---------------------------------------------------------------------
    def probe(self, timeout: float = DEFAULT_IRQ_TIMEOUT) -> None:
        self.enable(memory=True, master=True)
        regs = self.iomap(0)
        self.regs = regs
        self.enable_msix([ADMIN_VECTOR, IO_VECTOR])
        asq, acq = self.alloc_dma(), self.alloc_dma()
        self._pages[0] = (asq, acq)
        self._q[0] = [0, 0, 1]
        regs.write(hw.NVME_REG_CC, 4, 0)
        regs.write(hw.NVME_REG_AQA, 4, (QUEUE_ENTRIES - 1) << 16 | (QUEUE_ENTRIES - 1))
        regs.write(hw.NVME_REG_ASQ, 8, asq.bus)
        regs.write(hw.NVME_REG_ACQ, 8, acq.bus)
        # IOSQES = 6 (64 bytes), IOCQES = 4 (16 bytes), EN.
        regs.write(hw.NVME_REG_CC, 4, 6 << 16 | 4 << 20 | hw.CC_EN)

        def settled() -> bool:
            return bool(regs.read(hw.NVME_REG_CSTS, 4) & (hw.CSTS_RDY | hw.CSTS_CFS))

        executor = self.kernel.executor
        if executor is not None:
            executor.wait_until(settled, timeout)  # a deadline on the virtual clock
        else:
            deadline = time.monotonic() + timeout
            while not settled() and time.monotonic() < deadline:
                time.sleep(0.001)  # nvme_wait_ready's msleep between polls
        if regs.read(hw.NVME_REG_CSTS, 4) & (hw.CSTS_RDY | hw.CSTS_CFS) != hw.CSTS_RDY:
            raise DeviceFailed(f"d{self.domid} NVMe did not become ready", 0)
        sq, cq = self.alloc_dma(), self.alloc_dma()
        self._pages[IO_QID] = (sq, cq)
        qsize = (QUEUE_ENTRIES - 1) << 16 | IO_QID
        # Create I/O CQ: physically contiguous (bit 0), interrupts enabled (bit 1), vector.
        self._admin(hw.ADM_CREATE_CQ, prp1=cq.bus, cdw10=qsize, cdw11=IO_VECTOR << 16 | 0x3)
        self._admin(hw.ADM_CREATE_SQ, prp1=sq.bus, cdw10=qsize, cdw11=IO_QID << 16 | 0x1)
        self._q[IO_QID] = [0, 0, 1]
        self.data = [self.alloc_dma() for _ in range(MAX_PAGES_PER_CMD)]
        # The PRP list: entry i names data page i + 1 (fixed buffers: written once).
        prp_list = self.alloc_dma()
        self.hc.write(prp_list.gpaddr, b"".join(struct.pack("<Q", b.bus) for b in self.data[1:]))
        self.prp_list = prp_list

    def _regs(self) -> BarMapping:
        if self.regs is None:
            raise DriverError(f"d{self.domid}: NVMe not probed")
        return self.regs

    # -- commands ------------------------------------------------------------------
    def _submit(
        self,
        qid: int,
        opcode: int,
        *,
        nsid: int = 0,
        prp1: int = 0,
        prp2: int = 0,
        cdw10: int = 0,
        cdw11: int = 0,
        cdw12: int = 0,
        timeout: float = DEFAULT_IRQ_TIMEOUT,
    ) -> int:
        """Queue one command, ring the doorbell, wait for its completion; return the status."""
        regs = self._regs()
        sq_page, cq_page = self._pages[qid]
        state = self._q[qid]
        self._cid = (self._cid + 1) & 0xFFFF
        cid = self._cid
        sqe = struct.pack(
            "<IIQQQQIIIIII",
            opcode | cid << 16,
            nsid,
            0,
            0,
            prp1,
            prp2,
            cdw10,
            cdw11,
            cdw12,
            0,
            0,
            0,
        )
        self.hc.write(sq_page.gpaddr + hw.SQE_SIZE * state[0], sqe)
        vector = IO_VECTOR if qid else ADMIN_VECTOR
        before = self.irq_count(vector)
        state[0] = (state[0] + 1) % QUEUE_ENTRIES
        regs.write(hw.NVME_REG_DBS + 8 * qid, 4, state[0])  # SQ tail doorbell
        self.wait_irq(vector, before, timeout)
        cqe = self.hc.read(cq_page.gpaddr + hw.CQE_SIZE * state[1], hw.CQE_SIZE)
        _result, _rsvd, _sqhd, _sqid, got_cid, sf = struct.unpack("<IIHHHH", cqe)
        if sf & 1 != state[2]:
            raise DeviceFailed(f"d{self.domid} NVMe: no completion for command {cid}", 0)
        if got_cid != cid:
            raise DeviceFailed(f"d{self.domid} NVMe: completion for {got_cid}, not {cid}", 0)
        state[1] = (state[1] + 1) % QUEUE_ENTRIES
        if state[1] == 0:
            state[2] ^= 1
        regs.write(hw.NVME_REG_DBS + 8 * qid + 4, 4, state[1])  # CQ head doorbell
        self.commands += 1
        status: int = (sf >> 1) & 0xFF | ((sf >> 9) & 0x7) << 8
        return status

    def _admin(self, opcode: int, **kw: int) -> None:
        status = self._submit(0, opcode, **kw)
        if status != hw.SC_SUCCESS:
            raise DeviceFailed(f"d{self.domid} NVMe admin opcode {opcode:#x}", status)

    def submit_io(self, opcode: int, slba: int, nblocks: int, prp1: int, prp2: int = 0) -> int:
        """One NVM command with raw PRPs (what a buggy or hostile driver could send)."""
        if not 1 <= nblocks <= 0x10000:
            raise DriverError(f"block count {nblocks} out of range")
        return self._submit(
            IO_QID,
            opcode,
            nsid=1,
            prp1=prp1,
            prp2=prp2,
            cdw10=slba & 0xFFFF_FFFF,
            cdw11=slba >> 32,
            cdw12=nblocks - 1,
        )

    def _check_len(self, nblocks: int) -> None:
        if not 1 <= nblocks <= MAX_BLOCKS_PER_CMD:
            raise DriverError(f"{nblocks} blocks per command (1..{MAX_BLOCKS_PER_CMD})")

    def _prps(self, nbytes: int) -> tuple[int, int]:
        """PRP1 and PRP2 of a transfer of ``nbytes`` from the start of the data pages."""
        if self.prp_list is None:
            raise DriverError(f"d{self.domid}: NVMe not probed")
        pages = -(-nbytes // PAGE_SIZE)
        if pages <= 2:
            return self.data[0].bus, self.data[1].bus  # PRP2 unused for one page
        return self.data[0].bus, self.prp_list.bus

    def write_blocks(self, slba: int, data: bytes) -> None:
        """Write whole blocks (up to MDTS) from the DMA pages, by PRP1 + PRP2/PRP list."""
        if not data or len(data) % hw.BLOCK_SIZE:
            raise DriverError(f"{len(data)} bytes is not whole {hw.BLOCK_SIZE}-byte blocks")
        nblocks = len(data) // hw.BLOCK_SIZE
        self._check_len(nblocks)
        write = self.hc.write
        for i, pos in enumerate(range(0, len(data), PAGE_SIZE)):
            write(self.data[i].gpaddr, data[pos : pos + PAGE_SIZE])
        status = self.submit_io(hw.NVM_WRITE, slba, nblocks, *self._prps(len(data)))
        if status != hw.SC_SUCCESS:
            raise DeviceFailed(f"d{self.domid} NVMe write of LBA {slba}", status)

    def read_blocks(self, slba: int, nblocks: int) -> bytes:
        self._check_len(nblocks)
        n = nblocks * hw.BLOCK_SIZE
        pages = self.data[: -(-n // PAGE_SIZE)]
        # Scribble first, so stale buffer contents cannot pass for a correct read.
        scribble = b"\xa5" * PAGE_SIZE
        for page in pages:
            self.hc.write(page.gpaddr, scribble)
        status = self.submit_io(hw.NVM_READ, slba, nblocks, *self._prps(n))
        if status != hw.SC_SUCCESS:
            raise DeviceFailed(f"d{self.domid} NVMe read of LBA {slba}", status)
        read = self.hc.read
        out = b"".join(read(page.gpaddr, PAGE_SIZE) for page in pages)
        return out[:n]

    def remove(self) -> None:
        if self.regs is not None:
            self.regs.write(hw.NVME_REG_CC, 4, 0)
        self.regs = None
        super().remove()
