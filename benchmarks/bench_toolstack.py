"""Toolstack: hot-plug and unplug of one PCI device into a running guest.

A hot-plug is ``pci_attach`` until the backend is Connected again (libxl's keys,
the Reconfiguring -> Reconfigured -> Connected handshake through pciback and
pcifront, the guest's rescan); an unplug is ``pci_detach`` (the Closing
handshake, key deletion, revocation, reset).

What a hot-plug must cost is set by Linux, not by us: on Reconfigured,
pcifront rescans its root bus (``pcifront_rescan_root`` ->
``pcifront_scan_bus``), probing every devfn 0..255 it does not already hold
with one config read through the shared page, one backend round trip each.
The model keeps that scan (see ``xenpci.guest.pci_core``). So the hot-plug
figures are measured against that unavoidable scan, in the same run:

- pci ops per hot-plug, against the devfns the scan must probe. Above that
  floor are only the new device's own header reads (class, header type, BAR
  sizing), so the target is at most 1.25 times the floor.
- hot-plug latency, against the floor's pci ops at the pci-op round trip
  measured on this machine. Everything that is not the scan (libxl's
  transaction, the XenStore handshake, grants) may cost at most as much as
  the scan again: target at most 2.
- unplug has no scan (pcifront only removes the device), so it is measured
  against the XenStore write+read round trip: at most 1000 of them.

An earlier version held the hot-plug to "1000 XenStore round trips", which
the 256 pci ops of Linux's own scan alone exceed on a fast store (about 2000
round trips measured): the target was not one Linux could meet either.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from xenpci.pci.address import SBDF
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.host import HostDescription, boot_machine
from xenpci.toolstack.libxl import Libxl
from xenpci.toolstack.xlcfg import DomainConfig, parse_pci_spec

NIC = SBDF(0, 3, 0, 0)
NVME = SBDF(0, 4, 0, 0)
DEVFNS = 256  # pcifront_scan_bus: devfn 0..255 of each root


def _xs_round_trip(xs: Any, n: int = 2000) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        xs.write("/bench/toolstack", str(i))
        xs.read("/bench/toolstack")
    return (time.perf_counter() - t0) / n


def _pci_op_round_trip(front: Any, domain: int, bus: int, devfn: int, n: int = 2000) -> float:
    """One config read of a present device through pcifront's shared page."""
    t0 = time.perf_counter()
    for _ in range(n):
        front.read(domain, bus, devfn, 0, 4)
    return (time.perf_counter() - t0) / n


def run(cycles: int = 30) -> list[dict[str, Any]]:
    m = boot_machine(HostDescription())
    try:
        libxl = Libxl(m, m.xs, timeout=10.0)
        libxl.assignable_add(NIC)
        libxl.assignable_add(NVME)
        domid = libxl.domain_create(DomainConfig("bench", 16, pci=(parse_pci_spec("03:00.0"),)))
        lp.wait_for_backend_state(m.xs, domid)
        kernel = m.guest(domid)
        front = kernel.wait_for_pcifront()
        # The backend is Connected before the guest has scanned: wait for the guest's side.
        if not front.wait_connected(1, 10):
            raise RuntimeError("the guest never connected its pcifront")
        (present,) = kernel.pci.devices()
        floor_xs = _xs_round_trip(m.xs)
        op_rt = _pci_op_round_trip(front, present.bus.domain, present.bus.number, present.devfn)
        # The devfns the rescan must probe: all but the ones the guest already holds.
        scan_floor = DEVFNS - len(list(kernel.pci.devices()))
        attach: list[float] = []
        detach: list[float] = []
        ops: list[int] = []
        spec = parse_pci_spec("04:00.0")
        for _ in range(cycles):
            chan = front.chan
            assert chan is not None and kernel.pcifront is front  # one frontend throughout
            before = chan.ops
            t0 = time.perf_counter()
            libxl.pci_attach(domid, spec)
            lp.wait_for_backend_state(m.xs, domid)
            t1 = time.perf_counter()
            ops.append(chan.ops - before)
            libxl.pci_detach(domid, spec)
            t2 = time.perf_counter()
            attach.append(t1 - t0)
            detach.append(t2 - t1)
        libxl.domain_destroy(domid)
    finally:
        m.shutdown()
    a, d, n_ops = statistics.median(attach), statistics.median(detach), statistics.median(ops)
    scan_cost = scan_floor * op_rt
    xs_base = f"XenStore write+read round trip ({floor_xs * 1e6:.0f} us)"
    return [
        {
            "name": "hot-plug pci ops (guest rescan + new device's probe), median",
            "value": n_ops,
            "unit": "ops",
            "baseline": f"Linux pcifront_scan_bus: {scan_floor} devfn probes",
            "ratio": n_ops / scan_floor,
            "target": "<= 1.25x the scan",
        },
        {
            "name": "hot-plug (attach until Connected), median",
            "value": a * 1e3,
            "unit": "ms",
            "baseline": (
                f"the scan's {scan_floor} pci ops at {op_rt * 1e6:.0f} us "
                f"({scan_cost * 1e3:.1f} ms)"
            ),
            "ratio": a / scan_cost,
            "target": "<= 2x the scan",
        },
        {
            "name": "unplug (detach, keys compacted, reset), median",
            "value": d * 1e3,
            "unit": "ms",
            "baseline": xs_base,
            "ratio": d / floor_xs,
            "target": "<= 1000 round trips",
        },
    ]


if __name__ == "__main__":
    for fig in run():
        print(fig)
