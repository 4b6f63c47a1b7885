"""The NVMe-like controller: queues, doorbells, PRPs; blocks written then read back."""

from __future__ import annotations

import struct

import pytest

from tests.devices.conftest import enable
from xenpci.devices.dma import DmaWindow, MemoryDmaPort
from xenpci.devices.irq import IrqLog
from xenpci.devices.nvme import (
    ADM_CREATE_CQ,
    ADM_CREATE_SQ,
    ADM_IDENTIFY,
    CSTS_CFS,
    CSTS_RDY,
    MDTS,
    NAMESPACE_BLOCKS,
    NVM_READ,
    NVM_WRITE,
    NVME_REG_ACQ,
    NVME_REG_AQA,
    NVME_REG_ASQ,
    NVME_REG_CAP,
    NVME_REG_CC,
    NVME_REG_CSTS,
    NVME_REG_DBS,
    SC_DATA_TRANSFER_ERROR,
    SC_INVALID_FIELD,
    SC_INVALID_NAMESPACE,
    SC_INVALID_OPCODE,
    SC_INVALID_PRP_OFFSET,
    SC_INVALID_QID,
    SC_LBA_OUT_OF_RANGE,
    SC_SUCCESS,
    NvmeFunction,
)
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.capabilities import find_capability

ASQ, ACQ, IOSQ, IOCQ, DATA, PRPLIST = 0x10000, 0x11000, 0x12000, 0x13000, 0x100000, 0x90000
QSIZE = 16


class Host:
    """A minimal NVMe host driver over BAR0, with its own phase tracking."""

    def __init__(self, fn: NvmeFunction, mem: MemoryDmaPort) -> None:
        self.fn, self.mem = fn, mem
        enable(fn)
        self.tail = {0: 0, 1: 0}
        self.head = {0: 0, 1: 0}
        self.phase = {0: 1, 1: 1}
        self.cid = 0
        self.w(NVME_REG_AQA, 4, (QSIZE - 1) << 16 | (QSIZE - 1))
        self.w(NVME_REG_ASQ, 8, ASQ)
        self.w(NVME_REG_ACQ, 8, ACQ)
        self.w(NVME_REG_CC, 4, 1 | (6 << 16) | (4 << 20))
        assert self.r(NVME_REG_CSTS, 4) & CSTS_RDY

    def w(self, off: int, size: int, value: int) -> None:
        self.fn.mmio_write(0, off, size, value)

    def r(self, off: int, size: int) -> int:
        return self.fn.mmio_read(0, off, size)

    def submit(
        self,
        qid: int,
        opcode: int,
        *,
        nsid: int = 0,
        prp1: int = 0,
        prp2: int = 0,
        cdw: tuple[int, ...] = (),
    ) -> tuple[int, int]:
        """Submit one command and return (status, result) from its completion."""
        self.cid += 1
        dw = [
            opcode | self.cid << 16,
            nsid,
            0,
            0,
            0,
            0,
            prp1 & 0xFFFFFFFF,
            prp1 >> 32,
            prp2 & 0xFFFFFFFF,
            prp2 >> 32,
            *cdw,
        ]
        dw += [0] * (16 - len(dw))
        sq, cq = (ASQ, ACQ) if qid == 0 else (IOSQ, IOCQ)
        self.mem.write(sq + 64 * self.tail[qid], struct.pack("<16I", *dw))
        self.tail[qid] = (self.tail[qid] + 1) % QSIZE
        self.w(NVME_REG_DBS + 8 * qid, 4, self.tail[qid])
        entry = self.mem.read(cq + 16 * self.head[qid], 16)
        result, _rsvd, _sqhd, sqid, dw3 = struct.unpack("<IIHHI", entry)
        assert (dw3 >> 16) & 1 == self.phase[qid], "no new completion posted"
        assert dw3 & 0xFFFF == self.cid and sqid == qid
        self.head[qid] = (self.head[qid] + 1) % QSIZE
        if self.head[qid] == 0:
            self.phase[qid] ^= 1
        self.w(NVME_REG_DBS + 8 * qid + 4, 4, self.head[qid])
        sf = dw3 >> 17
        return ((sf >> 8) & 0x7) << 8 | (sf & 0xFF), result

    def create_io_queues(self) -> None:
        assert (
            self.submit(0, ADM_CREATE_CQ, prp1=IOCQ, cdw=((QSIZE - 1) << 16 | 1, 1 << 16 | 3))[0]
            == SC_SUCCESS
        )
        assert (
            self.submit(0, ADM_CREATE_SQ, prp1=IOSQ, cdw=((QSIZE - 1) << 16 | 1, 1 << 16 | 1))[0]
            == SC_SUCCESS
        )

    def io(self, opcode: int, lba: int, nblocks: int, prp1: int, prp2: int = 0) -> int:
        status, _ = self.submit(
            1, opcode, nsid=1, prp1=prp1, prp2=prp2, cdw=(lba & 0xFFFFFFFF, lba >> 32, nblocks - 1)
        )
        return status


