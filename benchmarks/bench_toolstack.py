"""Toolstack: hot-plug and unplug latency of one PCI device into a running guest.

A cycle is ``pci_attach`` until the backend is Connected again (libxl's keys,
the Reconfiguring -> Reconfigured -> Connected handshake through pciback and
pcifront, the guest's rescan) and ``pci_detach`` (the Closing handshake, key
deletion, revocation, reset). The floor, measured in the same run, is one
XenStore write + read round trip on the toolstack's own connection: the ratio
says how many such round trips a hot-plug costs. Most of a hot-plug is the
guest's rescan (pcifront probes all 256 devfns of its root, one op each),
not the toolstack: hence a target of at most 1000 round trips.
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

NVME = SBDF(0, 4, 0, 0)


def _xs_round_trip(xs: Any, n: int = 2000) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        xs.write("/bench/toolstack", str(i))
        xs.read("/bench/toolstack")
    return (time.perf_counter() - t0) / n


def run(cycles: int = 30) -> list[dict[str, Any]]:
    m = boot_machine(HostDescription())
    try:
        libxl = Libxl(m, m.xs, timeout=10.0)
        libxl.assignable_add(SBDF(0, 3, 0, 0))
        libxl.assignable_add(NVME)
        domid = libxl.domain_create(DomainConfig("bench", 16, pci=(parse_pci_spec("03:00.0"),)))
        lp.wait_for_backend_state(m.xs, domid)
        floor = _xs_round_trip(m.xs)
        attach: list[float] = []
        detach: list[float] = []
        spec = parse_pci_spec("04:00.0")
        for _ in range(cycles):
            t0 = time.perf_counter()
            libxl.pci_attach(domid, spec)
            lp.wait_for_backend_state(m.xs, domid)
            t1 = time.perf_counter()
            libxl.pci_detach(domid, spec)
            t2 = time.perf_counter()
            attach.append(t1 - t0)
            detach.append(t2 - t1)
        libxl.domain_destroy(domid)
    finally:
        m.shutdown()
    a, d = statistics.median(attach), statistics.median(detach)
    base = f"XenStore write+read round trip ({floor * 1e6:.0f} us)"
    return [
        {
            "name": "hot-plug (attach until Connected), median",
            "value": a * 1e3,
            "unit": "ms",
            "baseline": base,
            "ratio": a / floor,
            "target": "<= 1000 round trips",
        },
        {
            "name": "unplug (detach, keys compacted, reset), median",
            "value": d * 1e3,
            "unit": "ms",
            "baseline": base,
            "ratio": d / floor,
            "target": "<= 1000 round trips",
        },
    ]


if __name__ == "__main__":
    for fig in run():
        print(fig)
