"""The device model of one HVM guest: QEMU's ioreq loop and its device dispatch.

Models the Xen glue of QEMU (``hw/xen/xen-hvm-common.c``): create an ioreq
server for the guest and claim the emulated devices' ranges
(``xen_map_io_section``, ``xen_map_pcidev``), map the shared and buffered
ioreq pages, bind the per-vCPU and buffered event channels, then on each
notification ``handle_buffered_iopage`` and ``cpu_get_ioreq`` ->
``handle_ioreq`` -> ``cpu_ioreq_pio`` / ``cpu_ioreq_move`` /
``cpu_ioreq_config`` -> answer in place (``STATE_IORESP_READY``) and notify
back. Interrupts of the emulated device are injected into the guest
(``xen_inject_msi``).

Everything read from the ioreq pages is validated before use: they are
guest frames here (see :mod:`xenpci.hv.ioreq`), so a hostile guest can write
anything into them. A malformed synchronous ioreq (size not 1/2/4/8, count
not 1, data given by pointer, unknown type) fails: it is answered with all
ones and no device sees it; a buffered entry that is a read, or buffered
pointers further apart than the ring, are dropped (the ring is resynced).
Each kind is logged once. QEMU calls ``hw_error`` (abort) on most of these;
the device model here keeps serving.

Deliberate differences: the emulated machine has only the NVMe controller
(QEMU's own IDs 1b36:0010 at 00:04.0, BAR0 at a fixed address) and the PC
POST-code port 0x80 (bufferable, as writes to it need no answer; the NVMe
BAR is not: on real Xen only the VGA aperture is buffered in practice, so every
doorbell write stays a synchronous round trip, as the comparison shows); the loop
runs on its own thread (QEMU's main loop), woken by dom0's upcall, or as a
lane of the machine's deterministic executor when it has one; an MSI is
injected as an event on the port the guest wrote in the MSI-X entry's data
(how PV-on-HVM guests receive MSIs as event channels), bound on first use.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from xenpci.abi import ioreq as abi
from xenpci.blkback.blkback import BlockDevice
from xenpci.devices import nvme as hw
from xenpci.devices.irq import Interrupt
from xenpci.emu.mapcache import MapCache
from xenpci.emu.nvme import EmulatedNvme
from xenpci.errors import XenpciError
from xenpci.hv.domain import Domain
from xenpci.hv.hypervisor import Hypervisor
from xenpci.hv.ioreq import IoreqServer
from xenpci.kthread import Kthread
from xenpci.pci.address import SBDF
from xenpci.trace import Kind

log = logging.getLogger("xenpci.emu")

#: Trace kinds (plain strings; see :mod:`xenpci.trace`).
TRACE_DM_IOREQ = Kind.DM_IOREQ
TRACE_DM_REFUSED = Kind.DM_IOREQ_REFUSED
TRACE_INJECT = Kind.DM_INJECT_MSI

EMU_SBDF = SBDF.parse("0000:00:04.0")
EMU_BAR0 = 0xF000_0000
POST_PORT = 0x80
_SIZES = frozenset({1, 2, 4, 8})
_BUF_SIZES = (1, 2, 4, 8)


class XenDeviceModel:
    """QEMU serving one HVM guest (see module doc)."""

    def __init__(
        self, hv: Hypervisor, guest: Domain, disk: BlockDevice, *, bar0: int = EMU_BAR0
    ) -> None:
        self.hv = hv
        self.guest = guest
        self.domid = guest.domid
        self.hc = hv.dom0.hypercalls
        self.trace = hv.trace
        self.server = IoreqServer(hv, guest, hv.dom0)
        self.mapcache = MapCache(self.hc, guest.domid)
        self.nvme = EmulatedNvme(EMU_SBDF, disk, dma=self.mapcache, raise_irq=self._inject)
        self.bar0 = bar0
        self.nvme.assign_bar(0, bar0)
        self.server.map_io_range(abi.IOREQ_TYPE_COPY, bar0, bar0 + hw.NVME_BAR_SIZE - 1)
        self.server.map_pcidev(EMU_SBDF.bus, EMU_SBDF.devfn)
        self.server.map_io_range(abi.IOREQ_TYPE_PIO, POST_PORT, POST_PORT, bufferable=True)
        self.post_codes: list[int] = []
        self.handled = 0
        self.refused = 0
        self._logged: set[str] = set()
        self._msi_ports: dict[int, int] = {}
        # Map the ioreq pages and bind the channels (xen_be_init / xen_map_ioreq_server).
        page = self.hc.foreign_map(guest.domid, self.server.ioreq_gfn, False)
        self._slot = abi.shared_iopage.from_buffer(page).vcpu_ioreq[0]
        assert self.server.bufioreq_gfn is not None and self.server.bufioreq_port is not None
        bufpage = self.hc.foreign_map(guest.domid, self.server.bufioreq_gfn, False)
        self._buf = abi.buffered_iopage.from_buffer(bufpage)
        self.vcpu_port = self.hc.evtchn_bind_interdomain(guest.domid, self.server.vcpu_port)
        self.buf_port = self.hc.evtchn_bind_interdomain(guest.domid, self.server.bufioreq_port)
        #: QEMU's main loop (deterministic mode: a lane of the machine's executor).
        self._main_loop = Kthread(f"qemu-dm-{self.domid}", self._main_loop_turn, hv.scheduler)
        self.hc.evtchn_set_handler(self.vcpu_port, self._kick)
        self.hc.evtchn_set_handler(self.buf_port, self._kick)

    # -- lifecycle -----------------------------------------------------------------
    @property
    def thread_ident(self) -> int | None:
        """The device model's thread (for its CPU clock); None on the executor."""
        return self._main_loop.thread_ident

    @property
    def task_cpu_s(self) -> float:
        """CPU seconds of the executor tasks (deterministic mode: no thread has a clock)."""
        return self._main_loop.task_cpu_s

    def stop(self) -> None:
        self._main_loop.stop()
        for port in (self.vcpu_port, self.buf_port, *self._msi_ports.values()):
            with contextlib.suppress(XenpciError):
                self.hc.evtchn_close(port)
        with contextlib.suppress(XenpciError):
            self.server.destroy()

    def _kick(self, _port: int) -> None:
        # dom0's vCPU: only wake the loop (it may wait for dom0's disk interrupt).
        self._main_loop.kick()

    def _main_loop_turn(self) -> None:
        """One turn of the main loop: the buffered page, then the vCPU's slot."""
        self.handle_buffered_iopage()
        self.cpu_handle_ioreq()

    # -- validation ---------------------------------------------------------------------
    def _refuse(self, reason: str, detail: str) -> None:
        self.refused += 1
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("d%d device model: %s", self.domid, detail)
        self.trace.record(TRACE_DM_REFUSED, 0, "dom0", domid=self.domid, reason=reason)

    # -- the synchronous slot ----------------------------------------------------------------
    def _check(self, req: IoreqCopy, rules: tuple[IoreqRule, ...]) -> bool:
        for rule in rules:
            if rule.refused(req):
                self._refuse(rule.name, rule.message(req))
                return False
        return True

    def cpu_handle_ioreq(self) -> None:
        """``cpu_get_ioreq`` + ``handle_ioreq``: one copy of the slot, checked, served."""
        slot = self._slot
        if slot.state != abi.STATE_IOREQ_READY:
            return  # nothing posted (or a spurious event)
        slot.state = abi.STATE_IOREQ_INPROCESS
        req = IoreqCopy.of(slot)  # read once: the guest may rewrite its page meanwhile
        ones = (1 << (8 * req.size)) - 1 if req.size in _SIZES else (1 << 64) - 1
        result = ones
        if self._check(req, SYNC_RULES):
            result = self.handle_ioreq(req.kind, req.addr, req.size, req.dir, req.data & ones)
        if req.dir == abi.IOREQ_READ:
            slot.data = result & ones
        slot.state = abi.STATE_IORESP_READY  # last, after the data (wmb)
        self.hc.evtchn_send(self.vcpu_port)

    def handle_ioreq(self, kind: int, addr: int, size: int, direction: int, data: int) -> int:
        """One valid ioreq: dispatch by type (:data:`HANDLERS`); returns the data read."""
        self.handled += 1
        self.trace.record(
            TRACE_DM_IOREQ,
            0,
            "dom0",
            domid=self.domid,
            type=abi.IOREQ_TYPE_NAMES.get(kind, str(kind)),
            addr=addr,
            size=size,
        )
        handler: Callable[[XenDeviceModel, int, int, bool, int], int] = HANDLERS[kind]
        try:
            return handler(self, addr, size, direction == abi.IOREQ_READ, data)
        except XenpciError as e:
            self._refuse("device-error", f"emulated device refused the access: {e}")
            return (1 << (8 * size)) - 1

    def cpu_ioreq_pio(self, port: int, size: int, read: bool, data: int) -> int:
        if port == POST_PORT and not read:
            self.post_codes.append(data)
        return (1 << (8 * size)) - 1

    def cpu_ioreq_move(self, addr: int, size: int, read: bool, data: int) -> int:
        off = addr - self.bar0
        if not 0 <= off <= hw.NVME_BAR_SIZE - size:
            return (1 << (8 * size)) - 1
        if read:
            return self.nvme.mmio_read(0, off, size)
        self.nvme.mmio_write(0, off, size, data)
        return 0

    def cpu_ioreq_config(self, addr: int, size: int, read: bool, data: int) -> int:
        bdf, reg = addr >> 32, addr & 0xFFFF_FFFF
        if bdf != (EMU_SBDF.bus << 8 | EMU_SBDF.devfn) or reg + size > 0x1000:
            return (1 << (8 * size)) - 1
        if read:
            return self.nvme.config_read(reg, size)
        self.nvme.config_write(reg, size, data)
        return 0

    def invalidate(self, _addr: int, _size: int, _read: bool, _data: int) -> int:
        self.mapcache.invalidate()
        return 0

    # -- the buffered ring ---------------------------------------------------------------
    def handle_buffered_iopage(self) -> None:
        buf = self._buf
        while True:
            rp, wp = int(buf.read_pointer), int(buf.write_pointer)
            if rp == wp:
                return
            if (wp - rp) & 0xFFFF_FFFF > abi.IOREQ_BUFFER_SLOT_NUM:
                self._refuse("buf-pointers", f"buffered ioreq pointers {rp}/{wp} out of range")
                buf.read_pointer = wp
                return
            entry = buf.buf_ioreq[rp % abi.IOREQ_BUFFER_SLOT_NUM]
            size = _BUF_SIZES[entry.size]
            slots = 2 if size == 8 else 1
            if slots == 2 and (wp - rp) & 0xFFFF_FFFF < 2:
                return  # the second half is not there yet
            value = int(entry.data)
            if slots == 2:
                value |= int(buf.buf_ioreq[(rp + 1) % abi.IOREQ_BUFFER_SLOT_NUM].data) << 32
            req = IoreqCopy(int(entry.type), int(entry.addr), size, int(entry.dir), value, 1, 0)
            buf.read_pointer = (rp + slots) & 0xFFFF_FFFF
            if self._check(req, BUFFERED_RULES):
                self.handle_ioreq(req.kind, req.addr, req.size, req.dir, req.data)

    # -- interrupts -------------------------------------------------------------------------
    def _inject(self, irq: Interrupt) -> None:
        """``xen_inject_msi``: the MSI-X message's data names the guest's event channel."""
        if irq.kind != "msix":
            return  # INTx/MSI are not wired in this machine
        port = irq.data
        local = self._msi_ports.get(port)
        try:
            if local is None:
                local = self.hc.evtchn_bind_interdomain(self.domid, port)
                self._msi_ports[port] = local
            self.trace.record(TRACE_INJECT, 0, "dom0", domid=self.domid, port=port)
            self.hc.evtchn_send(local)
        except XenpciError as e:
            self._refuse("inject", f"cannot inject MSI to port {port}: {e}")


