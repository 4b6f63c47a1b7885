"""A PCIe-to-PCI bridge (type-1 header) with a conventional device behind it.

Mirrors QEMU's ``pcie-pci-bridge`` (``hw/pci-bridge/pcie_pci_bridge.c``,
IDs 1b36:000e, class 06:04:00): a PCIe capability of type "PCI Express to
PCI/PCI-X bridge" (PCIe Base §7.5.3.2, type 0111b), PM, primary/secondary/
subordinate bus numbers and closed forwarding windows. QEMU's bridge also
has SHPC and MSI; this one has neither (no hot-plug on the secondary bus),
and it does not forward config cycles: the platform addresses the function
behind it directly by its SBDF on the secondary bus. The bridge advertises
no FLR (bridges are reset through Secondary Bus Reset in Bridge Control).
"""

from __future__ import annotations

from xenpci.devices.base import DeviceModel
from xenpci.devices.builder import ConfigBuilder
from xenpci.devices.dma import DmaPort
from xenpci.devices.irq import RaiseIrq
from xenpci.pci import regs
from xenpci.pci.address import SBDF


class PcieToPciBridge(DeviceModel):
    """See module doc. ``secondary`` is the bus number behind the bridge."""

    model_name = "bridge"

    def __init__(
        self,
        sbdf: SBDF,
        *,
        secondary: int | None = None,
        dma: DmaPort | None = None,
        raise_irq: RaiseIrq | None = None,
    ) -> None:
        sec = sbdf.bus + 1 if secondary is None else secondary
        b = ConfigBuilder(0x1B36, 0x000E, 0x060400, revision=0, bridge=True, express=True)
        b.bridge_buses(sbdf.bus, sec, sec)
        b.add_pm()
        b.add_express(regs.PCI_EXP_TYPE_PCI_BRIDGE, flr=False)
        super().__init__(sbdf, b.build(), dma=dma, raise_irq=raise_irq)

    @property
    def secondary_bus(self) -> int:
        return self.config.read(regs.PCI_SECONDARY_BUS, 1)
