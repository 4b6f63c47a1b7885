"""pciback: guest config reads through the op handler and the shared page.

Figure 1 times ``serve_shared_page`` answering a 4-byte ``conf_read`` of BAR0
(copy-once, field lookup, merge, write-back, clear the flag) against the raw
``PciFunction.config_read`` of the same register, measured in the same run.
Figure 2 times a whole-space guest view (1024 dword reads through
``config_read``) against the same reads straight from the host function.
"""

from __future__ import annotations

import ctypes
from typing import Any

from benchmarks.timing import time_per_call
from xenpci.abi import pciif
from xenpci.abi.pciif import xen_pci_sharedinfo
from xenpci.devices import catalog
from xenpci.pciback.conf_space import config_read
from xenpci.pciback.pci_stub import PciStub
from xenpci.pciback.pciback_ops import serve_shared_page
from xenpci.pciback.vpci import VpciBackend


class _NoMsi:
    def enable_msi(self, dev: Any, owner: int, nvec: int) -> int:
        return -38

    def disable_msi(self, dev: Any) -> None:
        pass

    def enable_msix(self, dev: Any, owner: int, entries: Any) -> int:
        return -38

    def disable_msix(self, dev: Any) -> None:
        pass

    def prepare_msix(self, dev: Any) -> int:
        return 0

    def release_msix(self, dev: Any) -> int:
        return 0

    def memory_decode(self, dev: Any, owner: int, enabled: bool) -> int:
        return 0


def run() -> list[dict[str, Any]]:
    (nic,) = catalog.make("nic")
    nic.assign_bar(0, 0xFE000000)
    stub = PciStub(platform=_NoMsi())
    psdev = stub.seize(nic)
    stub.get_pci_dev(nic.sbdf, 1)
    vpci = VpciBackend()
    vpci.add(psdev, 0)
    page = bytearray(4096)
    info = xen_pci_sharedinfo.from_buffer(page)
    info.op.cmd = pciif.XEN_PCI_OP_conf_read
    info.op.offset, info.op.size = 0x10, 4
    plat = _NoMsi()

    def one_op() -> None:
        info.flags = pciif.XEN_PCIF_active
        serve_shared_page(page, vpci, plat)

    def raw() -> None:
        nic.config_read(0x10, 4)

    t, b = time_per_call(one_op), time_per_call(raw)
    assert ctypes.sizeof(info) == 572
    dd = psdev.dev_data
    offsets = range(0, nic.config.size, 4)

    def view() -> None:
        for off in offsets:
            config_read(dd, off, 4)

    def host() -> None:
        for off in offsets:
            nic.config_read(off, 4)

    v, h = time_per_call(view), time_per_call(host)
    return [
        {
            "name": "conf_read op via shared page (BAR0)",
            "value": t * 1e6,
            "unit": "us",
            "baseline": f"PciFunction.config_read: {b * 1e6:.2f} us",
            "ratio": t / b,
            "target": "<= 100 (x the raw read)",
        },
        {
            "name": "guest view of a 4 KiB space (1024 dword reads)",
            "value": v * 1e3,
            "unit": "ms",
            "baseline": f"host reads: {h * 1e3:.2f} ms",
            "ratio": v / h,
            "target": "<= 30 (x the host reads)",
        },
    ]