@pytest.fixture
def host() -> Host:
    mem = MemoryDmaPort()
    fn = NvmeFunction(SBDF(0, 5, 0, 0), dma=mem, raise_irq=IrqLog())
    h = Host(fn, mem)
    h.create_io_queues()
    return h


def test_cap_and_version_registers() -> None:
    fn = NvmeFunction(SBDF(0, 5, 0, 0))
    enable(fn)
    cap = fn.mmio_read(0, NVME_REG_CAP, 8)
    assert cap & 0xFFFF == 255 and (cap >> 37) & 1 == 1  # MQES, CSS.NVM
    assert fn.mmio_read(0, 0x08, 4) == 0x00010400


def test_identify_controller(host: Host) -> None:
    status, _ = host.submit(0, ADM_IDENTIFY, prp1=DATA, cdw=(1,))
    assert status == SC_SUCCESS
    page = host.mem.read(DATA, 4096)
    assert struct.unpack_from("<H", page, 0)[0] == 0x1B36
    assert page[77] == 5  # MDTS: 128 KiB
    assert page[512] == 0x66 and page[513] == 0x44
    assert struct.unpack_from("<I", page, 516)[0] == 1


def test_write_then_read_back_one_page(host: Host) -> None:
    data = bytes((i * 31 + 7) & 0xFF for i in range(4096))
    host.mem.write(DATA, data)
    assert host.io(NVM_WRITE, 100, 8, DATA) == SC_SUCCESS
    assert host.io(NVM_READ, 100, 8, DATA + 0x10000) == SC_SUCCESS
    assert host.mem.read(DATA + 0x10000, 4096) == data


def test_unaligned_prp1_and_second_page(host: Host) -> None:
    data = bytes(range(256)) * 8  # 2048 bytes starting 1 KiB before a page end
    host.mem.write(DATA + 0xC00, data[:1024])
    host.mem.write(DATA + 0x5000, data[1024:])
    assert host.io(NVM_WRITE, 7, 4, DATA + 0xC00, DATA + 0x5000) == SC_SUCCESS
    assert host.io(NVM_READ, 7, 4, DATA + 0x20000) == SC_SUCCESS
    assert host.mem.read(DATA + 0x20000, 2048) == data


def test_prp_list_for_many_pages(host: Host) -> None:
    pages = [DATA + 0x3000 * i for i in range(5)]  # scattered pages
    data = bytes((i * 13) & 0xFF for i in range(5 * 4096))
    for i, p in enumerate(pages):
        host.mem.write(p, data[4096 * i : 4096 * (i + 1)])
    host.mem.write(PRPLIST, struct.pack("<4Q", *pages[1:]))
    assert host.io(NVM_WRITE, 1000, 40, pages[0], PRPLIST) == SC_SUCCESS
    out = [0x400000 + 0x1000 * i for i in range(5)]
    host.mem.write(PRPLIST, struct.pack("<4Q", *out[1:]))
    assert host.io(NVM_READ, 1000, 40, out[0], PRPLIST) == SC_SUCCESS
    assert b"".join(host.mem.read(p, 4096) for p in out) == data


