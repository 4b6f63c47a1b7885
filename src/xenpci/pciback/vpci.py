"""The default guest-visible topology of Linux xen-pciback (``vpci.c``).

One virtual root bus 0000:00 with 32 slots. Functions of one physical slot
(same domain, bus and slot) share a virtual slot; anything else takes the
first free slot. Linux' odd rules are kept and tested:

* the virtual function number is the *physical* one (a lone function 3
  appears as 00:SS.3 with no function 0), and the toolstack's vslot/vdevfn is
  ignored;
* lookups mask devfn to 8 bits (0x108 behaves as 0x08) and need domain 0,
  bus 0;
* the bridge refusal tests ``class >> 24`` on a 24-bit class, so it never
  fires: bridges are accepted;
* an SR-IOV VF at function 0 never joins or is joined by another slot's
  functions (VFs are not modelled as such here; a caller may set ``PcistubDevice.is_virtfn``).
"""

from __future__ import annotations

from dataclasses import dataclass

from xenpci.pci.address import SBDF
from xenpci.pciback.errors import EINVAL, ENOMEM, BusError
from xenpci.pciback.pci_stub import PcistubDevice
from xenpci.xenbus import pci_keys

PCI_SLOT_MAX = 32
PCI_BASE_CLASS_BRIDGE = 0x06


@dataclass(frozen=True, slots=True)
class GuestAddress:
    """A guest-visible PCI address as the backend publishes it."""

    domain: int
    bus: int
    devfn: int

    @property
    def sbdf(self) -> SBDF:
        return SBDF.from_devfn(self.domain, self.bus, self.devfn)


def format_vdev(addr: GuestAddress) -> str:
    """``vdev-N`` value: ``%04x:%02x:%02x.%02x`` (two-digit function: the PV protocol)."""
    return pci_keys.format_vdev(addr.domain, addr.bus, (addr.devfn >> 3) & 0x1F, addr.devfn & 7)


def format_root(domain: int, bus: int) -> str:
    """``root-N`` value: ``%04x:%02x``."""
    return pci_keys.format_root(domain, bus)


def new_root_entries(roots: list[tuple[int, int]], published: list[str]) -> list[str]:
    """``root-N`` values to append: the backend's roots not yet among the ``root-K``
    values already in XenStore (``xen_pcibk_publish_pci_root`` re-reads them)."""
    out: list[str] = []
    for domain, bus in roots:
        text = format_root(domain, bus)
        if text not in published and text not in out:
            out.append(text)
    return out


class VpciBackend:
    """``xen_pcibk_vpci_backend``: add/get/find/release/roots."""

    name = "vpci"

    def __init__(self) -> None:
        self.slots: list[list[PcistubDevice]] = [[] for _ in range(PCI_SLOT_MAX)]

    def add(self, psdev: PcistubDevice, devid: int) -> GuestAddress:
        """``__xen_pcibk_add_pci_dev``; -ENOMEM "No more space on root virtual PCI bus"."""
        hw = psdev.hw
        if (hw.config.class_code >> 24) == PCI_BASE_CLASS_BRIDGE:  # never true: see docstring
            raise BusError(str(hw.sbdf), EINVAL, "Can't export bridges on the virtual PCI bus")
        sbdf = hw.sbdf
        if not (psdev.is_virtfn and sbdf.function == 0):
            for slot, devs in enumerate(self.slots):
                if not devs:
                    continue
                first = devs[0].hw.sbdf
                if devs[0].is_virtfn and first.function == 0:
                    continue
                if (first.segment, first.bus, first.device) == (
                    sbdf.segment,
                    sbdf.bus,
                    sbdf.device,
                ):
                    devs.append(psdev)
                    return GuestAddress(0, 0, (slot << 3) | sbdf.function)
        for slot, devs in enumerate(self.slots):
            if not devs:
                devs.append(psdev)
                return GuestAddress(0, 0, (slot << 3) | sbdf.function)
        raise BusError(str(sbdf), ENOMEM, "No more space on root virtual PCI bus")

    def get(self, domain: int, bus: int, devfn: int) -> PcistubDevice | None:
        """``__xen_pcibk_get_pci_dev``: domain 0 / bus 0 only, devfn masked to 8 bits."""
        if domain != 0 or bus != 0:
            return None
        slot, func = (devfn >> 3) & 0x1F, devfn & 7
        for psdev in self.slots[slot]:
            if psdev.hw.sbdf.function == func:
                return psdev
        return None

    def find(self, psdev: PcistubDevice) -> GuestAddress | None:
        """``__xen_pcibk_get_pcifront_dev`` (AER): the guest address of a host device."""
        for slot, devs in enumerate(self.slots):
            if psdev in devs:
                return GuestAddress(0, 0, (slot << 3) | psdev.hw.sbdf.function)
        return None

    def release(self, psdev: PcistubDevice) -> None:
        """Remove from its slot (the caller then resets it via ``put_pci_dev``)."""
        for devs in self.slots:
            if psdev in devs:
                devs.remove(psdev)
                return

    def roots(self) -> list[tuple[int, int]]:
        """Always the one virtual root, 0000:00."""
        return [(0, 0)]

    def devices(self) -> list[PcistubDevice]:
        return [d for devs in self.slots for d in devs]
