"""A GPU-like display controller: a sparse 256 MiB prefetchable VRAM BAR and a ROM.

No single real device is mirrored; the shape is that of a discrete GPU as
passthrough sees it (PCIe endpoint, small register BAR, large 64-bit
prefetchable aperture, expansion ROM with a PCI Firmware 3.0 image header,
MSI). IDs: vendor 1b36 (Red Hat, QEMU's range for its own devices), device
00e1 picked by xenpci, not a product; class 03:02:00 (3D controller), so
nothing expects legacy VGA ranges.

BAR0 (mem32, 64 KiB): ``GPU_ID`` (RO), ``SCRATCH``, ``IRQ`` (writing N
signals vector N), and a copy engine: ``SYS_ADDR`` (64-bit bus address),
``VRAM_OFFSET``, ``LENGTH``, ``COPY`` (1 = system memory to VRAM, 2 = VRAM to
system memory) and ``COPY_STATUS`` (1 = done, 2 = DMA fault, 3 = bad range).
BAR2 (mem64, prefetchable, 256 MiB) is VRAM, allocated per 4 KiB page only
when written. ROM: 64 KiB BAR holding a 1 KiB image.
"""

from __future__ import annotations

import struct

from xenpci.devices.base import DeviceModel, Region
from xenpci.devices.builder import ConfigBuilder
from xenpci.devices.dma import PAGE_SIZE, DmaPort
from xenpci.devices.errors import DmaFault, MmioError
from xenpci.devices.irq import RaiseIrq
from xenpci.devices.regfile import Reg, RegisterFile
from xenpci.pci.address import SBDF
from xenpci.pci.bar import ROM_INDEX

GPU_VENDOR = 0x1B36
GPU_DEVICE = 0x00E1
GPU_CLASS = 0x030200
VRAM_SIZE = 256 << 20
ROM_SIZE = 64 << 10
REGS_SIZE = 64 << 10
MAX_COPY = 1 << 20

COPY_TO_VRAM = 1
COPY_FROM_VRAM = 2
COPY_DONE = 1
COPY_FAULT = 2
COPY_BAD_RANGE = 3