def test_prp_list_chains_to_a_second_list_page(host: Host) -> None:
    # NVMe 1.4 4.3: the last entry of a PRP list page points to the next list page.
    # A list starting two entries before its page's end: its first entry names a
    # page, its second (the page's last) chains to the list page holding the rest.
    start = PRPLIST + 0x1000 - 16
    nxt = PRPLIST + 0x2000
    pages = [DATA + 0x1000 * i for i in range(4)]
    data = bytes((i * 7 + 3) & 0xFF for i in range(4 * 4096))
    for i, p in enumerate(pages):
        host.mem.write(p, data[4096 * i : 4096 * (i + 1)])
    host.mem.write(start, struct.pack("<2Q", pages[1], nxt))
    host.mem.write(nxt, struct.pack("<2Q", pages[2], pages[3]))
    assert host.io(NVM_WRITE, 2000, 32, pages[0], start) == SC_SUCCESS
    host.mem.write(DATA + 0x40000, bytes(4 * 4096))
    assert host.io(NVM_READ, 2000, 8, DATA + 0x40000) == SC_SUCCESS
    assert host.mem.read(DATA + 0x40000, 4096) == data[:4096]
    # Read the whole back into a contiguous buffer named by a plain list.
    out = [DATA + 0x50000 + 0x1000 * i for i in range(4)]
    host.mem.write(PRPLIST, struct.pack("<3Q", *out[1:]))
    assert host.io(NVM_READ, 2000, 32, out[0], PRPLIST) == SC_SUCCESS
    assert host.mem.read(out[0], 4 * 4096) == data


def test_prp_list_entry_with_an_offset_is_refused(host: Host) -> None:
    # "PRP entries contained within a PRP List shall have a memory page offset of 0."
    host.mem.write(PRPLIST, struct.pack("<2Q", DATA + 0x1000, DATA + 0x2200))
    assert host.io(NVM_WRITE, 0, 24, DATA, PRPLIST) == SC_INVALID_PRP_OFFSET
    assert host.io(NVM_WRITE, 0, 24, DATA, PRPLIST + 4) == SC_INVALID_PRP_OFFSET


def test_transfer_limited_to_mdts(host: Host) -> None:
    pages = 1 << MDTS  # Identify byte 77: 2**MDTS pages per command
    host.mem.write(
        PRPLIST, struct.pack(f"<{pages}Q", *(DATA + 0x1000 * i for i in range(1, pages + 1)))
    )
    blocks = pages * 4096 // 512
    assert host.io(NVM_WRITE, 0, blocks, DATA, PRPLIST) == SC_SUCCESS
    assert host.io(NVM_WRITE, 0, blocks + 1, DATA, PRPLIST) == SC_INVALID_FIELD


def test_unwritten_blocks_read_zero_and_lba_range_is_checked(host: Host) -> None:
    host.mem.write(DATA, b"\xaa" * 512)
    assert host.io(NVM_READ, 5, 1, DATA) == SC_SUCCESS
    assert host.mem.read(DATA, 512) == bytes(512)
    assert host.io(NVM_READ, NAMESPACE_BLOCKS - 1, 2, DATA) == SC_LBA_OUT_OF_RANGE


def test_dma_fault_completes_with_data_transfer_error() -> None:
    mem = MemoryDmaPort((DmaWindow(ASQ, 0x4000), DmaWindow(DATA, 0x1000, writable=False)))
    fn = NvmeFunction(SBDF(0, 5, 0, 0), dma=mem)
    h = Host(fn, mem)
    h.create_io_queues()
    assert h.io(NVM_WRITE, 0, 1, 0xBAD000) == SC_DATA_TRANSFER_ERROR
    assert h.io(NVM_READ, 0, 1, DATA) == SC_DATA_TRANSFER_ERROR  # read-only mapping
    assert fn.core.last_fault is not None and fn.core.last_fault.write
    assert h.io(NVM_WRITE, 0, 1, DATA) == SC_SUCCESS  # the controller still works


def test_fault_posting_completion_sets_controller_fatal() -> None:
    mem = MemoryDmaPort((DmaWindow(ASQ, 0x1000),))  # admin CQ not mapped
    fn = NvmeFunction(SBDF(0, 5, 0, 0), dma=mem)
    enable(fn)
    fn.mmio_write(0, NVME_REG_AQA, 4, (QSIZE - 1) << 16 | (QSIZE - 1))
    fn.mmio_write(0, NVME_REG_ASQ, 8, ASQ)
    fn.mmio_write(0, NVME_REG_ACQ, 8, ACQ)
    fn.mmio_write(0, NVME_REG_CC, 4, 1)
    mem.write(ASQ, struct.pack("<16I", ADM_IDENTIFY | 1 << 16, *[0] * 15))
    fn.mmio_write(0, NVME_REG_DBS, 4, 1)
    assert fn.mmio_read(0, NVME_REG_CSTS, 4) & CSTS_CFS
    fn.mmio_write(0, NVME_REG_CC, 4, 0)  # host resets the controller
    assert fn.mmio_read(0, NVME_REG_CSTS, 4) == 0


