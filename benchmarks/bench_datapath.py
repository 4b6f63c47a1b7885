"""Data path: MMIO and DMA straight between guest and device, against routing via dom0.

Direct is what passthrough gives: the guest's MMIO mapping of the BAR goes to
the device (the hypervisor checks the grant per access), and the device's DMA
goes through the IOMMU into guest memory. Routed is what an emulated device
costs: every guest access traps and becomes an event-channel round trip to a
device model in dom0, which performs it (QEMU's ioreq path); for DMA the
guest grants its buffer page and dom0 maps it, copies, and unmaps per page
(the way a dom0 backend moves data). Both run on the same machine model in
the same run; the floor is a raw copy of the same bytes into the same frames.
"""

from __future__ import annotations

import statistics
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from xenpci.devices import nic as hw
from xenpci.devices.nic import NicFunction
from xenpci.hv import PAGE_SHIFT, PAGE_SIZE, Hypervisor
from xenpci.pci.address import SBDF

BAR0 = 0xC000_0000
REG = hw.E1000_RDBAH  # a plain register: no side effects, so the device cost is flat
MMIO_DIRECT_OPS = 5_000  # write+read pairs per trial
MMIO_ROUTED_OPS = 500
MMIO_TRIALS = 9
DMA_PAGES = 64  # 256 KiB per transfer
DMA_ROUNDS = 40
ROUTED_DMA_ROUNDS = 3


def _best(fn: Callable[[], float], repeat: int = 3) -> float:
    return min(fn() for _ in range(repeat))


SCRATCH = 0xC010_0000


