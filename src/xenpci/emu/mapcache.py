"""The device model's view of an HVM guest's RAM: QEMU's ``hw/xen/xen-mapcache.c``.

An emulated device's DMA addresses are guest-physical addresses (no IOMMU
sits in front of an emulated device). QEMU maps guest frames on demand with
``xenforeignmemory_map`` and keeps the mappings in a cache, so the steady
state costs no hypercall; each first touch of a page is one
``foreign_map`` (traced by the hypervisor). Implements the device models'
:class:`~xenpci.devices.dma.DmaPort`.

Deliberate differences: one page per cache entry (QEMU maps 1 MiB buckets),
no eviction (the guests here are small).
"""

from __future__ import annotations

import threading

from xenpci.devices.errors import DmaFault
from xenpci.errors import XenpciError
from xenpci.hv import PAGE_SHIFT, PAGE_SIZE, Hypercalls


class MapCache:
    """Foreign mappings of one guest's frames, by gfn, made on first use."""

    def __init__(self, dm: Hypercalls, domid: int) -> None:
        self.dm = dm
        self.domid = domid
        self._maps: dict[int, memoryview] = {}
        self._lock = threading.Lock()

    @property
    def mapped(self) -> int:
        return len(self._maps)

    def page(self, gfn: int, *, write: bool) -> memoryview:
        view = self._maps.get(gfn)
        if view is None:
            with self._lock:
                view = self._maps.get(gfn)
                if view is None:
                    try:
                        view = self.dm.foreign_map(self.domid, gfn, False)
                    except XenpciError as e:
                        raise DmaFault(
                            gfn << PAGE_SHIFT, PAGE_SIZE, write=write, reason=str(e)
                        ) from None
                    self._maps[gfn] = view
        return view

    def _pieces(self, addr: int, n: int) -> list[tuple[int, int, int]]:
        if addr < 0 or n < 0:
            raise DmaFault(addr, n, write=False, reason="negative address or length")
        out = []
        end = addr + n
        while addr < end:
            off = addr & (PAGE_SIZE - 1)
            ln = min(PAGE_SIZE - off, end - addr)
            out.append((addr >> PAGE_SHIFT, off, ln))
            addr += ln
        return out

    def read(self, bus_addr: int, n: int) -> bytes:
        return b"".join(
            bytes(self.page(g, write=False)[o : o + ln]) for g, o, ln in self._pieces(bus_addr, n)
        )

    def write(self, bus_addr: int, data: bytes) -> None:
        pos = 0
        for g, o, ln in self._pieces(bus_addr, len(data)):
            self.page(g, write=True)[o : o + ln] = data[pos : pos + ln]
            pos += ln

    def invalidate(self) -> None:
        """``IOREQ_TYPE_INVALIDATE``: drop every mapping."""
        with self._lock:
            for view in self._maps.values():
                view.release()
            self._maps.clear()