@dataclass(frozen=True, slots=True)
class IoreqCopy:
    """The device model's private copy of one ioreq (taken once from the shared page)."""

    kind: int
    addr: int
    size: int
    dir: int
    data: int
    count: int
    data_is_ptr: int

    @classmethod
    def of(cls, r: abi.ioreq) -> IoreqCopy:
        return cls(
            int(r.type),
            int(r.addr),
            int(r.size),
            int(r.dir),
            int(r.data),
            int(r.count),
            int(r.data_is_ptr),
        )


@dataclass(frozen=True, slots=True)
class IoreqRule:
    """One reason to refuse an ioreq: a stable name (logged once), a test, a message."""

    name: str
    refused: Callable[[IoreqCopy], bool]
    message: Callable[[IoreqCopy], str]


#: Who serves each ioreq type (QEMU's ``handle_ioreq`` switch).
HANDLERS: dict[int, Callable[[XenDeviceModel, int, int, bool, int], int]] = {
    abi.IOREQ_TYPE_PIO: XenDeviceModel.cpu_ioreq_pio,
    abi.IOREQ_TYPE_COPY: XenDeviceModel.cpu_ioreq_move,
    abi.IOREQ_TYPE_PCI_CONFIG: XenDeviceModel.cpu_ioreq_config,
    abi.IOREQ_TYPE_INVALIDATE: XenDeviceModel.invalidate,
}

#: Checks of a synchronous ioreq, in order; the first that refuses fails it.
SYNC_RULES: tuple[IoreqRule, ...] = (
    IoreqRule("bad-size", lambda r: r.size not in _SIZES, lambda r: f"Invalid ioreq size {r.size}"),
    IoreqRule(
        "rep",
        lambda r: bool(r.data_is_ptr) or r.count != 1,
        lambda r: f"string/rep ioreqs (data_is_ptr {r.data_is_ptr}, count {r.count}) unsupported",
    ),
    IoreqRule(
        "bad-type", lambda r: r.kind not in HANDLERS, lambda r: f"Invalid ioreq type {r.kind:#x}"
    ),
)

#: Checks of a buffered entry (Xen only buffers port/MMIO writes).
BUFFERED_RULES: tuple[IoreqRule, ...] = (
    IoreqRule(
        "buffered-read",
        lambda r: r.dir != abi.IOREQ_WRITE,
        lambda _r: "a buffered ioreq must be a write",
    ),
    IoreqRule(
        "bad-type",
        lambda r: r.kind not in (abi.IOREQ_TYPE_PIO, abi.IOREQ_TYPE_COPY),
        lambda r: f"Invalid ioreq type {r.kind:#x}",
    ),
)
