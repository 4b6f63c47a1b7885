"""MSI-X table protection: Xen's ``mmio_ro_ranges`` and its MSI-X table mediation.

Models two pieces of Xen. ``xen/arch/x86/msi.c`` (``msix_capability_init``,
reached from ``PHYSDEVOP_prepare_msix`` which pciback issues when it seizes a
device; privileged since XSA-87) puts the frames holding a device's MSI-X
table and PBA into ``mmio_ro_ranges``, so a guest mapping of the BAR cannot
write them directly. And vPCI's ``xen/drivers/vpci/msix.c`` traps accesses to
those frames and emulates them: reads pass, the guest may set or clear the
per-vector Mask bit, and it may not change a vector's message address or
data (that would aim the device's interrupt writes at something the guest
does not own: XSA-120-style interrupt injection into another domain).

Deliberate differences: ``prepare`` takes the table and PBA windows as
machine addresses (real Xen reads the device's MSI-X capability itself;
the hypervisor model has no config space); an address/data write is dropped
and counted rather than faulting the guest (Xen's ``mmio_ro_emulated_write``
also drops it); bytes of a protected frame outside the table and PBA are
passed to the device, as vPCI does for a table that does not fill its page.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from xenpci.hv.errors import InvalidArgument
from xenpci.hv.flushtlb import FlushClock
from xenpci.hv.iommu import check_sbdf
from xenpci.hv.memory import PAGE_SHIFT
from xenpci.hv.rangeset import RangeSet

#: PCI Local Bus 3.0 §6.8.2.6: 16-byte entries, Vector Control at +12, Mask is bit 0.
MSIX_ENTRY_SIZE = 16
MSIX_VECTOR_CTRL = 12
MSIX_MASKBIT = 0x1

Verdict = Literal["pass", "mask", "dropped"]


@dataclass(frozen=True, slots=True)
class MsixRegion:
    """One device's MSI-X table and PBA, as machine (physical) address windows."""

    sbdf: int
    table_paddr: int
    table_size: int
    pba_paddr: int
    pba_size: int

    def __post_init__(self) -> None:
        check_sbdf(self.sbdf)
        for name, base, size in (
            ("table", self.table_paddr, self.table_size),
            ("pba", self.pba_paddr, self.pba_size),
        ):
            if base < 0 or size <= 0 or base + size > 1 << 64:
                raise InvalidArgument(f"bad MSI-X {name} window {base:#x}+{size:#x}")
        if self.table_size % MSIX_ENTRY_SIZE:
            raise InvalidArgument(f"MSI-X table size {self.table_size:#x} not whole entries")

    def frames(self) -> list[tuple[int, int]]:
        """The frame ranges (first, last) the table and the PBA occupy."""
        return [
            (base >> PAGE_SHIFT, (base + size - 1) >> PAGE_SHIFT)
            for base, size in (
                (self.table_paddr, self.table_size),
                (self.pba_paddr, self.pba_size),
            )
        ]


class MsixTables:
    """Every protected MSI-X region of the machine, and the write filter over them."""

    def __init__(self, clock: FlushClock | None = None) -> None:
        self._lock = threading.Lock()
        self._regions: dict[int, MsixRegion] = {}
        self.clock = clock if clock is not None else FlushClock()
        #: ``mmio_ro_ranges``: frames a guest mapping reaches only through :meth:`filter_write`.
        self.ro_frames = RangeSet("mmio_ro_ranges")
        #: Bumped whenever ``ro_frames`` changes.
        self.generation = 0

    def prepare(self, region: MsixRegion) -> None:
        with self._lock:
            if region.sbdf in self._regions:
                raise InvalidArgument(
                    f"MSI-X of sbdf {region.sbdf:#x} already prepared", errno="EBUSY"
                )
            self._regions[region.sbdf] = region
            self._rebuild()

    def release(self, sbdf: int) -> MsixRegion:
        check_sbdf(sbdf)
        with self._lock:
            region = self._regions.pop(sbdf, None)
            if region is None:
                raise InvalidArgument(f"MSI-X of sbdf {sbdf:#x} not prepared", errno="ENOENT")
            self._rebuild()
            return region

    def _rebuild(self) -> None:
        # Two devices may share no frame, but rebuilding keeps release exact anyway.
        frames = RangeSet("mmio_ro_ranges")
        for region in self._regions.values():
            for first, last in region.frames():
                frames.add_range(first, last)
        self.ro_frames = frames
        self.generation += 1
        self.clock.tick()

    def regions(self) -> list[MsixRegion]:
        with self._lock:
            return sorted(self._regions.values(), key=lambda r: r.sbdf)

    def is_protected(self, mfn: int) -> bool:
        frames = self.ro_frames
        return not frames.is_empty() and mfn in frames

    def classify(self, paddr: int, size: int) -> tuple[str, int] | None:
        """``("table", offset)`` / ``("pba", offset)`` for an access inside one, else None."""
        with self._lock:
            regions = list(self._regions.values())
        for r in regions:
            if r.table_paddr <= paddr and paddr + size <= r.table_paddr + r.table_size:
                return "table", paddr - r.table_paddr
            if r.pba_paddr <= paddr and paddr + size <= r.pba_paddr + r.pba_size:
                return "pba", paddr - r.pba_paddr
            if (paddr < r.table_paddr + r.table_size and r.table_paddr < paddr + size) or (
                paddr < r.pba_paddr + r.pba_size and r.pba_paddr < paddr + size
            ):
                return "straddle", 0
        return None

    def filter_write(
        self, paddr: int, size: int, value: int, current: Callable[[], int]
    ) -> tuple[Verdict, int | None]:
        """What reaches the device for a guest write to a protected frame.

        ``current`` reads the register's present value (only a well-formed
        Vector Control write needs it). Returns the verdict and the value to
        write (None: nothing is written).
        """
        where = self.classify(paddr, size)
        if where is None:
            return "pass", value
        kind, offset = where
        if kind == "table" and size == 4 and offset % MSIX_ENTRY_SIZE == MSIX_VECTOR_CTRL:
            # Only the Mask bit is the guest's; the reserved bits keep their value.
            return "mask", (current() & ~MSIX_MASKBIT) | (value & MSIX_MASKBIT)
        # Message address/data, the PBA (read-only by spec) or a straddling access.
        return "dropped", None
