"""Small helpers shared by the split-driver tests (set-up through libxl_pci)."""

from __future__ import annotations

from xenpci.guest.kernel import GuestKernel
from xenpci.pci.address import SBDF
from xenpci.pci.function import PciFunction
from xenpci.pciback.conf_space import DeviceOptions
from xenpci.pcifront.xenbus import Pcifront
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.machine import Machine


def boot_guest_with(
    m: Machine,
    functions: list[PciFunction],
    name: str = "guest",
    *,
    options: DeviceOptions | None = None,
    permissive: bool = False,
) -> tuple[int, GuestKernel, Pcifront]:
    """Put ``functions`` on the host, seize them, start a guest with them (as xl create)."""
    m.add_host_devices(functions)
    for fn in functions:
        m.pciback_bind(fn.sbdf, options)
        if permissive:
            m.pciback_set_permissive(fn.sbdf)
    domid = m.start_guest(name, 64 * 1024, paused=True)
    for fn in functions:
        lp.device_pci_add_xenstore(
            m.xs, domid, name, lp.PciBackendDevice(fn.sbdf, permissive=permissive), starting=True
        )
    m.unpause_guest(domid)
    kernel = m.guest(domid)
    front = kernel.wait_for_pcifront(5)
    assert front.wait_connected(1, 5), front.xenbus.history
    return domid, kernel, front


def sbdf(text: str) -> SBDF:
    return SBDF.parse(text)
