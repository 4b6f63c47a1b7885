"""The split driver end to end: toolstack keys -> pciback <-> pcifront -> guest PCI core.

Truth: the handshake timelines of the fact sheet (§1.11, §2.1, §3.5), the key
formats pciback writes (``vdev-N`` = ``%04x:%02x:%02x.%02x``, ``root-K`` =
``%04x:%02x``), and the host device's own config space.
"""

from __future__ import annotations

import pytest

from xenpci.abi.xenbus import XenbusState as S
from xenpci.devices import catalog
from xenpci.pci import regs
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.machine import Machine

from .helpers import boot_guest_with

pytestmark = pytest.mark.timeout(30)

BACKEND_CONNECT = [
    S.XenbusStateInitialising,
    S.XenbusStateInitWait,
    S.XenbusStateInitialised,
    S.XenbusStateConnected,
]
FRONTEND_CONNECT = [S.XenbusStateInitialising, S.XenbusStateInitialised, S.XenbusStateConnected]


def test_connect_handshake_and_conf_read(machine: Machine) -> None:
    nic = catalog.make("nic", "0000:03:00.0")
    domid, kernel, front = boot_guest_with(machine, list(nic))
    back = machine.pciback.wait_for_device(domid)
    assert back.wait_for_state(S.XenbusStateConnected, 5)
    assert back.xenbus.history == BACKEND_CONNECT
    assert front.xenbus.history == FRONTEND_CONNECT

    be = lp.read_dir(machine.xs, lp.backend_path(domid))
    fe = lp.read_dir(machine.xs, lp.frontend_path(domid))
    assert (be["state"], fe["state"]) == ("4", "4")
    # pciback's published keys, in Linux's formats (vpci: slot 0 of bus 0)
    assert be["vdev-0"] == "0000:00:00.00"
    assert be["state-0"] == "3"
    assert (be["root_num"], be["root-0"]) == ("1", "0000:00")
    # pcifront's keys
    assert fe["magic"] == "7"
    assert int(fe["pci-op-ref"]) >= 0 and int(fe["event-channel"]) > 0

    devs = list(kernel.pci.devices())
    assert [str(d.sbdf) for d in devs] == ["0000:00:00.0"]
    host = nic[0]
    guest = devs[0]
    assert guest.read_config(regs.PCI_VENDOR_ID, 2) == host.config.read(regs.PCI_VENDOR_ID, 2)
    assert guest.read_config(regs.PCI_DEVICE_ID, 2) == host.config.read(regs.PCI_DEVICE_ID, 2)
    assert guest.class_code == host.config.read(regs.PCI_CLASS_REVISION, 4) >> 8
    # BARs sized through pciback's virtual BARs equal the host's (addresses are host
    # physical in PV, as Linux pciback shows them)
    assert [(b.index, b.address, b.size) for b in guest.bars] == [
        (b.index, b.address, b.size) for b in host.bars if b.size
    ]
    assert back.stats.served > 256 and back.stats.errors == []
