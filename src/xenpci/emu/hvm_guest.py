"""An HVM guest's kernel, as far as its emulated disk goes.

An HVM guest finds its PCI devices the PC way: configuration mechanism #1,
an address written to port 0xCF8 and data through 0xCFC (Linux
``arch/x86/pci/direct.c``, ``pci_conf1_read``/``write``); it maps BARs
where the emulated firmware put them and enables MSI-X by writing the
table in BAR space and the capability's Enable bit. Every one of those port
and MMIO accesses traps to Xen and becomes an ioreq to the device model
(:mod:`xenpci.hv.ioreq`); the guest kernel does not know. It binds the same
NVMe driver class a passthrough guest uses
(:class:`~xenpci.guest.drivers.nvme.NvmeDriver`).

Deliberate differences: the kernel is :class:`~xenpci.guest.kernel.GuestKernel`
with an HVM root bus instead of pcifront; MSI-X set-up is lent to the driver
through the ``enable_msix`` call it makes on a PV guest's pcifront (a
subclass with no XenBus device behind it); each vector's message data is an
event-channel port the guest allocated for dom0 (as PV-on-HVM Linux routes
MSIs to event channels), so the device model's injection arrives as an event.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from xenpci.errors import XenpciError
from xenpci.guest.kernel import GuestKernel
from xenpci.guest.pci_core import GuestPciDevice
from xenpci.hv import PAGE_SHIFT, PAGE_SIZE, Hypercalls, MmioMapping
from xenpci.hv.domain import Domain
from xenpci.hv.ioreq import PCI_CONFIG_PORT, PCI_DATA_PORT
from xenpci.pci import regs
from xenpci.pci.pcibios import PCIBIOS_DEVICE_NOT_FOUND, PCIBIOS_SUCCESSFUL
from xenpci.pciback.platform import MSI_ADDRESS_BASE
from xenpci.pcifront.xenbus import PciDevice, Pcifront
from xenpci.xenstore.client import XsClient


class HvmConfigOps:
    """``pci_direct_conf1``: config cycles through ports 0xCF8/0xCFC (each one trapped)."""

    def __init__(self, hc: Hypercalls) -> None:
        self.hc = hc

    @staticmethod
    def _address(bus: int, devfn: int, offset: int) -> int:
        # PCI_CONF1_EXT_ADDRESS: enable bit, bus, devfn, register (ext bits 27:24).
        return 0x8000_0000 | bus << 16 | devfn << 8 | (offset & 0xFC) | (offset & 0xF00) << 16

    def read(self, domain: int, bus: int, devfn: int, offset: int, size: int) -> tuple[int, int]:
        if domain != 0 or offset < 0 or offset + size > 0x1000:
            return PCIBIOS_DEVICE_NOT_FOUND, (1 << (8 * size)) - 1
        self.hc.ioport_write(PCI_CONFIG_PORT, 4, self._address(bus, devfn, offset))
        return PCIBIOS_SUCCESSFUL, self.hc.ioport_read(PCI_DATA_PORT + (offset & 3), size)

    def write(self, domain: int, bus: int, devfn: int, offset: int, size: int, value: int) -> int:
        if domain != 0 or offset < 0 or offset + size > 0x1000:
            return PCIBIOS_DEVICE_NOT_FOUND
        self.hc.ioport_write(PCI_CONFIG_PORT, 4, self._address(bus, devfn, offset))
        self.hc.ioport_write(PCI_DATA_PORT + (offset & 3), size, value)
        return PCIBIOS_SUCCESSFUL


class HvmMsi(Pcifront):
    """MSI-X set-up of an HVM guest's PCI core (``pci_msix_enable`` + ``msix_setup_entries``)."""

    def __init__(self, domain: Domain, xs: XsClient, kernel: GuestKernel) -> None:
        super().__init__(domain.domid, domain.hypercalls, xs, kernel.pci)
        self._tables: dict[int, MmioMapping] = {}

    def _msix_cap(self, dev: GuestPciDevice) -> int:
        pos = dev.read_config(regs.PCI_CAPABILITY_LIST, 1) & 0xFC
        for _ in range(48):  # the PCI core's TTL against a looping list
            if not pos:
                break
            if dev.read_config(pos, 1) == regs.PCI_CAP_ID_MSIX:
                return pos
            pos = dev.read_config(pos + 1, 1) & 0xFC
        raise XenpciError(f"{dev.sbdf}: no MSI-X capability")

    def enable_msix(
        self, dev: PciDevice, entries: list[int], handler: Callable[[int], None]
    ) -> list[int]:
        if not isinstance(dev, GuestPciDevice):  # the guest PCI core hands us only its own
            raise TypeError(f"not a guest PCI device: {dev!r}")
        hc = self.hc
        cap = self._msix_cap(dev)
        table = dev.read_config(cap + regs.PCI_MSIX_TABLE, 4)
        bir, offset = table & 0x7, table & ~0x7
        bar = next(b for b in dev.bars if b.index == bir)
        addr = bar.address + offset
        first = addr >> PAGE_SHIFT
        last = (addr + regs.PCI_MSIX_ENTRY_SIZE * (max(entries) + 1) - 1) >> PAGE_SHIFT
        mapping = hc.mmio_map(first, last - first + 1)
        self._tables[id(dev)] = mapping
        base = addr & (PAGE_SIZE - 1)
        ports = []
        for entry in entries:
            port = hc.evtchn_alloc_unbound(0)
            hc.evtchn_set_handler(port, handler)
            at = base + regs.PCI_MSIX_ENTRY_SIZE * entry
            mapping.write(at + regs.PCI_MSIX_ENTRY_LOWER_ADDR, 4, MSI_ADDRESS_BASE)
            mapping.write(at + regs.PCI_MSIX_ENTRY_UPPER_ADDR, 4, 0)
            mapping.write(at + regs.PCI_MSIX_ENTRY_DATA, 4, port)
            mapping.write(at + regs.PCI_MSIX_ENTRY_VECTOR_CTRL, 4, 0)  # unmasked
            ports.append(port)
        flags = dev.read_config(cap + regs.PCI_MSIX_FLAGS, 2)
        dev.write_config_checked(cap + regs.PCI_MSIX_FLAGS, 2, flags | regs.PCI_MSIX_FLAGS_ENABLE)
        return ports

    def disable_msix(self, dev: PciDevice) -> int:
        if not isinstance(dev, GuestPciDevice):  # the guest PCI core hands us only its own
            raise TypeError(f"not a guest PCI device: {dev!r}")
        with contextlib.suppress(XenpciError):
            cap = self._msix_cap(dev)
            flags = dev.read_config(cap + regs.PCI_MSIX_FLAGS, 2)
            dev.write_config(cap + regs.PCI_MSIX_FLAGS, 2, flags & ~regs.PCI_MSIX_FLAGS_ENABLE)
        mapping = self._tables.pop(id(dev), None)
        if mapping is not None:
            mapping.unmap()
        return 0


class HvmKernel(GuestKernel):
    """The HVM guest's kernel: a root bus 0 on conf1, MSI-X by table writes."""

    def __init__(self, domain: Domain, xs: XsClient) -> None:
        super().__init__(domain, xs)
        self.pci.add_root(0, 0, HvmConfigOps(domain.hypercalls))
        self.pcifront = HvmMsi(domain, xs, self)

    def scan(self) -> list[GuestPciDevice]:
        """``pci_scan_root_bus`` on bus 0 (absent slots read all ones, untrapped)."""
        return self.pci.roots[(0, 0)].scan()
