"""Per-domain I/O capabilities: iomem frames, I/O ports and irqs.

Models ``d->iomem_caps``, ``d->arch.ioport_caps`` and ``d->irq_caps`` with the
checks ``iomem_access_permitted``, ``ioports_access_permitted`` and
``irq_access_permitted`` (``xen/include/xen/iocap.h``). The hardware domain
starts with everything, as Xen gives dom0 at boot; a guest starts with nothing
and is granted exactly its devices' BAR pages, ports and irqs by the toolstack
(``XEN_DOMCTL_*_permission``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from xenpci.hv.errors import InvalidArgument
from xenpci.hv.flushtlb import FlushClock
from xenpci.hv.iobus import MAX_IOPORTS
from xenpci.hv.rangeset import RangeSet

#: Machine frame numbers fit 52 bits of physical address (x86-64 MAXPHYSADDR).
MAX_MFN = (1 << 40) - 1
#: pirqs per domain (Xen sizes ``nr_pirqs`` from ``nr_irqs``; one fixed figure here).
NR_PIRQS = 1024


@dataclass(slots=True)
class IoCaps:
    iomem: RangeSet = field(default_factory=lambda: RangeSet("iomem_caps"))
    ioports: RangeSet = field(default_factory=lambda: RangeSet("ioport_caps"))
    irqs: RangeSet = field(default_factory=lambda: RangeSet("irq_caps"))


def check_iomem(first_mfn: int, nr_mfns: int) -> int:
    """Validate a frame range as ``XEN_DOMCTL_iomem_permission`` does; return the last mfn."""
    if first_mfn < 0 or nr_mfns <= 0 or first_mfn + nr_mfns - 1 > MAX_MFN:
        raise InvalidArgument(
            f"bad iomem range first={first_mfn:#x} nr={nr_mfns}",
            first_mfn=first_mfn,
            nr_mfns=nr_mfns,
        )
    return first_mfn + nr_mfns - 1


def check_ioports(first: int, nr: int) -> int:
    if first < 0 or nr <= 0 or first + nr > MAX_IOPORTS:
        raise InvalidArgument(f"bad ioport range first={first:#x} nr={nr}", first=first, nr=nr)
    return first + nr - 1


def check_pirq(pirq: int) -> None:
    if not 0 <= pirq < NR_PIRQS:
        raise InvalidArgument(f"pirq {pirq} out of range 0..{NR_PIRQS - 1}", pirq=pirq)


class Permissions:
    """All domains' capability rangesets under one lock."""

    def __init__(self, clock: FlushClock | None = None) -> None:
        self._lock = threading.Lock()
        self._caps: dict[int, IoCaps] = {}
        #: Bumped by every change, so a holder of a checked answer can tell it is stale.
        self.generation = 0
        #: Ticked with ``generation``: MMIO mappings' cached checks go stale at once.
        self.clock = clock if clock is not None else FlushClock()

    def add_domain(self, domid: int, *, everything: bool = False) -> None:
        caps = IoCaps()
        if everything:
            caps.iomem.add_range(0, MAX_MFN)
            caps.ioports.add_range(0, MAX_IOPORTS - 1)
            caps.irqs.add_range(0, NR_PIRQS - 1)
        with self._lock:
            self._caps[domid] = caps
            self.generation += 1
            self.clock.tick()

    def remove_domain(self, domid: int) -> None:
        with self._lock:
            self._caps.pop(domid, None)
            self.generation += 1
            self.clock.tick()

    def set_iomem(self, domid: int, first: int, last: int, allow: bool) -> None:
        with self._lock:
            rs = self._caps[domid].iomem
            (rs.add_range if allow else rs.remove_range)(first, last)
            self.generation += 1
            self.clock.tick()

    def set_ioports(self, domid: int, first: int, last: int, allow: bool) -> None:
        with self._lock:
            rs = self._caps[domid].ioports
            (rs.add_range if allow else rs.remove_range)(first, last)
            self.generation += 1
            self.clock.tick()

    def set_irq(self, domid: int, pirq: int, allow: bool) -> None:
        with self._lock:
            rs = self._caps[domid].irqs
            (rs.add_range if allow else rs.remove_range)(pirq, pirq)
            self.generation += 1
            self.clock.tick()

    def iomem_permitted(self, domid: int, first: int, last: int) -> bool:
        with self._lock:
            caps = self._caps.get(domid)
            return caps is not None and caps.iomem.contains_range(first, last)

    def ioports_permitted(self, domid: int, first: int, last: int) -> bool:
        with self._lock:
            caps = self._caps.get(domid)
            return caps is not None and caps.ioports.contains_range(first, last)

    def irq_permitted(self, domid: int, pirq: int) -> bool:
        with self._lock:
            caps = self._caps.get(domid)
            return caps is not None and pirq in caps.irqs

    def snapshot(self, domid: int) -> dict[str, list[tuple[int, int]]]:
        with self._lock:
            caps = self._caps.get(domid)
            if caps is None:
                return {"iomem": [], "ioports": [], "irqs": []}
            return {
                "iomem": caps.iomem.ranges(),
                "ioports": caps.ioports.ranges(),
                "irqs": caps.irqs.ranges(),
            }