class _Scratch:
    """A flat register window: the cheapest device there can be, so a figure is the path's."""

    def __init__(self, size: int) -> None:
        self.mem = bytearray(size)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.mem[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.mem[offset : offset + size] = value.to_bytes(size, "little")


class _Rig:
    """A hypervisor, a guest granted the NIC's BAR0, the NIC assigned to the guest."""

    def __init__(self) -> None:
        self.hv = Hypervisor(ram_frames=1 << 15, dom0_memory_kib=4096)
        self.nic = NicFunction(SBDF.parse("0000:03:00.0"))
        self.nic.assign_bar(0, BAR0)
        self.hv.iobus.register_mmio(BAR0, hw.NIC_MMIO_SIZE, self.nic.bar_handler(0))
        self.nic.config_write(0x04, 2, 0x6)
        self.guest = self.hv.create_domain("guest", 16 * 1024)
        d0 = self.hv.dom0.hypercalls
        d0.iomem_permission(
            self.guest.domid, BAR0 >> PAGE_SHIFT, hw.NIC_MMIO_SIZE // PAGE_SIZE, True
        )
        d0.assign_device(self.guest.domid, self.nic.sbdf.sbdf_int)
        self.scratch = _Scratch(PAGE_SIZE)
        self.hv.iobus.register_mmio(SCRATCH, PAGE_SIZE, self.scratch)
        d0.iomem_permission(self.guest.domid, SCRATCH >> PAGE_SHIFT, 1, True)
        self.dma = self.hv.iommu.dma_port(self.nic.sbdf.sbdf_int)

    def close(self) -> None:
        self.hv.shutdown()


# -- MMIO ------------------------------------------------------------------------------
def _pages(base: int) -> int:
    return hw.NIC_MMIO_SIZE // PAGE_SIZE if base == BAR0 else 1


def _reg(base: int) -> int:
    return REG if base == BAR0 else 0x10


def mmio_direct(rig: _Rig, n: int, base: int = BAR0) -> float:
    m = rig.guest.hypercalls.mmio_map(base >> PAGE_SHIFT, _pages(base))
    reg = _reg(base)
    t = time.perf_counter()
    for i in range(n):
        m.write(reg, 4, i & 0xFFFF)
        m.read(reg, 4)
    return (time.perf_counter() - t) / (2 * n)


def mmio_handler_floor(rig: _Rig, n: int) -> float:
    """The device's own cost: calling its BAR handler with no hypervisor in between."""
    h = rig.nic.bar_handler(0)
    t = time.perf_counter()
    for i in range(n):
        h.write(REG, 4, i & 0xFFFF)
        h.read(REG, 4)
    return (time.perf_counter() - t) / (2 * n)


class RoutedMmio:
    """An emulated device's MMIO path: each access is a request in a shared page, an
    event to dom0, dom0's device model performs it on the BAR, an event back."""

    def __init__(self, rig: _Rig, base: int = BAR0) -> None:
        g, d0 = rig.guest.hypercalls, rig.hv.dom0.hypercalls
        self._g, self._d0 = g, d0
        gfn = g.alloc_page()
        gref = g.gnttab_grant_foreign_access(0, gfn, False)
        self._gport = gport = g.evtchn_alloc_unbound(0)
        self._mapping = mapping = d0.gnttab_map_grant_ref(rig.guest.domid, gref, False)
        self._dport = dport = d0.evtchn_bind_interdomain(rig.guest.domid, gport)
        shared, req = mapping.view, struct.Struct("<BIIQ")  # is_write, offset, size, value
        model = d0.mmio_map(base >> PAGE_SHIFT, _pages(base))  # dom0 reaches the BAR itself
        self.reg = _reg(base)
        self._done = threading.Semaphore(0)

        def on_dom0(_port: int) -> None:
            is_write, off, size, value = req.unpack_from(shared, 0)
            if is_write:
                model.write(off, size, value)
            else:
                req.pack_into(shared, 0, 0, off, size, model.read(off, size))
            d0.evtchn_send(dport)

        d0.evtchn_set_handler(dport, on_dom0)
        g.evtchn_set_handler(gport, lambda _p: self._done.release())
        self._page, self._req = g.page(gfn), req

    def access(self, is_write: int, value: int) -> int:
        self._req.pack_into(self._page, 0, is_write, self.reg, 4, value)
        self._g.evtchn_send(self._gport)
        self._done.acquire()
        return int(self._req.unpack_from(self._page, 0)[3])

    def close(self) -> None:
        self._d0.evtchn_set_handler(self._dport, None)
        self._d0.gnttab_unmap_grant_ref(self._mapping.handle)


def mmio_routed(rig: _Rig, n: int, base: int = BAR0, path: RoutedMmio | None = None) -> float:
    """Seconds per routed access over ``n`` write+read pairs."""
    own = path is None
    p = path if path is not None else RoutedMmio(rig, base)
    try:
        t = time.perf_counter()
        for i in range(n):
            p.access(1, i & 0xFFFF)
            p.access(0, 0)
        return (time.perf_counter() - t) / (2 * n)
    finally:
        if own:
            p.close()


def mmio_compare(rig: _Rig, base: int) -> tuple[float, float, list[float]]:
    """Direct and routed seconds per access, each the median of ``MMIO_TRIALS`` batches
    measured interleaved (direct, routed, direct, ...) so a slow spell of the machine
    hits both sides; also each trial's own routed/direct ratio, to show the spread."""
    path = RoutedMmio(rig, base)
    direct: list[float] = []
    routed: list[float] = []
    try:
        mmio_direct(rig, 1000, base)  # warm both paths up
        mmio_routed(rig, 50, base, path)
        for _ in range(MMIO_TRIALS):
            direct.append(mmio_direct(rig, MMIO_DIRECT_OPS, base))
            routed.append(mmio_routed(rig, MMIO_ROUTED_OPS, base, path))
    finally:
        path.close()
    ratios = sorted(r / d for d, r in zip(direct, routed, strict=True))
    return statistics.median(direct), statistics.median(routed), ratios


# -- DMA -------------------------------------------------------------------------------
def _buffer(rig: _Rig) -> list[int]:
    g = rig.guest.hypercalls
    return [g.alloc_page() for _ in range(DMA_PAGES)]


def dma_direct(rig: _Rig, gfns: list[int], payload: bytes) -> float:
    """The device writes then reads the buffer by DMA (bus address = guest address)."""
    # The guest's pages are handed out in order, so the buffer is contiguous in gfn space.
    bus = gfns[0] << PAGE_SHIFT
    assert gfns == list(range(gfns[0], gfns[0] + DMA_PAGES))
    t = time.perf_counter()
    for _ in range(DMA_ROUNDS):
        rig.dma.write(bus, payload)
        got = rig.dma.read(bus, len(payload))
    assert got == payload
    return (time.perf_counter() - t) / (2 * DMA_ROUNDS)


def dma_floor(rig: _Rig, gfns: list[int], payload: bytes) -> float:
    """Copy the same bytes into and out of the same frames, with nothing in between."""
    frames = [rig.guest.p2m.frame(gfn) for gfn in gfns]
    t = time.perf_counter()
    for _ in range(DMA_ROUNDS):
        for i, f in enumerate(frames):
            f[:] = payload[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]
        got = b"".join(frames)
    assert got == payload
    return (time.perf_counter() - t) / (2 * DMA_ROUNDS)


def dma_routed(rig: _Rig, gfns: list[int], payload: bytes) -> float:
    """An emulated device: per page, an event to dom0, which maps the grant, copies, unmaps."""
    g, d0 = rig.guest.hypercalls, rig.hv.dom0.hypercalls
    grefs = [g.gnttab_grant_foreign_access(0, gfn, False) for gfn in gfns]
    gport = g.evtchn_alloc_unbound(0)
    dport = d0.evtchn_bind_interdomain(rig.guest.domid, gport)
    done = threading.Semaphore(0)
    job: dict[str, Any] = {}
    device_side = bytearray(len(payload))  # the emulated device's own buffer

    def on_dom0(_port: int) -> None:
        i, write = job["page"], job["write"]
        m = d0.gnttab_map_grant_ref(rig.guest.domid, grefs[i], False)
        span = slice(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)
        if write:
            m.view[:] = device_side[span]
        else:
            device_side[span] = m.view
        d0.gnttab_unmap_grant_ref(m.handle)
        d0.evtchn_send(dport)

    d0.evtchn_set_handler(dport, on_dom0)
    g.evtchn_set_handler(gport, lambda _p: done.release())
    device_side[:] = payload
    t = time.perf_counter()
    for _ in range(ROUTED_DMA_ROUNDS):
        for write in (True, False):
            for i in range(DMA_PAGES):
                job["page"], job["write"] = i, write
                g.evtchn_send(gport)
                done.acquire()
    elapsed = (time.perf_counter() - t) / (2 * ROUTED_DMA_ROUNDS)
    assert bytes(device_side) == payload
    d0.evtchn_set_handler(dport, None)
    return elapsed


def run() -> list[dict[str, Any]]:
    rig = _Rig()
    try:
        direct, routed, _ = mmio_compare(rig, BAR0)
        floor = _best(lambda: mmio_handler_floor(rig, MMIO_DIRECT_OPS))
        s_direct, s_routed, s_ratios = mmio_compare(rig, SCRATCH)
        gfns = _buffer(rig)
        payload = bytes(range(256)) * (DMA_PAGES * PAGE_SIZE // 256)
        d_direct = _best(lambda: dma_direct(rig, gfns, payload))
        d_floor = _best(lambda: dma_floor(rig, gfns, payload))
        d_routed = _best(lambda: dma_routed(rig, gfns, payload), repeat=2)
    finally:
        rig.close()
    mb = len(payload) / 1e6
    return [
        {
            "name": "MMIO access, direct (guest mapping -> flat register window)",
            "value": round(1 / s_direct),
            "unit": "accesses/s",
            "baseline": f"routed via dom0 (event round trip per access): {1 / s_routed:,.0f}/s"
            f"; medians of {MMIO_TRIALS} interleaved trials, per-trial ratios "
            f"{s_ratios[0]:.0f}-{s_ratios[-1]:.0f}x",
            "ratio": round(s_routed / s_direct, 1),
            "target": ">= 50x routed",
        },
        {
            "name": "MMIO access to the NIC model, direct",
            "value": round(1 / direct),
            "unit": "accesses/s",
            "baseline": f"routed via dom0: {1 / routed:,.0f}/s; the NIC model's own handler: "
            f"{floor * 1e9:,.0f} ns/access",
            "ratio": round(routed / direct, 1),
            "target": "report (device model cost dominates)",
        },
        {
            "name": f"DMA throughput, direct ({DMA_PAGES * 4} KiB transfers via the IOMMU)",
            "value": round(mb / d_direct),
            "unit": "MB/s",
            "baseline": f"routed via dom0 (event + grant map per page): {mb / d_routed:,.0f} MB/s",
            "ratio": round(d_routed / d_direct, 1),
            "target": ">= 50x routed",
        },
        {
            "name": "DMA throughput, direct vs raw memory copy",
            "value": round(mb / d_direct),
            "unit": "MB/s",
            "baseline": f"raw copy into and out of the same frames: {mb / d_floor:,.0f} MB/s",
            "ratio": round(d_direct / d_floor, 2),
            "target": "<= 3x floor",
        },
    ]


if __name__ == "__main__":
    for fig in run():
        print(fig)
