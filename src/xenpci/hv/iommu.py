"""The IOMMU: per-device DMA contexts bound to a domain, and the no-IOMMU machine.

Models ``xen/drivers/passthrough/pci.c`` (``assign_device``, ``deassign_device``,
``device_assigned``) and what a VT-d/AMD-Vi context does to a device's DMA: a
device's bus addresses are translated through its owner's memory map; an
address outside it faults, is recorded (as the IOMMU's fault log would) and
transfers nothing. Unassigned devices belong to the hardware domain (dom0),
as in Xen.

With ``enabled=False`` the machine has no IOMMU: bus addresses are machine
addresses, so a device (and the guest driving it) can read and write any
domain's RAM. That is why Xen supports PV passthrough only with an IOMMU.
Assignment still records the owner in that mode (old Xen let PV guests drive
devices with ``iommu=0``; current Xen refuses with ``EOPNOTSUPP``), so the
danger can be shown rather than only described.

Deliberate differences: the context translates a bus address as a guest
*physical* address (gfn -> mfn), like an HVM/PVH guest's IOMMU page tables;
for PV guests Xen identity-maps mfns instead. No phantom functions, no
quarantine domain, no IOMMU groups: deassigning returns the device to dom0.
A multi-page DMA is checked entirely before any byte moves.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

from xenpci.hv.console import Console
from xenpci.hv.errors import DeviceError, DmaFault, InvalidArgument
from xenpci.hv.memory import P2M, PAGE_SHIFT, PAGE_SIZE, MachineMemory
from xenpci.trace import Trace

HARDWARE_DOMID = 0


@functools.lru_cache(maxsize=256)  # every DMA record names its device: formatted once
def format_sbdf(sbdf: int) -> str:
    return f"{sbdf >> 16:04x}:{(sbdf >> 8) & 0xFF:02x}:{(sbdf >> 3) & 0x1F:02x}.{sbdf & 7}"


def check_sbdf(sbdf: int) -> None:
    if not 0 <= sbdf <= 0xFFFF_FFFF:
        raise InvalidArgument(f"sbdf {sbdf:#x} out of range", sbdf=sbdf)


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One DMA fault: which device, where, and whose context it went through."""

    sbdf: int
    bus_addr: int
    length: int
    write: bool
    domid: int | None


