"""The PV block path: blkfront in a guest, blkback in dom0, dom0's NVMe driver below.

Truth: the NVMe model's own media (what dom0's driver wrote through the
device), the libxl vbd layout, the whole XenBus state history of both ends,
and the trace's count of who did what.
"""

from __future__ import annotations

import pytest

from xenpci.abi.xenbus import XenbusState as S
from xenpci.devices.nvme import NvmeFunction
from xenpci.toolstack.iomodels import DOM0_NVME, IoModelsHost
from xenpci.toolstack.xldisk import backend_path, frontend_path, vbd_remove

pytestmark = pytest.mark.timeout(60)


def media(host: IoModelsHost, sector: int, count: int) -> bytes:
    fn = host.machine.host_function(DOM0_NVME)
    assert isinstance(fn, NvmeFunction)
    return b"".join(fn.core.blocks.get(s, bytes(512)) for s in range(sector, sector + count))


def sends(host: IoModelsHost, domid: int, port: int | None) -> int:
    """Event-channel sends by ``domid`` on ``port`` (other ports carry XenStore traffic)."""
    return sum(
        1
        for e in host.trace.events
        if e.kind == "evtchn_send" and e.domid == domid and e.args.get("port") == port
    )


def test_handshake_follows_libxl_layout_and_xenbus_states(host: IoModelsHost) -> None:
    front = host.add_pv_guest("pv", "/dev/nvme0n1,,xvda,rw")
    domid, devid = front.domid, front.devid
    assert devid == 51712  # xvda: (202 << 8) | 0
    xs = host.machine.xs
    be, fe = backend_path(0, domid, devid), frontend_path(domid, devid)
    assert xs.read(f"{fe}/backend").decode() == be
    assert xs.read(f"{be}/frontend").decode() == fe
    assert xs.read(f"{be}/params").decode() == "/dev/nvme0n1"
    ring_ref = int(xs.read(f"{fe}/ring-ref"))
    assert int(xs.read(f"{be}/sectors")) == front.sectors == host.disk.sectors
    back = host.blkback.wait_for_device(domid, devid)
    assert back.wait_for_state(S.XenbusStateConnected)
    assert back.xenbus.history == [
        S.XenbusStateInitialising,
        S.XenbusStateInitWait,
        S.XenbusStateInitialised,
        S.XenbusStateConnected,
    ]
    assert front.xenbus.history == [
        S.XenbusStateInitialising,
        S.XenbusStateInitialised,
        S.XenbusStateConnected,
    ]
    # dom0 mapped exactly the page the frontend granted.
    assert back.mapping is not None and back.mapping.gref == ring_ref


def test_data_reaches_the_physical_disk_through_dom0(host: IoModelsHost) -> None:
    front = host.add_pv_guest("pv", "/dev/nvme0n1,,xvda")
    data = bytes((i * 31 + 7) % 251 for i in range(300 * 512))  # 300 sectors: 4 requests
    host.trace.clear()
    front.write(1000, data)
    assert media(host, 1000, 300) == data  # the device itself holds it
    assert front.read(1000, 300) == data
    t = host.trace
    # 300 sectors = 38 pages: 4 requests of <= 11 pages each way; one grant per page.
    assert t.count("blkif_request") == 8
    assert t.count("gnttab_map_grant_ref", 0) == t.count("gnttab_unmap_grant_ref", 0) == 2 * 38
    assert t.count("gnttab_grant_foreign_access", front.domid) == 2 * 38
    # One batch each way: the frontend notifies once per push, not per request;
    # blkback at most once per response (only when the frontend re-armed rsp_event).
    assert sends(host, front.domid, front.evtchn) == 2 == front.notifications
    back = host.blkback.devices[(front.domid, front.devid)]
    assert 1 <= sends(host, 0, back.evtchn) <= 8
    assert front.read(999, 1) == bytes(512)  # never written: zeros from the device


def test_read_only_disk_refuses_writes(host: IoModelsHost) -> None:
    front = host.add_pv_guest("pv", "/dev/nvme0n1,,xvdb,r")
    assert front.readonly
    assert host.machine.xs.read(f"{backend_path(0, front.domid, front.devid)}/mode").decode() == "r"


def test_vbd_removal_tears_the_backend_down(host: IoModelsHost) -> None:
    front = host.add_pv_guest("pv", "/dev/nvme0n1,,xvda")
    back = host.blkback.wait_for_device(front.domid, front.devid)
    assert back.thread_ident is not None
    vbd_remove(host.machine.xs, front.domid, front.devid)
    assert host.blkback.wait(lambda d: (front.domid, front.devid) not in d.devices)
    assert back.thread_ident is None and back.evtchn is None and back.mapping is None
    held = [m for m in host.machine.hv.grants.mappings(0) if m.gref == front.ring_gref]
    assert all(m.granter != front.domid for m in held)
