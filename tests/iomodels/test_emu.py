"""The emulated path: an HVM guest's NVMe driver against QEMU's role in dom0.

Truth: the physical NVMe model's media (dom0's disk), the emulated device's
own config space, the ioreq ABI fields as the device model saw them, and the
trace: every register access of the guest is exactly one ioreq, handled once
by the device model.
"""

from __future__ import annotations

import logging

import pytest

from xenpci.abi import ioreq as abi
from xenpci.devices import nvme as hw
from xenpci.emu.device_model import EMU_SBDF, POST_PORT
from xenpci.guest.drivers.base import DriverError
from xenpci.hv import PAGE_SIZE
from xenpci.hv.ioreq import IoreqServer
from xenpci.toolstack.iomodels import IoModelsHost

from .test_pv_block import media

pytestmark = pytest.mark.timeout(60)


def test_emulated_nvme_reaches_dom0s_disk_one_ioreq_per_register_access(
    host: IoModelsHost,
) -> None:
    drv, dm = host.add_hvm_guest("hvm")
    domid = dm.domid
    # The guest found the emulated function through trapped config cycles.
    assert (drv.dev.vendor, drv.dev.device) == (hw.NVME_VENDOR, hw.NVME_DEVICE)
    assert drv.dev.sbdf == EMU_SBDF
    t = host.trace
    t.clear()
    data = bytes((i * 13) % 256 for i in range(16 * 512))
    drv.write_blocks(64, data)
    assert media(host, 64, 16) == data  # on the physical disk, through dom0's driver
    assert drv.read_blocks(64, 16) == data
    accesses = t.count("mmio_write", domid) + t.count("mmio_read", domid)
    assert accesses == 4  # SQ tail and CQ head doorbells, per command
    assert t.count("ioreq", domid) == accesses == t.count("dm_ioreq", 0)
    assert t.count("dm_inject_msi", 0) == 2  # one completion interrupt per command
    assert dm.nvme.core.disk_commands == 2
    assert dm.refused == 0 and dm.server.failures == 0


def test_post_code_write_goes_through_the_buffered_page(host: IoModelsHost) -> None:
    _, dm = host.add_hvm_guest("hvm")
    g = host.machine.hv.domain(dm.domid).hypercalls
    t = host.trace
    t.clear()
    for code in (0x12, 0x34, 0x56):
        g.ioport_write(POST_PORT, 1, code)
    # Buffered: the vCPU did not wait; the device model sees them when it drains.
    assert t.count("buf_ioreq", dm.domid) == 3 and t.count("ioreq", dm.domid) == 0
    g.ioport_read(POST_PORT, 1)  # a read is synchronous, and is served after the buffer
    assert dm.post_codes == [0x12, 0x34, 0x56]


def test_xen_refuses_a_malformed_access(
    host: IoModelsHost, caplog: pytest.LogCaptureFixture
) -> None:
    _, dm = host.add_hvm_guest("hvm")
    server: IoreqServer = dm.server
    caplog.set_level(logging.WARNING, "xenpci.hv.ioreq")
    before = server.sent
    assert server.send(abi.IOREQ_TYPE_COPY, dm.bar0, 3, abi.IOREQ_READ, 0) == (1 << 24) - 1
    assert server.send(abi.IOREQ_TYPE_COPY, dm.bar0, 4, 7, 0) == (1 << 32) - 1
    assert server.sent == before  # nothing reached the device model
    assert server.failures == 2
    assert len([r for r in caplog.records if "not forwarded" in r.getMessage()]) == 1


def test_one_command_moves_mdts_through_a_prp_list(host: IoModelsHost) -> None:
    # The guest driver's largest command: 2**MDTS pages, PRP1 + a PRP list (NVMe 1.4
    # 4.3); dom0's own driver serves it with one command on the physical disk.
    drv, dm = host.add_hvm_guest("hvm")
    limit = PAGE_SIZE << hw.MDTS
    data = bytes((i * 7 + i // 4096) % 256 for i in range(limit))
    before, dom0_before = drv.commands, host.disk.commands
    drv.write_blocks(8, data)
    assert drv.commands - before == 1
    assert host.disk.commands - dom0_before == 1
    assert media(host, 8, limit // 512) == data
    assert drv.read_blocks(8, limit // 512) == data
    assert drv.read_blocks(8 + 5, 3) == data[5 * 512 : 8 * 512]
    with pytest.raises(DriverError):
        drv.write_blocks(0, data + bytes(512))  # one block past MDTS: refused in the guest
    # A command past MDTS sent anyway gets the controller's own status.
    status = drv.submit_io(hw.NVM_READ, 0, limit // 512 + 1, drv.data[0].bus, drv.data[1].bus)
    assert status == hw.SC_INVALID_FIELD
    assert dm.nvme.core.disk_commands == 3  # the refused one never reached dom0's disk
