"""The device's view of DMA: a port that moves bytes at bus addresses.

In Xen the IOMMU context of the owning domain translates and checks every DMA
(VT-d/AMD-Vi page tables built by ``iommu_map``); ``xenpci.hv`` provides such a
port per device as ``Iommu.dma_port(sbdf)``. Device models depend only on the
``DmaPort`` protocol below, so they run without a hypervisor.

``MemoryDmaPort`` is a test double shipped with the code (as ``trio.testing``
does): sparse memory plus an explicit list of mapped windows, faulting like an
IOMMU outside them. It deliberately differs from an IOMMU in having no page
tables and no per-domain translation: bus address == memory address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from xenpci.devices.errors import DmaFault

PAGE_SIZE = 4096
_BUS_LIMIT = 1 << 64


@runtime_checkable
class DmaPort(Protocol):
    """What a device needs to master the bus.

    A refused access raises ``DmaFault`` or any other ``XenpciError`` (the
    hypervisor's IOMMU raises its own); devices see both as a ``DmaFault``.
    """

    def read(self, bus_addr: int, n: int) -> bytes:
        """Read ``n`` bytes at ``bus_addr`` or raise ``DmaFault``."""
        ...

    def write(self, bus_addr: int, data: bytes) -> None:
        """Write ``data`` at ``bus_addr`` or raise ``DmaFault``."""
        ...


@dataclass(frozen=True, slots=True)
class DmaWindow:
    """A mapped bus-address range, like one IOMMU mapping."""

    base: int
    size: int
    writable: bool = True

    def __post_init__(self) -> None:
        if self.size <= 0 or self.base < 0 or self.base + self.size > _BUS_LIMIT:
            raise ValueError(f"bad DMA window base={self.base:#x} size={self.size:#x}")

    def covers(self, addr: int, n: int) -> bool:
        return self.base <= addr and addr + n <= self.base + self.size


class MemoryDmaPort:
    """Sparse in-memory ``DmaPort`` with IOMMU-like windows (see module doc)."""

    def __init__(self, windows: tuple[DmaWindow, ...] | None = None) -> None:
        # None means "identity-mapped, everything allowed" (no IOMMU).
        self.windows: list[DmaWindow] | None = None if windows is None else list(windows)
        self._pages: dict[int, bytearray] = {}
        self.bytes_read = 0
        self.bytes_written = 0

    def map(self, base: int, size: int, *, writable: bool = True) -> None:
        if self.windows is None:
            self.windows = []
        self.windows.append(DmaWindow(base, size, writable))

    def _check(self, addr: int, n: int, write: bool) -> None:
        if n < 0 or addr < 0 or addr + n > _BUS_LIMIT:
            raise DmaFault(addr, n, write=write, reason="outside the 64-bit bus")
        if self.windows is None or n == 0:
            return
        for w in self.windows:
            if w.covers(addr, n):
                if write and not w.writable:
                    raise DmaFault(addr, n, write=write, reason="mapping is read-only")
                return
        raise DmaFault(addr, n, write=write, reason="no IOMMU mapping")

    @property
    def touched_pages(self) -> frozenset[int]:
        """Page numbers that have ever been written (where DMA went)."""
        return frozenset(self._pages)

    def read(self, bus_addr: int, n: int) -> bytes:
        self._check(bus_addr, n, False)
        out = bytearray()
        addr = bus_addr
        while len(out) < n:
            page, off = divmod(addr, PAGE_SIZE)
            chunk = min(PAGE_SIZE - off, n - len(out))
            data = self._pages.get(page)
            out += data[off : off + chunk] if data is not None else bytes(chunk)
            addr += chunk
        self.bytes_read += n
        return bytes(out)

    def write(self, bus_addr: int, data: bytes) -> None:
        self._check(bus_addr, len(data), True)
        addr = bus_addr
        pos = 0
        while pos < len(data):
            page, off = divmod(addr, PAGE_SIZE)
            chunk = min(PAGE_SIZE - off, len(data) - pos)
            buf = self._pages.setdefault(page, bytearray(PAGE_SIZE))
            buf[off : off + chunk] = data[pos : pos + chunk]
            addr += chunk
            pos += chunk
        self.bytes_written += len(data)
