"""A hostile HVM guest against the device model, through its ioreq pages.

The ioreq pages are frames of the guest's own memory here (the legacy
"magic" pages), so the guest can write anything into them and poke the
device model's event channels. Each malformed request is refused the way
the device model documents (the ioreq fails with all ones; buffered reads
and impossible pointers are dropped), logged once; dom0 goes on serving this
guest's real accesses and a PV guest's disk.
"""

from __future__ import annotations

import logging

import pytest

from tests.conftest import THREADED_MODEL_TIMEOUT
from xenpci.abi import ioreq as abi
from xenpci.emu.device_model import SYNC_RULES, TRACE_DM_REFUSED, XenDeviceModel
from xenpci.guest.drivers.nvme import NvmeDriver
from xenpci.hv import Hypercalls, MmioDenied, PermissionDenied
from xenpci.toolstack.iomodels import IoModelsHost

pytestmark = pytest.mark.timeout(60)


def still_works(host: IoModelsHost, drv: NvmeDriver) -> None:
    data = b"\x77" * 512
    drv.write_blocks(7, data)
    assert drv.read_blocks(7, 1) == data
    front = host.add_pv_guest("bystander", "/dev/nvme0n1,,xvda")
    front.write(9, b"\x66" * 512)
    assert front.read(9, 1) == b"\x66" * 512


def poke(host: IoModelsHost, dm: XenDeviceModel, port: int) -> None:
    """The guest notifies the device model itself, then the model has run once."""
    g = host.machine.hv.domain(dm.domid).hypercalls
    g.evtchn_send(port)
    # One real (synchronous) access: it is served after the poked work, in order.
    g.ioport_read(0x80, 1)


def answer(dm: XenDeviceModel, g: Hypercalls, slot: abi.ioreq) -> None:
    """Post the scribbled slot as the guest, wait for the device model's answer."""
    dm.server.answered.clear()
    slot.state = abi.STATE_IOREQ_READY
    g.evtchn_send(dm.server.vcpu_port)
    assert dm.server.answered.wait(THREADED_MODEL_TIMEOUT)
    assert slot.state == abi.STATE_IORESP_READY
    slot.state = abi.STATE_IOREQ_NONE


#: One scribble per refusal rule of the device model (each must break exactly that rule).
SCRIBBLES = {
    "bad-size": [{"size": 3}, {"size": 16}],
    "rep": [{"count": 2}, {"data_is_ptr": 1}],
    "bad-type": [{"type": 0x42}],
}


def test_scribbled_ioreq_slot_fails_and_is_logged_once(
    host: IoModelsHost, caplog: pytest.LogCaptureFixture
) -> None:
    drv, dm = host.add_hvm_guest("hvm")
    assert set(SCRIBBLES) == {rule.name for rule in SYNC_RULES}  # every row is attacked
    caplog.set_level(logging.WARNING, "xenpci.emu")
    g = host.machine.hv.domain(dm.domid).hypercalls
    slot = abi.shared_iopage.from_buffer(g.page(dm.server.ioreq_gfn)).vcpu_ioreq[0]
    t = host.trace
    handled = dm.handled
    for name, variants in SCRIBBLES.items():
        t.clear()
        for fields in variants:
            # A valid read of the controller's CAP register, then one field broken.
            slot.addr, slot.size, slot.count, slot.type = dm.bar0, 4, 1, abi.IOREQ_TYPE_COPY
            slot.dir, slot.data_is_ptr = abi.IOREQ_READ, 0
            for field, value in fields.items():
                setattr(slot, field, value)
            answer(dm, g, slot)
            assert slot.data == (1 << (8 * 4 if "size" not in fields else 64)) - 1
        reasons = [e.args["reason"] for e in t.events if e.kind == TRACE_DM_REFUSED]
        assert reasons == [name] * len(variants)
    assert dm.handled == handled  # no device saw any of them
    logged = [r for r in caplog.records if "device model" in r.getMessage()]
    assert len(logged) == len(SCRIBBLES)  # once per rule
    still_works(host, drv)


def test_buffered_read_and_wild_pointers_are_dropped(
    host: IoModelsHost, caplog: pytest.LogCaptureFixture
) -> None:
    drv, dm = host.add_hvm_guest("hvm")
    caplog.set_level(logging.WARNING, "xenpci.emu")
    g = host.machine.hv.domain(dm.domid).hypercalls
    assert dm.server.bufioreq_gfn is not None and dm.server.bufioreq_port is not None
    buf = abi.buffered_iopage.from_buffer(g.page(dm.server.bufioreq_gfn))
    # A "buffered" read aimed at the controller's enable register.
    w = buf.write_pointer
    e = buf.buf_ioreq[w % abi.IOREQ_BUFFER_SLOT_NUM]
    e.type, e.dir, e.size, e.addr, e.data = abi.IOREQ_TYPE_PIO, abi.IOREQ_READ, 2, 0x80, 0
    buf.write_pointer = w + 1
    poke(host, dm, dm.server.bufioreq_port)
    assert dm.post_codes == []
    # Pointers further apart than the ring: resynced, nothing replayed.
    buf.write_pointer = buf.read_pointer + 100_000
    poke(host, dm, dm.server.bufioreq_port)
    assert buf.read_pointer == buf.write_pointer
    reasons = {r.getMessage().split(": ", 1)[1] for r in caplog.records}
    assert "a buffered ioreq must be a write" in reasons
    assert any("out of range" in m for m in reasons)
    assert dm.refused == 2
    # Xen itself does not buffer onto a ring it finds corrupt-full; real writes still land.
    g.ioport_write(0x80, 1, 0x99)
    g.ioport_read(0x80, 1)
    assert dm.post_codes == [0x99]
    still_works(host, drv)


def test_another_guest_cannot_reach_the_emulated_device(host: IoModelsHost) -> None:
    _, dm = host.add_hvm_guest("hvm")
    other = host.add_pv_guest("other", "/dev/nvme0n1,,xvda")
    hc = other.hc
    with pytest.raises(MmioDenied):
        hc.mmio_map(dm.bar0 >> 12, 4)
    with pytest.raises(MmioDenied):
        hc.ioport_write(0xCF8, 4, 0x8000_2000)
    with pytest.raises(MmioDenied):
        hc.ioport_write(0x80, 1, 0x42)
    assert dm.post_codes == []
    # Nor can it map the HVM guest's ioreq page: only dom0 may map foreign frames.
    with pytest.raises(PermissionDenied):
        hc.foreign_map(dm.domid, dm.server.ioreq_gfn, False)