class Iommu:
    """Device ownership and DMA translation for the whole machine."""

    def __init__(
        self,
        machine: MachineMemory,
        p2m_of: Callable[[int], P2M | None],
        trace: Trace,
        *,
        enabled: bool = True,
        console: Console | None = None,
    ) -> None:
        self.machine = machine
        self.enabled = enabled
        self.console = console
        self._p2m_of = p2m_of
        self._trace = trace
        self._lock = threading.Lock()
        self._owner: dict[int, int] = {}
        self.faults: list[FaultRecord] = []

    # -- contexts (privileged side) --------------------------------------
    def assign(self, domid: int, sbdf: int) -> None:
        check_sbdf(sbdf)
        if domid == HARDWARE_DOMID:
            raise InvalidArgument("assigning to the hardware domain", op="assign_device")
        with self._lock:
            owner = self._owner.get(sbdf, HARDWARE_DOMID)
            if owner != HARDWARE_DOMID:
                # device_assigned(): owned by someone other than the hardware domain.
                raise DeviceError(
                    f"{format_sbdf(sbdf)} already assigned to d{owner}",
                    errno="EBUSY",
                    op="assign_device",
                    sbdf=sbdf,
                    owner=owner,
                )
            self._owner[sbdf] = domid

    def deassign(self, domid: int, sbdf: int) -> None:
        check_sbdf(sbdf)
        with self._lock:
            if self._owner.get(sbdf, HARDWARE_DOMID) != domid or domid == HARDWARE_DOMID:
                raise DeviceError(
                    f"{format_sbdf(sbdf)} is not assigned to d{domid}",
                    errno="ENODEV",
                    op="deassign_device",
                    sbdf=sbdf,
                )
            del self._owner[sbdf]

    def owner(self, sbdf: int) -> int:
        with self._lock:
            return self._owner.get(sbdf, HARDWARE_DOMID)

    def assigned(self, domid: int) -> list[int]:
        with self._lock:
            return sorted(s for s, d in self._owner.items() if d == domid)

    def remove_domain(self, domid: int) -> list[int]:
        """A dying domain's devices go back to dom0; return them."""
        with self._lock:
            devs = [s for s, d in self._owner.items() if d == domid]
            for s in devs:
                del self._owner[s]
            return devs

    # -- device side ------------------------------------------------------
    def dma_port(self, sbdf: int) -> DmaPort:
        check_sbdf(sbdf)
        return DmaPort(self, sbdf)

    def translate(
        self, sbdf: int, bus_addr: int, n: int, write: bool
    ) -> list[tuple[int, int, int]]:
        """``(mfn, offset, length)`` pieces for a DMA, or ``DmaFault`` (recorded)."""
        owner = self.owner(sbdf)
        pieces: list[tuple[int, int, int]] = []
        addr, end = bus_addr, bus_addr + n
        p2m = self._p2m_of(owner) if self.enabled else None
        fault = bus_addr < 0 or n < 0 or (self.enabled and p2m is None)
        if not fault and p2m is not None and n > 0:
            # Fast path: the whole span is inside the context; slice the p2m once.
            first, last = bus_addr >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
            if last < p2m.nr_pages:
                mfns = p2m.mfns[first : last + 1]
                off = bus_addr & (PAGE_SIZE - 1)
                pieces = [(m, 0, PAGE_SIZE) for m in mfns]
                pieces[0] = (mfns[0], off, PAGE_SIZE - off)
                tail = end - (last << PAGE_SHIFT)  # bytes used of the last frame
                m_last, o_last, _ = pieces[-1]
                pieces[-1] = (m_last, o_last, tail - o_last)
                return pieces
        while not fault and addr < end:
            frame, off = addr >> PAGE_SHIFT, addr & (PAGE_SIZE - 1)
            length = min(PAGE_SIZE - off, end - addr)
            if self.enabled:
                assert p2m is not None
                if not 0 <= frame < p2m.nr_pages:
                    fault = True
                    break
                mfn = p2m.mfns[frame]
            else:
                # No IOMMU: the bus address *is* the machine address.
                mfn = frame
                if self.machine.owner(mfn) is None:
                    fault = True
                    break
            pieces.append((mfn, off, length))
            addr += length
        if fault:
            rec = FaultRecord(sbdf, bus_addr, n, write, owner if self.enabled else None)
            with self._lock:
                self.faults.append(rec)
            if self.console is not None and self.enabled:
                # vtd/iommu.c iommu_page_fault_do_one (type 1 is a read)
                self.console.printk(
                    f"[VT-D]DMAR:[DMA {'Write' if write else 'Read'}] Request device "
                    f"[{format_sbdf(sbdf)}] fault addr {bus_addr:x}"
                )
            self._trace.record(
                "dma_fault",
                owner,
                "direct",
                sbdf=format_sbdf(sbdf),
                bus_addr=bus_addr,
                len=n,
                write=write,
                iommu=self.enabled,
            )
            raise DmaFault(
                f"DMA {'write' if write else 'read'} by {format_sbdf(sbdf)} to "
                f"{bus_addr:#x}+{n:#x} outside d{owner}'s memory"
                if self.enabled
                else f"DMA to {bus_addr:#x}+{n:#x} hits no RAM",
                op="dma",
                sbdf=sbdf,
                bus_addr=bus_addr,
                length=n,
            )
        return pieces


class DmaPort:
    """A device's bus-master interface: all its DMA goes through the IOMMU."""

    __slots__ = ("iommu", "sbdf")

    def __init__(self, iommu: Iommu, sbdf: int) -> None:
        self.iommu = iommu
        self.sbdf = sbdf

    def read(self, bus_addr: int, n: int) -> bytes:
        pieces = self.iommu.translate(self.sbdf, bus_addr, n, write=False)
        mem = self.iommu.machine
        # One copy: memoryview slices of the frames are joined straight into the result.
        data = b"".join([memoryview(mem.frame(m))[o : o + ln] for m, o, ln in pieces])
        self._record("dma_read", bus_addr, n, pieces)
        return data

    def write(self, bus_addr: int, data: bytes) -> None:
        pieces = self.iommu.translate(self.sbdf, bus_addr, len(data), write=True)
        mem, pos = self.iommu.machine, 0
        for m, o, ln in pieces:
            mem.frame(m)[o : o + ln] = data[pos : pos + ln]
            pos += ln
        self._record("dma_write", bus_addr, len(data), pieces)

    def _record(self, kind: str, bus_addr: int, n: int, pieces: list[tuple[int, int, int]]) -> None:
        iommu = self.iommu
        # Whose memory was touched: the context's owner, or (no IOMMU) the frame's owner.
        owner = iommu.owner(self.sbdf)
        if iommu.enabled:
            touched = [owner]  # the context maps only the owner's frames
        else:
            owners = {iommu.machine.owner(m) for m, _, _ in pieces}
            touched = sorted(d for d in owners if d is not None)
        iommu._trace.record(
            kind,
            owner,
            "direct",
            sbdf=format_sbdf(self.sbdf),
            bus_addr=bus_addr,
            len=n,
            touched=touched,
        )
