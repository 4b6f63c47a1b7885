"""The emulated disk controller: the project's NVMe model, its media on dom0's disk.

QEMU's ``hw/nvme`` emulates an NVMe controller whose namespaces are backed by
dom0 block devices. Here the controller is the catalog's own model
(:class:`~xenpci.devices.nvme.NvmeFunction`: same registers, queues,
doorbells, PRPs, MSI-X, IDs 1b36:0010 -- the IDs QEMU's emulated NVMe has),
so the HVM guest runs the same NVMe driver a passthrough guest runs. What
differs is behind it: its DMA reaches guest RAM through the device model's
map cache, and a Read or Write command becomes IO on dom0's disk
(:class:`~xenpci.blkback.dom0_block.Dom0Disk`), one dom0 NVMe command per
two pages.

Deliberate differences: the namespace is the whole of dom0's disk; Flush,
errors and admin commands are the model's own.
"""

from __future__ import annotations

from collections.abc import Callable

from xenpci.blkback.blkback import BlockDevice
from xenpci.devices import nvme as hw
from xenpci.devices.base import Region
from xenpci.devices.dma import PAGE_SIZE, DmaPort
from xenpci.devices.irq import RaiseIrq
from xenpci.errors import XenpciError
from xenpci.pci.address import SBDF


class EmuNvmeCore(hw.NvmeCore):
    """The NVMe controller core with Read/Write served by dom0's disk."""

    def __init__(self, dma: DmaPort, signal: Callable[[int], None], disk: BlockDevice) -> None:
        super().__init__(dma, signal)
        self.disk = disk
        self.disk_commands = 0

    def _io(self, opcode: int, dw: tuple[int, ...]) -> tuple[int, int]:
        if dw[1] != 1 or opcode not in (hw.NVM_READ, hw.NVM_WRITE):
            return super()._io(opcode, dw)  # Flush, bad namespace, bad opcode: no media
        slba = dw[10] | dw[11] << 32
        nlb = (dw[12] & 0xFFFF) + 1
        if slba + nlb > min(hw.NAMESPACE_BLOCKS, self.disk.sectors) or (
            nlb * hw.BLOCK_SIZE > PAGE_SIZE << hw.MDTS
        ):
            return super()._io(opcode, dw)  # the model's own range/size errors
        self.disk_commands += 1
        try:
            if opcode == hw.NVM_READ:
                return self._transfer(dw, page_out=self.disk.read(slba, nlb)), 0
            buf = bytearray()
            status = self._transfer(dw, length=nlb * hw.BLOCK_SIZE, into=buf)
            if status == hw.SC_SUCCESS:
                self.disk.write(slba, bytes(buf))
            return status, 0
        except XenpciError:
            return 0x280 | 0x06, 0  # Media and Data Integrity Errors: Unrecovered Read/Write


class EmulatedNvme(hw.NvmeFunction):
    """The NVMe PCI function QEMU presents to the HVM guest (see module doc)."""

    model_name = "emulated-nvme"

    def __init__(self, sbdf: SBDF, disk: BlockDevice, *, dma: DmaPort, raise_irq: RaiseIrq) -> None:
        super().__init__(sbdf, dma=dma, raise_irq=raise_irq)
        # Swap the register window over to a core whose media is dom0's disk.
        self.core = EmuNvmeCore(self.dma, self.signal, disk)
        regs = self.core.regs
        self.regions[0] = [r for r in self.regions[0] if r.name != "nvme-regs"]
        self.add_region(0, Region("nvme-regs", 0, hw.NVME_MMIO_SIZE, regs.read, regs.write))