class SparseMemory:
    """Byte-addressed memory that allocates a page on first write; reads of holes are 0."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pages: dict[int, bytearray] = {}

    def read_bytes(self, offset: int, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            page, off = divmod(offset + len(out), PAGE_SIZE)
            chunk = min(PAGE_SIZE - off, n - len(out))
            buf = self.pages.get(page)
            out += buf[off : off + chunk] if buf is not None else bytes(chunk)
        return bytes(out)

    def write_bytes(self, offset: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            page, off = divmod(offset + pos, PAGE_SIZE)
            chunk = min(PAGE_SIZE - off, len(data) - pos)
            buf = self.pages.setdefault(page, bytearray(PAGE_SIZE))
            buf[off : off + chunk] = data[pos : pos + chunk]
            pos += chunk

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.read_bytes(offset, size), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.write_bytes(offset, value.to_bytes(size, "little"))


def rom_image(vendor: int, device: int, class_code: int, length: int = 1024) -> bytes:
    """An expansion ROM image: 55AA header, PCIR structure, zero checksum.

    PCI Firmware Spec 3.0 §5.1: offset 0x18 points to the PCI Data Structure
    ("PCIR", vendor, device, length, revision 3, class code, image length in
    512-byte units, code type, last-image indicator); the image bytes sum to 0.
    """
    img = bytearray(length)
    img[0:2] = b"\x55\xaa"
    img[2] = length // 512
    pcir = 0x1C
    struct.pack_into("<H", img, 0x18, pcir)
    img[pcir : pcir + 4] = b"PCIR"
    struct.pack_into("<HHHHB", img, pcir + 4, vendor, device, 0, 0x18, 3)
    img[pcir + 0x0D : pcir + 0x10] = class_code.to_bytes(3, "little")
    struct.pack_into("<HHBB", img, pcir + 0x10, length // 512, 1, 0x00, 0x80)
    img[-1] = (-sum(img)) & 0xFF
    return bytes(img)


class GpuFunction(DeviceModel):
    """See module doc."""

    model_name = "gpu"

    def __init__(
        self,
        sbdf: SBDF,
        *,
        dma: DmaPort | None = None,
        raise_irq: RaiseIrq | None = None,
    ) -> None:
        b = ConfigBuilder(
            GPU_VENDOR,
            GPU_DEVICE,
            GPU_CLASS,
            revision=1,
            subsystem=(GPU_VENDOR, GPU_DEVICE),
            express=True,
            interrupt_pin=1,
        )
        b.bar(0, "mem32", REGS_SIZE)
        b.bar(2, "mem64", VRAM_SIZE, prefetchable=True)
        b.rom(ROM_SIZE)
        b.add_pm()
        b.add_msi(4, addr64=True, maskable=True)
        b.add_express(flr=True)
        super().__init__(sbdf, b.build(), dma=dma, raise_irq=raise_irq)
        self.vram = SparseMemory(VRAM_SIZE)
        self.last_fault: DmaFault | None = None
        self.rom = rom_image(GPU_VENDOR, GPU_DEVICE, GPU_CLASS)
        self.regs = RegisterFile(
            "gpu-bar0",
            REGS_SIZE,
            [
                Reg("GPU_ID", 0x00, reset=GPU_VENDOR << 16 | GPU_DEVICE, wmask=0),
                Reg("SCRATCH", 0x04),
                Reg("IRQ", 0x08, wmask=0x3),
                Reg("SYS_ADDR", 0x10, 8),
                Reg("VRAM_OFFSET", 0x18, wmask=VRAM_SIZE - 1),
                Reg("LENGTH", 0x1C),
                Reg("COPY", 0x20, wmask=0x3),
                Reg("COPY_STATUS", 0x24, wmask=0),
            ],
        )
        self.regs.on_write("IRQ", lambda _old, new: self.signal(new))
        self.regs.on_write("COPY", self._copy)
        self.add_region(0, Region("gpu-regs", 0, REGS_SIZE, self.regs.read, self.regs.write))
        self.add_region(2, Region("vram", 0, VRAM_SIZE, self.vram.read, self.vram.write))
        self.add_region(ROM_INDEX, Region("rom", 0, ROM_SIZE, self._rom_read, self._rom_write))

    def _rom_read(self, offset: int, size: int) -> int:
        # Beyond the image the ROM BAR reads as erased flash (0xff).
        data = self.rom[offset : offset + size].ljust(size, b"\xff")
        return int.from_bytes(data, "little")

    def _rom_write(self, offset: int, size: int, value: int) -> None:
        raise MmioError(f"{self.sbdf} ROM", offset, size, "the expansion ROM is read-only")

    def _copy(self, _old: int, new: int) -> None:
        vram_off, length = self.regs["VRAM_OFFSET"], self.regs["LENGTH"]
        self.regs["COPY"] = 0  # the command register self-clears
        if new not in (COPY_TO_VRAM, COPY_FROM_VRAM):
            return
        if length > MAX_COPY or vram_off + length > VRAM_SIZE:
            self.regs["COPY_STATUS"] = COPY_BAD_RANGE
            return
        try:
            if new == COPY_TO_VRAM:
                self.vram.write_bytes(vram_off, self.dma.read(self.regs["SYS_ADDR"], length))
            else:
                self.dma.write(self.regs["SYS_ADDR"], self.vram.read_bytes(vram_off, length))
        except DmaFault as fault:
            self.last_fault = fault
            self.regs["COPY_STATUS"] = COPY_FAULT
            self.signal(1)
            return
        self.regs["COPY_STATUS"] = COPY_DONE
        self.signal(0)

    def reset_device(self) -> None:
        self.regs.reset()
        self.vram.pages.clear()  # VRAM content is lost on reset
        self.last_fault = None
