"""The guest kernel's PCI core over pcifront: root buses, probing, BAR sizing.

Models the parts of Linux ``drivers/pci/probe.c`` a PV guest runs on top of
``pcifront_scan_root``: a root bus whose config accessors are pcifront's
(``struct pci_ops``), a probe of **every** devfn 0..255 (pcifront's own loop,
because the normal scan skips slots without function 0), the vendor-ID check
of ``pci_bus_read_dev_vendor_id``, and BAR sizing with the all-ones protocol
of ``__pci_read_base`` (reused from :func:`xenpci.pci.bar.size_bar_by_probe`).
``pci_read_config_*`` returns all-ones on error, which is how an absent devfn
looks absent.

Deliberate differences: no subordinate-bus scan behind bridges (pciback
publishes each bus it exports as its own root); resources are recorded, not
claimed from an allocator; extended config space is read only for devices
with a PCI Express capability (``pci_cfg_space_size``), without Linux's
extra probe of offset 0x100.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from xenpci.errors import XenpciError
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.bar import Bar, bar_count, decode_bars, size_bar_by_probe
from xenpci.pci.capabilities import find_capability
from xenpci.pci.config import ConfigSpace
from xenpci.pci.errors import BarError
from xenpci.pci.pcibios import PCIBIOS_SUCCESSFUL


class GuestPciError(XenpciError):
    """Base of the guest PCI core's errors."""


class ConfigAccessError(GuestPciError):
    """A config access failed with a PCIBIOS code (kept, as Linux returns it)."""

    def __init__(self, sbdf: SBDF, offset: int, size: int, pcibios: int, write: bool) -> None:
        self.sbdf = sbdf
        self.offset = offset
        self.size = size
        self.pcibios = pcibios
        what = "write" if write else "read"
        super().__init__(f"{sbdf}: config {what} at 0x{offset:x}/{size} -> PCIBIOS 0x{pcibios:02x}")


class PciOps(Protocol):
    """``struct pci_ops``: the bus's config accessors (pcifront provides them)."""

    def read(self, domain: int, bus: int, devfn: int, offset: int, size: int) -> tuple[int, int]:
        """Return (PCIBIOS code, value)."""
        ...

    def write(self, domain: int, bus: int, devfn: int, offset: int, size: int, value: int) -> int:
        """Return the PCIBIOS code."""
        ...


def _absent(vendor_dword: int) -> bool:
    # pci_bus_generic_read_dev_vendor_id: all-ones, all-zeros and the two
    # half-ones patterns mean "nothing here".
    return vendor_dword in (0xFFFFFFFF, 0x00000000, 0x0000FFFF, 0xFFFF0000)


@dataclass(eq=False)
class GuestPciDevice:
    """One device the guest found: its guest-visible address and what it probed."""

    bus: GuestPciBus
    devfn: int
    vendor: int
    device: int
    class_code: int
    header_type: int
    bars: tuple[Bar, ...] = ()
    #: Set while MSI / MSI-X is enabled: the pirqs the backend returned.
    msi_pirqs: list[int] = field(default_factory=list)
    msix_pirqs: list[int] = field(default_factory=list)

    @property
    def sbdf(self) -> SBDF:
        return SBDF.from_devfn(self.bus.domain, self.bus.number, self.devfn)

    def read_config(self, offset: int, size: int) -> int:
        """``pci_read_config_*``: all-ones (of the access size) on error."""
        err, value = self.bus.ops.read(self.bus.domain, self.bus.number, self.devfn, offset, size)
        if err != PCIBIOS_SUCCESSFUL:
            return (1 << (8 * size)) - 1
        return value

    def read_config_checked(self, offset: int, size: int) -> int:
        """Like :meth:`read_config` but raising :class:`ConfigAccessError` on error."""
        err, value = self.bus.ops.read(self.bus.domain, self.bus.number, self.devfn, offset, size)
        if err != PCIBIOS_SUCCESSFUL:
            raise ConfigAccessError(self.sbdf, offset, size, err, write=False)
        return value

    def write_config(self, offset: int, size: int, value: int) -> int:
        """``pci_write_config_*``: returns the PCIBIOS code."""
        return self.bus.ops.write(self.bus.domain, self.bus.number, self.devfn, offset, size, value)

    def write_config_ignoring(self, offset: int, size: int, value: int) -> None:
        # pci_write_config_* in __pci_read_base: the result is not checked.
        self.write_config(offset, size, value)

    def write_config_checked(self, offset: int, size: int, value: int) -> None:
        err = self.write_config(offset, size, value)
        if err != PCIBIOS_SUCCESSFUL:
            raise ConfigAccessError(self.sbdf, offset, size, err, write=True)

    @property
    def is_express(self) -> bool:
        return find_capability(self.config_space(256), regs.PCI_CAP_ID_EXP) is not None

    def config_space(self, size: int | None = None) -> ConfigSpace:
        """The guest's view of the whole config space, read dword by dword.

        ``size`` None: 4096 for a PCI Express device, else 256
        (``pci_cfg_space_size``). Failed reads show as all-ones, as they would
        in the guest's sysfs ``config`` file.
        """
        header = self._read_bytes(0, regs.PCI_CFG_SPACE_SIZE)
        cs = ConfigSpace(header)
        if size is None:
            size = (
                regs.PCI_CFG_SPACE_EXP_SIZE
                if find_capability(cs, regs.PCI_CAP_ID_EXP) is not None
                else regs.PCI_CFG_SPACE_SIZE
            )
        if size == regs.PCI_CFG_SPACE_SIZE:
            return cs
        rest = self._read_bytes(regs.PCI_CFG_SPACE_SIZE, size - regs.PCI_CFG_SPACE_SIZE)
        return ConfigSpace(header + rest)

    def _read_bytes(self, start: int, n: int) -> bytes:
        out = bytearray()
        for off in range(start, start + n, 4):
            out += self.read_config(off, 4).to_bytes(4, "little")
        return bytes(out)

    def __repr__(self) -> str:
        return f"GuestPciDevice({self.sbdf} {self.vendor:04x}:{self.device:04x})"


