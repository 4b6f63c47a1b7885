"""The machine's MMIO and I/O-port decode: which device answers an address.

Models what the chipset and the PCI host bridge do on real hardware (and what
Xen's ``mmio_handler``/``portio`` lists do for emulated devices): a device
model registers a window (a BAR) and gets the accesses that fall inside it,
with the offset relative to the window. Permission checks are not here: the
hypervisor checks a domain's iomem/ioport capabilities before an access ever
reaches the bus, as the page tables and the I/O bitmap do on real hardware.
Deliberate difference: an access to an address nobody decodes reads all ones
and drops writes (master abort), and is counted as such.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Protocol

from xenpci.hv.errors import InvalidArgument
from xenpci.hv.flushtlb import FlushClock

#: x86 I/O space: 64 Ki ports (``MAX_IOPORTS`` in Xen).
MAX_IOPORTS = 0x10000
ACCESS_SIZES = frozenset({1, 2, 4, 8})


class MmioHandler(Protocol):
    """A device's register window: offsets are relative to the window base."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Window:
    """A decoded window ``[base, base + size)``."""

    base: int
    size: int

    def __post_init__(self) -> None:
        if self.base < 0 or self.size <= 0:
            raise InvalidArgument(f"bad window base={self.base:#x} size={self.size:#x}")

    @property
    def end(self) -> int:
        return self.base + self.size


def check_access(offset: int, size: int, value: int | None = None) -> None:
    if size not in ACCESS_SIZES:
        raise InvalidArgument(f"access size {size} not one of 1, 2, 4, 8", size=size)
    if offset < 0:
        raise InvalidArgument(f"negative offset {offset}", offset=offset)
    if value is not None and not 0 <= value < 1 << (8 * size):
        raise InvalidArgument(f"value {value:#x} does not fit {size} bytes", value=value)


class _Space:
    """Non-overlapping windows in one address space, sorted by base.

    Copy-on-write: registration builds new lists and swaps one tuple, so lookups
    on the data path need no lock and never see a half-updated table.
    """

    def __init__(self, name: str, limit: int | None) -> None:
        self.name = name
        self.limit = limit
        self.table: tuple[list[int], list[tuple[Window, MmioHandler]]] = ([], [])

    def add(self, window: Window, handler: MmioHandler) -> None:
        if self.limit is not None and window.end > self.limit:
            raise InvalidArgument(f"{self.name} window {window} beyond {self.limit:#x}")
        bases, windows = self.table
        i = bisect.bisect_left(bases, window.base)
        before = windows[i - 1][0] if i > 0 else None
        after = windows[i][0] if i < len(windows) else None
        if (before and before.end > window.base) or (after and after.base < window.end):
            raise InvalidArgument(
                f"{self.name} window [{window.base:#x}, {window.end:#x}) overlaps another",
                errno="EBUSY",
                base=window.base,
                size=window.size,
            )
        self.table = (
            [*bases[:i], window.base, *bases[i:]],
            [*windows[:i], (window, handler), *windows[i:]],
        )

    def remove(self, base: int) -> None:
        bases, windows = self.table
        i = bisect.bisect_left(bases, base)
        if i >= len(bases) or bases[i] != base:
            raise InvalidArgument(f"no {self.name} window at {base:#x}", errno="ENOENT")
        self.table = (bases[:i] + bases[i + 1 :], windows[:i] + windows[i + 1 :])

    def find(self, addr: int, size: int) -> tuple[MmioHandler, int] | None:
        bases, windows = self.table
        i = bisect.bisect_right(bases, addr) - 1
        if i < 0:
            return None
        window, handler = windows[i]
        if addr + size > window.end:
            return None
        return handler, addr - window.base


class IoBus:
    """MMIO and port-IO decode for the whole machine (thread-safe registration)."""

    def __init__(self, clock: FlushClock | None = None) -> None:
        self._lock = threading.Lock()
        #: Ticked by every MMIO (un)registration, for mappings that cache a window.
        self.clock = clock if clock is not None else FlushClock()
        self._mmio = _Space("mmio", None)
        self._io = _Space("ioport", MAX_IOPORTS)
        self.unclaimed = 0

    def register_mmio(self, base_paddr: int, size: int, handler: MmioHandler) -> None:
        with self._lock:
            self._mmio.add(Window(base_paddr, size), handler)
            self.clock.tick()

    def unregister_mmio(self, base_paddr: int) -> None:
        with self._lock:
            self._mmio.remove(base_paddr)
            self.clock.tick()

    # ``unregister`` in the API contract means the MMIO flavour.
    unregister = unregister_mmio

    def register_ioport(self, base: int, size: int, handler: MmioHandler) -> None:
        with self._lock:
            self._io.add(Window(base, size), handler)

    def unregister_ioport(self, base: int) -> None:
        with self._lock:
            self._io.remove(base)

    def mmio_read(self, paddr: int, size: int) -> int:
        check_access(paddr, size)
        hit = self._mmio.find(paddr, size)
        if hit is None:
            self.unclaimed += 1
            return (1 << (8 * size)) - 1
        handler, offset = hit
        return handler.read(offset, size)

    def mmio_write(self, paddr: int, size: int, value: int) -> None:
        check_access(paddr, size, value)
        hit = self._mmio.find(paddr, size)
        if hit is None:
            self.unclaimed += 1
            return
        handler, offset = hit
        handler.write(offset, size, value)

    def io_read(self, port: int, size: int) -> int:
        check_access(port, size)
        hit = self._io.find(port, size)
        if hit is None:
            self.unclaimed += 1
            return (1 << (8 * size)) - 1
        handler, offset = hit
        return handler.read(offset, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        check_access(port, size, value)
        hit = self._io.find(port, size)
        if hit is None:
            self.unclaimed += 1
            return
        handler, offset = hit
        handler.write(offset, size, value)

    def mmio_generation(self) -> object:
        """A token that changes whenever an MMIO window is (un)registered.

        The table is swapped as a whole on every change (copy-on-write), so its
        identity is the token: a caller caching :meth:`mmio_covering` compares it
        with ``is`` before every use and never talks to an unregistered device.
        """
        return self._mmio.table

    def mmio_covering(self, paddr: int, size: int) -> tuple[MmioHandler, int] | None:
        """The handler and its window's base if one window covers ``[paddr, paddr+size)``."""
        if size <= 0 or paddr < 0:
            return None
        hit = self._mmio.find(paddr, size)
        return None if hit is None else (hit[0], paddr - hit[1])

    def mmio_windows(self) -> list[Window]:
        with self._lock:
            return [w for w, _ in self._mmio.table[1]]
