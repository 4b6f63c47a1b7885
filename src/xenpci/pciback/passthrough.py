"""The real-topology guest view of Linux xen-pciback (``passthrough.c``).

Guests see host BDFs. Roots are the buses of exported devices, except that a
bus is not published when one of its upstream bridges is itself exported
(``xen_pcibk_publish_pci_root`` deduplication): the guest finds it by
scanning below that bridge. Lookups are exact on domain, bus and full devfn.

Difference: Linux walks ``pci_dev->bus->self`` parents; we derive parenthood
from the exported bridges' own secondary..subordinate bus numbers, so only
what is in config space is used.
"""

from __future__ import annotations

from xenpci.pci import regs
from xenpci.pciback.pci_stub import PcistubDevice
from xenpci.pciback.vpci import GuestAddress


class PassthroughBackend:
    """``xen_pcibk_passthrough_backend``."""

    name = "passthrough"

    def __init__(self) -> None:
        self._devs: list[PcistubDevice] = []

    def add(self, psdev: PcistubDevice, devid: int) -> GuestAddress:
        self._devs.append(psdev)
        s = psdev.hw.sbdf
        return GuestAddress(s.segment, s.bus, s.devfn)

    def get(self, domain: int, bus: int, devfn: int) -> PcistubDevice | None:
        for psdev in self._devs:
            s = psdev.hw.sbdf
            if (s.segment, s.bus, s.devfn) == (domain, bus, devfn):
                return psdev
        return None

    def find(self, psdev: PcistubDevice) -> GuestAddress | None:
        if psdev not in self._devs:
            return None
        s = psdev.hw.sbdf
        return GuestAddress(s.segment, s.bus, s.devfn)

    def release(self, psdev: PcistubDevice) -> None:
        if psdev in self._devs:
            self._devs.remove(psdev)

    def _below_exported_bridge(self, segment: int, bus: int) -> bool:
        for psdev in self._devs:
            cs = psdev.hw.config
            if cs.header_type != regs.PCI_HEADER_TYPE_BRIDGE:
                continue
            if psdev.hw.sbdf.segment != segment:
                continue
            sec = cs.read(regs.PCI_SECONDARY_BUS, 1)
            sub = cs.read(regs.PCI_SUBORDINATE_BUS, 1)
            if sec and sec <= bus <= sub:
                return True
        return False

    def roots(self) -> list[tuple[int, int]]:
        """Distinct (domain, bus) of exported devices not below an exported bridge,
        in export order (the order ``root-N`` keys are appended)."""
        out: list[tuple[int, int]] = []
        for psdev in self._devs:
            s = psdev.hw.sbdf
            root = (s.segment, s.bus)
            if root not in out and not self._below_exported_bridge(*root):
                out.append(root)
        return out

    def devices(self) -> list[PcistubDevice]:
        return list(self._devs)