class GuestPciBus:
    """A root bus created by ``pcifront_scan_root`` for one published root."""

    def __init__(self, domain: int, number: int, ops: PciOps) -> None:
        if not 0 <= domain <= 0xFFFF or not 0 <= number <= 0xFF:
            raise GuestPciError(f"bad root {domain:x}:{number:x}")
        self.domain = domain
        self.number = number
        self.ops = ops
        self.devices: dict[int, GuestPciDevice] = {}

    def scan(self) -> list[GuestPciDevice]:
        """Probe every devfn not already known; return the new devices.

        pcifront probes devfn 0..255 one by one (``pcifront_scan_bus``): a
        lone function 3 with no function 0 is found too.
        """
        found = []
        for devfn in range(256):
            if devfn in self.devices:
                continue
            dev = self._probe(devfn)
            if dev is not None:
                self.devices[devfn] = dev
                found.append(dev)
        return found

    def remove(self, devfn: int) -> GuestPciDevice | None:
        """``pci_stop_and_remove_bus_device``."""
        return self.devices.pop(devfn, None)

    def _probe(self, devfn: int) -> GuestPciDevice | None:
        err, ident = self.ops.read(self.domain, self.number, devfn, regs.PCI_VENDOR_ID, 4)
        if err != PCIBIOS_SUCCESSFUL or _absent(ident):
            return None
        dev = GuestPciDevice(
            bus=self,
            devfn=devfn,
            vendor=ident & 0xFFFF,
            device=ident >> 16,
            class_code=0,
            header_type=0,
        )
        dev.class_code = dev.read_config(regs.PCI_CLASS_REVISION, 4) >> 8
        dev.header_type = dev.read_config(regs.PCI_HEADER_TYPE, 1) & regs.PCI_HEADER_TYPE_MASK
        dev.bars = self._read_bases(dev)
        return dev

    @staticmethod
    def _read_bases(dev: GuestPciDevice) -> tuple[Bar, ...]:
        """``pci_read_bases``: decode the BAR registers, size each by probe."""
        htype = dev.header_type
        if bar_count(htype) == 0:
            return ()
        header = ConfigSpace(dev._read_bytes(0, 0x40) + b"\x00" * 0xC0)
        try:
            present = decode_bars(header)
        except BarError:
            return ()
        sizes: dict[int, int] = {}
        for bar in present:
            size = size_bar_by_probe(
                dev.read_config, dev.write_config_ignoring, bar.index, header_type=htype
            )
            if size:
                sizes[bar.index] = size
        try:
            return tuple(b for b in decode_bars(header, sizes) if b.size)
        except BarError:
            return ()


class GuestPci:
    """All root buses of the guest (what ``lspci`` in the guest walks)."""

    def __init__(self) -> None:
        self.roots: dict[tuple[int, int], GuestPciBus] = {}

    def add_root(self, domain: int, number: int, ops: PciOps) -> GuestPciBus:
        key = (domain, number)
        if key not in self.roots:
            self.roots[key] = GuestPciBus(domain, number, ops)
        return self.roots[key]

    def devices(self) -> Iterator[GuestPciDevice]:
        for key in sorted(self.roots):
            bus = self.roots[key]
            for devfn in sorted(bus.devices):
                yield bus.devices[devfn]

    def find(self, sbdf: SBDF) -> GuestPciDevice | None:
        bus = self.roots.get((sbdf.segment, sbdf.bus))
        return None if bus is None else bus.devices.get(sbdf.devfn)

    def remove(self, sbdf: SBDF) -> GuestPciDevice | None:
        bus = self.roots.get((sbdf.segment, sbdf.bus))
        return None if bus is None else bus.remove(sbdf.devfn)

    def clear(self) -> None:
        """Remove every root bus (``pcifront_free_roots``)."""
        self.roots.clear()