def test_bad_commands_get_spec_status_codes(host: Host) -> None:
    assert host.submit(0, 0x7F)[0] == SC_INVALID_OPCODE
    assert host.submit(1, 0x7F, nsid=1)[0] == SC_INVALID_OPCODE
    assert host.io(NVM_READ, 0, 0x10000, DATA) == SC_INVALID_FIELD  # beyond MDTS
    assert host.submit(1, NVM_READ, nsid=2, prp1=DATA)[0] == SC_INVALID_NAMESPACE
    assert host.submit(0, ADM_CREATE_CQ, prp1=IOCQ, cdw=(15 << 16 | 1, 1))[0] == SC_INVALID_QID


def test_data_survives_controller_reset_but_queues_do_not(host: Host) -> None:
    host.mem.write(DATA, b"\x5a" * 512)
    assert host.io(NVM_WRITE, 3, 1, DATA) == SC_SUCCESS
    host.fn.reset("flr")
    assert host.fn.core.sqs == {}
    h2 = Host(host.fn, host.mem)
    h2.create_io_queues()
    assert h2.io(NVM_READ, 3, 1, DATA + 0x1000) == SC_SUCCESS
    assert host.mem.read(DATA + 0x1000, 512) == b"\x5a" * 512


def test_completion_raises_msix_vector_of_the_queue() -> None:
    mem, log = MemoryDmaPort(), IrqLog()
    fn = NvmeFunction(SBDF(0, 5, 0, 0), dma=mem, raise_irq=log)
    h = Host(fn, mem)
    cap = find_capability(fn.config, regs.PCI_CAP_ID_MSIX)
    assert cap is not None
    fn.config_write(cap + regs.PCI_MSIX_FLAGS, 2, regs.PCI_MSIX_FLAGS_ENABLE)
    fn.mmio_write(0, 0x2000 + 16 + 8, 4, 0x77)  # vector 1 data
    fn.mmio_write(0, 0x2000 + 16 + 12, 4, 0)  # unmask vector 1
    h.create_io_queues()  # the I/O CQ uses vector 1 (cdw11 IV=1)
    log.clear()
    host_data = b"\x01" * 512
    mem.write(DATA, host_data)
    assert h.io(NVM_WRITE, 0, 1, DATA) == SC_SUCCESS
    assert [(e.kind, e.vector, e.data) for e in log.events] == [("msix", 1, 0x77)]


def test_hostile_doorbells_are_ignored(host: Host) -> None:
    host.w(NVME_REG_DBS + 8 * 1, 4, QSIZE + 5)  # tail beyond the queue
    host.w(NVME_REG_DBS + 8 * 6, 4, 3)  # queue 6 was never created
    host.w(NVME_REG_DBS + 8 * 1 + 4, 4, 0xFFFF)  # CQ head beyond the queue
    assert host.fn.core.notes == ["SQ1 tail 21 beyond 16 entries"]
    assert host.r(NVME_REG_CSTS, 4) == CSTS_RDY
    data = b"\x33" * 512
    host.mem.write(DATA, data)
    assert host.io(NVM_WRITE, 9, 1, DATA) == SC_SUCCESS  # still serving honest commands


def test_full_completion_queue_holds_commands_back(host: Host) -> None:
    # Submit QSIZE-1 commands without consuming completions: the CQ (16 entries)
    # holds 15, so the last command waits in the SQ instead of overwriting.
    for i in range(QSIZE - 1):
        dw = [0x00 | (100 + i) << 16, 1] + [0] * 14  # Flush
        host.mem.write(IOSQ + 64 * i, struct.pack("<16I", *dw))
    host.w(NVME_REG_DBS + 8, 4, QSIZE - 1)
    sq = host.fn.core.sqs[1]
    assert sq.head == QSIZE - 1
    dw = [0x00 | 200 << 16, 1] + [0] * 14
    host.mem.write(IOSQ + 64 * (QSIZE - 1), struct.pack("<16I", *dw))
    host.w(NVME_REG_DBS + 8, 4, 0)
    assert sq.head == QSIZE - 1  # CQ full: not fetched
    host.w(NVME_REG_DBS + 8 + 4, 4, 5)  # host consumed 5 completions
    host.w(NVME_REG_DBS + 8, 4, 0)  # ring again
    assert sq.head == 0
