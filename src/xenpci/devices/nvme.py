"""An NVMe-like block controller: registers, queues, doorbells, PRP data transfer.

Mirrors a subset of NVM Express Base Specification 1.4: the controller
registers (CAP 0x00, VS 0x08, CC 0x14, CSTS 0x1C, AQA 0x24, ASQ 0x28, ACQ
0x30, doorbells from 0x1000 with CAP.DSTRD = 0), 64-byte submission and
16-byte completion entries with the phase tag, the admin commands Create/Delete
I/O SQ/CQ and Identify (controller, namespace), and the NVM commands Flush,
Write and Read with PRP1/PRP2 and PRP lists. One namespace (NSID 1) of
512-byte blocks, backed by a sparse in-memory store.

Deliberate differences: commands run synchronously when the SQ tail doorbell
is written (deterministic), there is no arbitration, no SGLs, no features,
no asynchronous events. Errors use the spec's own status codes: a DMA fault
on a data transfer completes the command with "Data Transfer Error" (0x04);
a fault fetching a command or posting a completion sets CSTS.CFS (Controller
Fatal Status), as the spec prescribes for errors the host cannot be told
about in a completion.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from xenpci.devices.base import DeviceModel, Region
from xenpci.devices.builder import ConfigBuilder, MsixLayout
from xenpci.devices.dma import PAGE_SIZE, DmaPort
from xenpci.devices.errors import DmaFault
from xenpci.devices.irq import RaiseIrq
from xenpci.devices.regfile import Reg, RegisterFile
from xenpci.pci.address import SBDF

NVME_MMIO_SIZE = 0x2000  # registers + doorbells (MSI-X lives in another BAR region)
NVME_REG_CAP = 0x00
NVME_REG_VS = 0x08
NVME_REG_INTMS = 0x0C
NVME_REG_INTMC = 0x10
NVME_REG_CC = 0x14
NVME_REG_CSTS = 0x1C
NVME_REG_AQA = 0x24
NVME_REG_ASQ = 0x28
NVME_REG_ACQ = 0x30
NVME_REG_DBS = 0x1000

MAX_QUEUES = 8  # admin + 7 I/O queue pairs
MQES = 255  # CAP.MQES: 256 entries per queue, zero-based
BLOCK_SIZE = 512
NAMESPACE_BLOCKS = 1 << 17  # 64 MiB
SQE_SIZE = 64
_ZERO_BLOCK = bytes(BLOCK_SIZE)  # what a block never written reads as
CQE_SIZE = 16

CC_EN = 1 << 0
CC_SHN_MASK = 0x3 << 14
CSTS_RDY = 1 << 0
CSTS_CFS = 1 << 1
CSTS_SHST_COMPLETE = 0x2 << 2

# Admin and NVM opcodes (NVMe 1.4 Fig. 139, 346).
ADM_DELETE_SQ = 0x00
ADM_CREATE_SQ = 0x01
ADM_DELETE_CQ = 0x04
ADM_CREATE_CQ = 0x05
ADM_IDENTIFY = 0x06
NVM_FLUSH = 0x00
NVM_WRITE = 0x01
NVM_READ = 0x02

# Status: (status code type << 8) | status code.
SC_SUCCESS = 0x000
SC_INVALID_OPCODE = 0x001
SC_INVALID_FIELD = 0x002
SC_DATA_TRANSFER_ERROR = 0x004
SC_INVALID_NAMESPACE = 0x00B
SC_LBA_OUT_OF_RANGE = 0x080
SC_CQ_INVALID = 0x100
SC_INVALID_QID = 0x101
SC_INVALID_QSIZE = 0x102
SC_INVALID_PRP_OFFSET = 0x013

MDTS = 5  # Maximum Data Transfer Size: 2**5 pages = 128 KiB per command
_CAP = MQES | (1 << 16) | (1 << 24) | (1 << 37)  # MQES, CQR, TO=500ms, CSS=NVM; DSTRD=0, MPS=4K


@dataclass(slots=True)
class _Queue:
    qid: int
    base: int
    size: int  # entries
    head: int = 0
    tail: int = 0
    phase: int = 1  # completion queues only
    cqid: int = 0  # submission queues only
    vector: int = 0  # completion queues only
    irq: bool = True


class _PrpError(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def nvme_registers() -> RegisterFile:
    regs = [
        Reg("CAP", NVME_REG_CAP, 8, reset=_CAP, wmask=0),
        Reg("VS", NVME_REG_VS, reset=0x0001_0400, wmask=0),
        Reg("INTMS", NVME_REG_INTMS),
        Reg("INTMC", NVME_REG_INTMC),
        Reg("CC", NVME_REG_CC, wmask=0x00FF_FFF1),
        Reg("CSTS", NVME_REG_CSTS, wmask=0),
        Reg("AQA", NVME_REG_AQA, wmask=0x0FFF_0FFF),
        Reg("ASQ", NVME_REG_ASQ, 8, wmask=~0xFFF & (1 << 64) - 1),
        Reg("ACQ", NVME_REG_ACQ, 8, wmask=~0xFFF & (1 << 64) - 1),
    ]
    for q in range(MAX_QUEUES):
        regs.append(Reg(f"SQ{q}TDBL", NVME_REG_DBS + 8 * q, wmask=0xFFFF))
        regs.append(Reg(f"CQ{q}HDBL", NVME_REG_DBS + 8 * q + 4, wmask=0xFFFF))
    return RegisterFile("nvme-bar0", NVME_MMIO_SIZE, regs)


class NvmeCore:
    """Controller state of one NVMe-like function (see module doc)."""

    def __init__(self, dma: DmaPort, signal: Callable[[int], None] | None = None) -> None:
        self.dma = dma
        self.signal = signal
        self.regs = nvme_registers()
        self.blocks: dict[int, bytes] = {}  # the namespace's media survives controller reset
        self.sqs: dict[int, _Queue] = {}
        self.cqs: dict[int, _Queue] = {}
        self.last_fault: DmaFault | None = None
        self.notes: list[str] = []
        self.regs.on_write("CC", self._cc_written)
        for q in range(MAX_QUEUES):
            self.regs.on_write(f"SQ{q}TDBL", self._sq_doorbell(q))
            self.regs.on_write(f"CQ{q}HDBL", self._cq_doorbell(q))

    def reset(self) -> None:
        """Controller reset (CC.EN 1->0, FLR): queues are gone, media stays."""
        self.regs.reset()
        self.sqs.clear()
        self.cqs.clear()
        self.last_fault = None

    # -- controller enable ---------------------------------------------------
    def _cc_written(self, old: int, new: int) -> None:
        if new & CC_SHN_MASK:
            self.regs["CSTS"] = self.regs["CSTS"] | CSTS_SHST_COMPLETE
        if new & CC_EN and not old & CC_EN:
            aqa = self.regs["AQA"]
            asqs, acqs = (aqa & 0xFFF) + 1, ((aqa >> 16) & 0xFFF) + 1
            if asqs < 2 or acqs < 2:
                self.regs["CSTS"] = self.regs["CSTS"] | CSTS_CFS
                return
            self.cqs[0] = _Queue(0, self.regs["ACQ"], acqs, vector=0)
            self.sqs[0] = _Queue(0, self.regs["ASQ"], asqs, cqid=0)
            self.regs["CSTS"] = CSTS_RDY
        elif old & CC_EN and not new & CC_EN:
            cc = self.regs["CC"]
            aqa, asq, acq = self.regs["AQA"], self.regs["ASQ"], self.regs["ACQ"]
            self.reset()
            self.regs["CC"], self.regs["AQA"] = cc, aqa
            self.regs["ASQ"], self.regs["ACQ"] = asq, acq

    @property
    def ready(self) -> bool:
        csts = self.regs["CSTS"]
        return bool(csts & CSTS_RDY) and not csts & CSTS_CFS

    def _fatal(self, fault: DmaFault) -> None:
        self.last_fault = fault
        self.regs["CSTS"] = self.regs["CSTS"] | CSTS_CFS

    # -- doorbells -------------------------------------------------------------
    def _sq_doorbell(self, qid: int) -> Callable[[int, int], None]:
        def hook(_old: int, new: int) -> None:
            sq = self.sqs.get(qid)
            if sq is None or not self.ready:
                return  # spec: undefined; a write to a nonexistent queue is ignored
            if new >= sq.size:
                self._error_note(f"SQ{qid} tail {new} beyond {sq.size} entries")
                return
            sq.tail = new
            self._process(sq)

        return hook

    def _cq_doorbell(self, qid: int) -> Callable[[int, int], None]:
        def hook(_old: int, new: int) -> None:
            cq = self.cqs.get(qid)
            if cq is not None and new < cq.size:
                cq.head = new

        return hook

    def _error_note(self, text: str) -> None:
        self.notes.append(text)

    # -- command processing ------------------------------------------------------
    def _process(self, sq: _Queue) -> None:
        for _ in range(sq.size):  # bounded: one pass per doorbell
            if sq.head == sq.tail or not self.ready:
                return
            cq = self.cqs[sq.cqid]
            if (cq.tail + 1) % cq.size == cq.head:
                return  # completion queue full: wait for the host to free entries
            try:
                sqe = self.dma.read(sq.base + SQE_SIZE * sq.head, SQE_SIZE)
            except DmaFault as fault:
                self._fatal(fault)
                return
            sq.head = (sq.head + 1) % sq.size
            dw = struct.unpack("<16I", sqe)
            opcode, cid = dw[0] & 0xFF, dw[0] >> 16
            if sq.qid == 0:
                status, result = self._admin(opcode, dw)
            else:
                status, result = self._io(opcode, dw)
            if not self._complete(cq, sq, cid, status, result):
                return

    def _complete(self, cq: _Queue, sq: _Queue, cid: int, status: int, result: int) -> bool:
        sf = (status & 0xFF) << 1 | ((status >> 8) & 0x7) << 9
        dw3 = cid | (cq.phase << 16) | (sf << 16)
        cqe = struct.pack("<IIHHI", result, 0, sq.head, sq.qid, dw3)
        try:
            self.dma.write(cq.base + CQE_SIZE * cq.tail, cqe)
        except DmaFault as fault:
            self._fatal(fault)
            return False
        cq.tail = (cq.tail + 1) % cq.size
        if cq.tail == 0:
            cq.phase ^= 1
        if cq.irq and self.signal is not None:
            self.signal(cq.vector)
        return True

    def _admin(self, opcode: int, dw: tuple[int, ...]) -> tuple[int, int]:
        prp1 = dw[6] | dw[7] << 32
        qid, qsize = dw[10] & 0xFFFF, (dw[10] >> 16) + 1
        if opcode == ADM_CREATE_CQ:
            if not 1 <= qid < MAX_QUEUES or qid in self.cqs:
                return SC_INVALID_QID, 0
            if not 2 <= qsize <= MQES + 1:
                return SC_INVALID_QSIZE, 0
            if not dw[11] & 1 or prp1 % PAGE_SIZE:
                return SC_INVALID_FIELD, 0  # only physically contiguous, page-aligned queues
            self.cqs[qid] = _Queue(qid, prp1, qsize, vector=dw[11] >> 16, irq=bool(dw[11] & 2))
            return SC_SUCCESS, 0
        if opcode == ADM_CREATE_SQ:
            cqid = dw[11] >> 16
            if not 1 <= qid < MAX_QUEUES or qid in self.sqs:
                return SC_INVALID_QID, 0
            if cqid == 0 or cqid not in self.cqs:
                return SC_CQ_INVALID, 0
            if not 2 <= qsize <= MQES + 1:
                return SC_INVALID_QSIZE, 0
            if not dw[11] & 1 or prp1 % PAGE_SIZE:
                return SC_INVALID_FIELD, 0
            self.sqs[qid] = _Queue(qid, prp1, qsize, cqid=cqid)
            return SC_SUCCESS, 0
        if opcode == ADM_DELETE_SQ:
            if qid == 0 or qid not in self.sqs:
                return SC_INVALID_QID, 0
            del self.sqs[qid]
            return SC_SUCCESS, 0
        if opcode == ADM_DELETE_CQ:
            if qid == 0 or qid not in self.cqs:
                return SC_INVALID_QID, 0
            if any(sq.cqid == qid for sq in self.sqs.values()):
                return 0x10C, 0  # Invalid Queue Deletion
            del self.cqs[qid]
            return SC_SUCCESS, 0
        if opcode == ADM_IDENTIFY:
            cns = dw[10] & 0xFF
            if cns == 1:
                page = self._identify_controller()
            elif cns == 0:
                if dw[1] != 1:
                    return SC_INVALID_NAMESPACE, 0
                page = self._identify_namespace()
            else:
                return SC_INVALID_FIELD, 0
            return self._transfer(dw, page_out=page), 0
        return SC_INVALID_OPCODE, 0

    def _identify_controller(self) -> bytes:
        page = bytearray(PAGE_SIZE)
        struct.pack_into("<HH", page, 0, 0x1B36, 0x1B36)  # VID, SSVID
        page[4:24] = b"XENPCI0001".ljust(20)
        page[24:64] = b"xenpci NVMe-like model".ljust(40)
        page[64:72] = b"1.0".ljust(8)
        page[77] = MDTS
        page[512] = 0x66  # SQES: 64-byte entries
        page[513] = 0x44  # CQES: 16-byte entries
        struct.pack_into("<I", page, 516, 1)  # NN: one namespace
        return bytes(page)

    def _identify_namespace(self) -> bytes:
        page = bytearray(PAGE_SIZE)
        struct.pack_into("<QQQ", page, 0, NAMESPACE_BLOCKS, NAMESPACE_BLOCKS, NAMESPACE_BLOCKS)
        struct.pack_into("<I", page, 128, 9 << 16)  # LBAF0: LBADS = 9 (512 bytes)
        return bytes(page)

    def _io(self, opcode: int, dw: tuple[int, ...]) -> tuple[int, int]:
        if dw[1] != 1:
            return SC_INVALID_NAMESPACE, 0
        if opcode == NVM_FLUSH:
            return SC_SUCCESS, 0
        if opcode not in (NVM_READ, NVM_WRITE):
            return SC_INVALID_OPCODE, 0
        slba = dw[10] | dw[11] << 32
        nlb = (dw[12] & 0xFFFF) + 1
        if slba + nlb > NAMESPACE_BLOCKS:
            return SC_LBA_OUT_OF_RANGE, 0
        if nlb * BLOCK_SIZE > PAGE_SIZE << MDTS:
            return SC_INVALID_FIELD, 0  # larger than MDTS (Identify byte 77)
        if opcode == NVM_READ:
            get = self.blocks.get
            data = b"".join([get(b, _ZERO_BLOCK) for b in range(slba, slba + nlb)])
            return self._transfer(dw, page_out=data), 0
        buf = bytearray()
        status = self._transfer(dw, length=nlb * BLOCK_SIZE, into=buf)
        if status == SC_SUCCESS:
            view = memoryview(buf)
            for i in range(nlb):
                self.blocks[slba + i] = bytes(view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
        return status, 0

    # -- PRP data transfer -------------------------------------------------------
    def _prp_segments(self, prp1: int, prp2: int, length: int) -> list[tuple[int, int]]:
        """Split a transfer into (bus address, length) pieces following PRP rules."""
        if prp1 % 4:
            raise _PrpError(SC_INVALID_PRP_OFFSET)
        first = min(length, PAGE_SIZE - prp1 % PAGE_SIZE)
        segs = [(prp1, first)]
        remaining = length - first
        if remaining == 0:
            return segs
        if remaining <= PAGE_SIZE:
            if prp2 % PAGE_SIZE:
                raise _PrpError(SC_INVALID_PRP_OFFSET)
            return [*segs, (prp2, remaining)]
        # PRP2 points to a PRP list; its last entry chains to the next list page.
        # The entries of one list page are fetched with one DMA read (a controller
        # fetches the list in bursts; it only reads entries the transfer needs).
        entry = prp2
        if entry % 8:
            raise _PrpError(SC_INVALID_PRP_OFFSET)
        while remaining > 0:
            pages_left = -(-remaining // PAGE_SIZE)
            in_page = (PAGE_SIZE - entry % PAGE_SIZE) // 8
            chained = pages_left > in_page  # the page's last entry is a chain pointer
            count = in_page if chained else pages_left
            addrs = struct.unpack(f"<{count}Q", self.dma.read(entry, 8 * count))
            for addr in addrs[:-1] if chained else addrs:
                if addr % PAGE_SIZE:
                    raise _PrpError(SC_INVALID_PRP_OFFSET)
                chunk = min(remaining, PAGE_SIZE)
                segs.append((addr, chunk))
                remaining -= chunk
            if chained:
                entry = addrs[-1]
                if entry % 8:
                    raise _PrpError(SC_INVALID_PRP_OFFSET)
        return segs

    def _transfer(
        self,
        dw: tuple[int, ...],
        *,
        page_out: bytes | None = None,
        length: int = 0,
        into: bytearray | None = None,
    ) -> int:
        prp1, prp2 = dw[6] | dw[7] << 32, dw[8] | dw[9] << 32
        total = len(page_out) if page_out is not None else length
        try:
            segs = self._prp_segments(prp1, prp2, total)
            pos = 0
            for addr, n in segs:
                if page_out is not None:
                    self.dma.write(addr, page_out[pos : pos + n])
                elif into is not None:
                    into += self.dma.read(addr, n)
                pos += n
        except _PrpError as err:
            return err.status
        except DmaFault as fault:
            self.last_fault = fault
            return SC_DATA_TRANSFER_ERROR
        return SC_SUCCESS


# --- the PCI function ------------------------------------------------------------
NVME_VENDOR = 0x1B36
NVME_DEVICE = 0x0010
NVME_BAR_SIZE = 0x4000
NVME_MSIX_VECTORS = MAX_QUEUES


class NvmeFunction(DeviceModel):
    """The NVMe-like controller as a PCIe endpoint.

    IDs 1b36:0010 are the ones QEMU assigns to its own NVMe controller
    (``docs/specs/pci-ids.rst``); this model implements the NVMe register
    interface (a subset, see module doc), class 01:08:02 (NVM Express).
    BAR0 is a 64-bit 16 KiB BAR (NVMe MLBAR/MUBAR): registers and doorbells
    in 0..0x2000, the MSI-X table at 0x2000 and the PBA at 0x3000, each on
    its own page. One MSI-X vector per queue pair.
    """

    model_name = "nvme"

    def __init__(
        self,
        sbdf: SBDF,
        *,
        dma: DmaPort | None = None,
        raise_irq: RaiseIrq | None = None,
    ) -> None:
        b = ConfigBuilder(
            NVME_VENDOR,
            NVME_DEVICE,
            0x010802,
            revision=2,
            subsystem=(NVME_VENDOR, NVME_DEVICE),
            express=True,
            interrupt_pin=1,
        )
        b.bar(0, "mem64", NVME_BAR_SIZE)
        b.add_pm()
        b.add_express(flr=True)
        layout = MsixLayout(NVME_MSIX_VECTORS, 0, 0x2000, 0, 0x3000)
        b.add_msix(layout)
        super().__init__(sbdf, b.build(), dma=dma, raise_irq=raise_irq, msix=layout)
        self.core = NvmeCore(self.dma, self.signal)
        regs_ = self.core.regs
        self.add_region(0, Region("nvme-regs", 0, NVME_MMIO_SIZE, regs_.read, regs_.write))

    def reset_device(self) -> None:
        self.core.reset()
