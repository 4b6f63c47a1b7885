"""The path table: per category of operation, who carried it (dom0, direct, Xen).

No real counterpart: it is the proof the demo gives that the data plane never
touches dom0, read from the trace by typed kind (:class:`xenpci.trace.Kind`).
"""

from __future__ import annotations

from dataclasses import dataclass

from xenpci.trace import Kind, Trace

#: Trace kinds per row of the path table.
CATEGORIES: dict[str, tuple[Kind, ...]] = {
    "XenStore": (Kind.XENSTORE_REQUEST,),
    "pci ops": (Kind.PCI_OP,),
    "MMIO": (Kind.MMIO_READ, Kind.MMIO_WRITE, Kind.MMIO_MEDIATED, Kind.MMIO_UNMAPPED),
    "port IO": (Kind.IOPORT_READ, Kind.IOPORT_WRITE),
    "DMA": (Kind.DMA_READ, Kind.DMA_WRITE, Kind.DMA_FAULT),
    "interrupts": (Kind.PIRQ,),
}


@dataclass(frozen=True, slots=True)
class PathCount:
    """One row of the table: operations of a category by the path they took."""

    category: str
    dom0: int
    direct: int
    hypervisor: int

    def __post_init__(self) -> None:
        if min(self.dom0, self.direct, self.hypervisor) < 0:
            raise ValueError("counts are non-negative")


def path_counts(trace: Trace) -> list[PathCount]:
    """Per category: operations through dom0, direct, and mediated by the hypervisor.

    Stored kinds are counted by their recorded path; count-only kinds (MMIO,
    port IO) record ``direct`` for guests, so dom0's own accesses are those of
    domid 0.
    """
    stored = trace.path_counts()
    counted = trace.count_only_counts()
    rows = []
    for category, kinds in CATEGORIES.items():
        tally = {"dom0": 0, "direct": 0, "hypervisor": 0}
        for kind in kinds:
            if kind in trace.count_only:
                for (k, domid), n in counted.items():
                    if k == kind:
                        tally["dom0" if domid == 0 else "direct"] += n
            else:
                for path in tally:
                    tally[path] += stored.get((kind, path), 0)
        rows.append(PathCount(category, tally["dom0"], tally["direct"], tally["hypervisor"]))
    return rows
