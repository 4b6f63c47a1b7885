"""A device whose BARs are smaller than a 4 KiB page.

There is no real device behind it: it exists so the platform's page-granular
rules (iomem permissions in whole pages, shared-page verdicts; see the
passthrough notes on sub-page BARs, Linux ``pci=resource_alignment``) have
something to act on. IDs: vendor 1b36 (Red Hat, QEMU's range for its own
devices), device 00e2 picked by xenpci, not a product; class 08:80:00 (other
system peripheral). BAR0: 256-byte memory BAR, BAR1: 128-byte memory BAR,
BAR2: 16-byte I/O BAR, each a bank of 32-bit scratch registers; MSI (one
vector, 32-bit address) and INTx pin A. Conventional PCI: 256-byte config.
"""

from __future__ import annotations

from xenpci.devices.base import DeviceModel, Region
from xenpci.devices.builder import ConfigBuilder
from xenpci.devices.dma import DmaPort
from xenpci.devices.irq import RaiseIrq
from xenpci.devices.regfile import Reg, RegisterFile
from xenpci.pci.address import SBDF

SUBPAGE_SIZES = {0: 256, 1: 128, 2: 16}


def _bank(name: str, size: int) -> RegisterFile:
    return RegisterFile(name, size, [Reg(f"R{i}", 4 * i) for i in range(size // 4)])


class SubpageFunction(DeviceModel):
    """See module doc."""

    model_name = "subpage"

    def __init__(
        self,
        sbdf: SBDF,
        *,
        dma: DmaPort | None = None,
        raise_irq: RaiseIrq | None = None,
    ) -> None:
        b = ConfigBuilder(0x1B36, 0x00E2, 0x088000, revision=1, interrupt_pin=1)
        b.bar(0, "mem32", SUBPAGE_SIZES[0])
        b.bar(1, "mem32", SUBPAGE_SIZES[1])
        b.bar(2, "io", SUBPAGE_SIZES[2])
        b.add_msi(1, addr64=False, maskable=False)
        super().__init__(sbdf, b.build(), dma=dma, raise_irq=raise_irq)
        self.banks = {i: _bank(f"subpage-bar{i}", s) for i, s in SUBPAGE_SIZES.items()}
        for i, bank in self.banks.items():
            self.add_region(i, Region(bank.name, 0, bank.size, bank.read, bank.write))

    def reset_device(self) -> None:
        for bank in self.banks.values():
            bank.reset()
