"""The guest's ``lspci``: what a guest sees of its devices' config space.

Models what ``lspci -xxxx`` run inside the PV guest would print: the config
space of every device the guest PCI core found, read through pcifront (so
through pciback's filter), as bytes P's dump writer
(:func:`xenpci.pci.dump.format_dump`) turns into text that the real
``lspci -F FILE`` decodes.

Deliberate difference: ``known`` lets the caller cut a device's space to the
length the host source knew (a ``-xxx`` dump has 256 bytes, a non-root sysfs
read 64), so the guest view never shows bytes nobody knew as if they were
real; Linux would show what the hardware answers.
"""

from __future__ import annotations

from collections.abc import Mapping

from xenpci.guest.pci_core import GuestPci, GuestPciDevice
from xenpci.pci.address import SBDF
from xenpci.pci.config import ConfigSpace
from xenpci.pci.function import PciFunction


def guest_function(dev: GuestPciDevice, known: int | None = None, domid: int = 0) -> PciFunction:
    """One device as the guest sees it, as a passive :class:`PciFunction`."""
    cs = dev.config_space()
    data = cs.raw()
    if known is not None:
        data = data[: max(64, min(known, len(data)))]
    return PciFunction(dev.sbdf, ConfigSpace(data, cs.size), source=f"guest:d{domid}:{dev.sbdf}")


def guest_functions(
    pci: GuestPci, known: Mapping[SBDF, int] | None = None, domid: int = 0
) -> list[PciFunction]:
    """Every device of the guest, in bus order (what ``lspci`` lists)."""
    known = known or {}
    return [guest_function(d, known.get(d.sbdf), domid) for d in pci.devices()]
