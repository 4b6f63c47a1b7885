"""HVM ioreq servers: a guest's trapped port, MMIO and PCI-config accesses, forwarded.

Models ``xen/common/ioreq.c`` and the x86 glue around it: an ioreq server is
created for one guest on behalf of a device model in dom0
(``XEN_DMOP_create_ioreq_server``), claims port ranges, MMIO ranges and PCI
devices (``XEN_DMOP_map_io_range_to_ioreq_server``), and gets every guest
access inside them: ``ioreq_server_select`` picks the server,
``ioreq_send`` fills the vCPU's ``struct ioreq`` in the shared page
(``STATE_IOREQ_READY`` last), notifies the vCPU's event channel and blocks the
vCPU until the device model answers (``STATE_IORESP_READY``; ``data`` for a
read). A write to a range registered as bufferable goes to the buffered page
instead when ``ioreq_send_buffered``'s rules allow it (a write, ``data`` not a
pointer, ``count`` 1, ``addr`` within 20 bits, room on the ring; 8-byte
writes take two slots) and the vCPU does not wait. PCI config space is reached
through ports 0xCF8/0xCFC: Xen latches CF8 itself and forwards CFC accesses as
``IOREQ_TYPE_PCI_CONFIG`` with ``addr = sbdf << 32 | register``.

An access whose size or direction is not one Xen forwards fails: the guest
gets all ones for a read (the write is dropped), nothing is sent, and the
first such access per server is logged. So does an answer that comes back in
a state other than ``STATE_IORESP_READY`` (Xen prints "Weird HVM iorequest
state" and crashes the domain; here only the access fails).

Deliberate differences: one vCPU; the ioreq pages are two frames of the
guest's own memory (the legacy ``HVM_PARAM_IOREQ_PFN``/``BUFIOREQ_PFN``
"magic" pages, which a guest can scribble on -- a device model must validate
what it reads), not Xen-heap pages acquired with ``acquire_resource``;
emulated ranges are decoded by the machine's I/O bus (a window the guest is
given iomem/ioport access to, whose handler is this server) instead of by a
second-stage page fault; the CF8 latch is per server, so one HVM guest per
machine; a vCPU waits for the answer with a (long) timeout, where Xen waits
forever (a deadline on the virtual clock with the deterministic executor).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenpci.abi import ioreq as abi
from xenpci.hv.errors import HvError, PermissionDenied
from xenpci.trace import Kind

if TYPE_CHECKING:
    from xenpci.hv.domain import Domain
    from xenpci.hv.hypervisor import Hypervisor

log = logging.getLogger("xenpci.hv.ioreq")

#: Trace kinds (plain strings; see :mod:`xenpci.trace`).
TRACE_IOREQ = Kind.IOREQ
TRACE_BUF_IOREQ = Kind.BUF_IOREQ
TRACE_IOREQ_FAILED = Kind.IOREQ_FAILED
TRACE_NOTIFY = Kind.EVTCHN_SEND

PCI_CONFIG_PORT = 0xCF8
PCI_DATA_PORT = 0xCFC
#: How long a vCPU waits for its device model (Xen: forever).
IOREQ_TIMEOUT = 30.0
_BUF_ADDR_LIMIT = 1 << 20


class IoreqFailed(HvError):
    """The access could not be forwarded, or the answer was malformed."""

    default_errno = "EIO"


@dataclass(frozen=True, slots=True)
class _Range:
    kind: int  # IOREQ_TYPE_PIO or IOREQ_TYPE_COPY
    first: int
    last: int
    bufferable: bool


class _Window:
    """The I/O-bus handler of one claimed range: every access becomes an ioreq."""

    def __init__(self, server: IoreqServer, rng: _Range) -> None:
        self.server = server
        self.rng = rng

    def read(self, offset: int, size: int) -> int:
        return self.server.send(self.rng.kind, self.rng.first + offset, size, abi.IOREQ_READ, 0)

    def write(self, offset: int, size: int, value: int) -> None:
        addr = self.rng.first + offset
        if self.rng.bufferable and self.server.send_buffered(self.rng.kind, addr, size, value):
            return
        self.server.send(self.rng.kind, addr, size, abi.IOREQ_WRITE, value)


class _PciConfigPorts:
    """Ports 0xCF8..0xCFF: the CF8 latch in Xen, CFC accesses forwarded as PCI_CONFIG."""

    def __init__(self, server: IoreqServer) -> None:
        self.server = server
        self.cf8 = 0

    def _target(self, offset: int) -> int | None:
        cf8 = self.cf8
        if not cf8 & 0x8000_0000:
            return None
        sbdf = (cf8 >> 8) & 0xFFFF  # bus, device, function; segment 0
        if sbdf not in self.server.pci_devices:
            return None
        reg = (cf8 & 0xFC) | ((cf8 >> 16) & 0xF00) | (offset - 4)
        return sbdf << 32 | reg

    def read(self, offset: int, size: int) -> int:
        if offset < 4:
            return (self.cf8 >> (8 * offset)) & ((1 << (8 * size)) - 1)
        addr = self._target(offset)
        if addr is None:
            return (1 << (8 * size)) - 1  # no device claimed: master abort
        return self.server.send(abi.IOREQ_TYPE_PCI_CONFIG, addr, size, abi.IOREQ_READ, 0)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 4:
            if offset == 0 and size == 4:
                self.cf8 = value
            return
        addr = self._target(offset)
        if addr is not None:
            self.server.send(abi.IOREQ_TYPE_PCI_CONFIG, addr, size, abi.IOREQ_WRITE, value)


class IoreqServer:
    """One ioreq server of one HVM guest, served by a device model in ``dm``."""

    def __init__(self, hv: Hypervisor, guest: Domain, dm: Domain, *, bufioreq: bool = True) -> None:
        if not dm.privileged:
            raise PermissionDenied(
                f"d{dm.domid} may not create an ioreq server", op="create_ioreq_server"
            )
        self.hv = hv
        self.guest = guest
        self.dm = dm
        self.domid = guest.domid
        self.ioreq_gfn = guest.p2m.alloc_page()
        self.bufioreq_gfn = guest.p2m.alloc_page() if bufioreq else None
        # Xen's own mappings of the two pages (the device model maps them too).
        self._slot = abi.shared_iopage.from_buffer(guest.p2m.frame(self.ioreq_gfn)).vcpu_ioreq[0]
        self._buf = (
            abi.buffered_iopage.from_buffer(guest.p2m.frame(self.bufioreq_gfn))
            if self.bufioreq_gfn is not None
            else None
        )
        # Per-vCPU channel (and the buffered one): guest-side ports whose consumer is Xen.
        self.vcpu_port = hv.evtchn.alloc_unbound(guest.domid, dm.domid)
        self.bufioreq_port = hv.evtchn.alloc_unbound(guest.domid, dm.domid) if bufioreq else None
        self._slot.vp_eport = self.vcpu_port
        #: Set each time the device model notifies the vCPU's channel (an answer).
        self.answered = threading.Event()
        hv.evtchn.set_handler(guest.domid, self.vcpu_port, self._on_answer)
        self._lock = threading.Lock()  # one vCPU: one ioreq in flight
        self.ranges: list[_Range] = []
        self.pci_devices: set[int] = set()
        self._cf8: _PciConfigPorts | None = None
        self.failures = 0
        self._logged: set[str] = set()
        self.sent = 0
        self.buffered = 0

    # -- XEN_DMOP_map_io_range_to_ioreq_server / map_pcidev ----------------------------
    def map_io_range(self, kind: int, first: int, last: int, *, bufferable: bool = False) -> None:
        """Claim ports or MMIO bytes ``[first, last]``; the guest may access them (trapped)."""
        rng = _Range(kind, first, last, bufferable)
        size = last - first + 1
        if kind == abi.IOREQ_TYPE_PIO:
            self.hv.iobus.register_ioport(first, size, _Window(self, rng))
            self.hv.permissions.set_ioports(self.domid, first, last, True)
        elif kind == abi.IOREQ_TYPE_COPY:
            self.hv.iobus.register_mmio(first, size, _Window(self, rng))
            self.hv.permissions.set_iomem(self.domid, first >> 12, last >> 12, True)
        else:
            raise IoreqFailed(f"range type {kind} is not PIO or COPY", op="map_io_range")
        self.ranges.append(rng)

    def map_pcidev(self, bus: int, devfn: int) -> None:
        """Claim a PCI function's config space (segment 0)."""
        if self._cf8 is None:
            self._cf8 = _PciConfigPorts(self)
            self.hv.iobus.register_ioport(PCI_CONFIG_PORT, 8, self._cf8)
            self.hv.permissions.set_ioports(self.domid, PCI_CONFIG_PORT, PCI_CONFIG_PORT + 7, True)
        self.pci_devices.add(bus << 8 | devfn)

    def destroy(self) -> None:
        """``XEN_DMOP_destroy_ioreq_server``: drop the windows and the channels."""
        for rng in self.ranges:
            if rng.kind == abi.IOREQ_TYPE_PIO:
                self.hv.iobus.unregister_ioport(rng.first)
            else:
                self.hv.iobus.unregister_mmio(rng.first)
        self.ranges.clear()
        if self._cf8 is not None:
            self.hv.iobus.unregister_ioport(PCI_CONFIG_PORT)
            self._cf8 = None
        self.answered.set()

    # -- the vCPU side ---------------------------------------------------------------------
    def _fail(self, reason: str, detail: str) -> None:
        self.failures += 1
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("d%d ioreq server: %s", self.domid, detail)
        self.hv.trace.record(TRACE_IOREQ_FAILED, self.domid, "hypervisor", reason=reason)

    def _notify(self, port: int) -> None:
        to_domid, to_port = self.hv.evtchn.send(self.domid, port)
        self.hv.trace.record(
            TRACE_NOTIFY, self.domid, "hypervisor", port=port, to_domid=to_domid, to_port=to_port
        )

    def _on_answer(self, _port: int) -> None:
        # The device model's notification, on the guest's vCPU: wake the waiting access.
        self.answered.set()

    def send(self, kind: int, addr: int, size: int, direction: int, data: int) -> int:
        """``ioreq_send`` + the vCPU's wait: forward one access, return the data read."""
        ones = (1 << (8 * size)) - 1 if 0 < size <= 8 else (1 << 64) - 1
        if size not in abi.BUF_IOREQ_SIZE_CODE or direction not in (
            abi.IOREQ_READ,
            abi.IOREQ_WRITE,
        ):
            self._fail("bad-access", f"access of size {size}, direction {direction} not forwarded")
            return ones
        with self._lock:
            slot = self._slot
            if slot.state != abi.STATE_IOREQ_NONE:
                # The guest scribbled on its magic page; Xen's copy of the state rules.
                slot.state = abi.STATE_IOREQ_NONE
            slot.addr = addr
            slot.data = data if direction == abi.IOREQ_WRITE else 0
            slot.count = 1
            slot.size = size
            slot.dir = direction
            slot.df = 0
            slot.data_is_ptr = 0
            slot.type = kind
            self.answered.clear()
            slot.state = abi.STATE_IOREQ_READY  # last: the request is complete
            self.sent += 1
            self.hv.trace.record(
                TRACE_IOREQ,
                self.domid,
                "hypervisor",
                type=abi.IOREQ_TYPE_NAMES.get(kind, str(kind)),
                addr=addr,
                size=size,
                dir="read" if direction == abi.IOREQ_READ else "write",
            )
            self._notify(self.vcpu_port)
            executor = self.hv.scheduler
            if executor is not None:  # the vCPU blocks: the machine runs until the answer
                answered = executor.wait_until(self.answered.is_set, IOREQ_TIMEOUT)
            else:
                answered = self.answered.wait(IOREQ_TIMEOUT)
            if not answered:
                self._fail("no-answer", "the device model did not answer")
                return ones
            state = slot.state
            value = int(slot.data)
            slot.state = abi.STATE_IOREQ_NONE
        if state != abi.STATE_IORESP_READY:
            self._fail("weird-state", f"Weird HVM iorequest state {state}")
            return ones
        return value & ones if direction == abi.IOREQ_READ else 0

    def send_buffered(self, kind: int, addr: int, size: int, value: int) -> bool:
        """``ioreq_send_buffered``: queue a write on the buffered page; False = send it
        synchronously instead (Xen's "return 0" cases)."""
        buf = self._buf
        if buf is None or self.bufioreq_port is None:
            return False
        code = abi.BUF_IOREQ_SIZE_CODE.get(size)
        if code is None or addr >= _BUF_ADDR_LIMIT:
            return False
        slots = 2 if size == 8 else 1
        with self._lock:
            used = (buf.write_pointer - buf.read_pointer) & 0xFFFF_FFFF
            if used > abi.IOREQ_BUFFER_SLOT_NUM - slots:
                return False  # full (or the guest corrupted the pointers): go synchronous
            w = buf.write_pointer
            first = buf.buf_ioreq[w % abi.IOREQ_BUFFER_SLOT_NUM]
            first.type, first.pad, first.dir, first.size = kind, 0, abi.IOREQ_WRITE, code
            first.addr = addr
            first.data = value & 0xFFFF_FFFF
            if slots == 2:
                second = buf.buf_ioreq[(w + 1) % abi.IOREQ_BUFFER_SLOT_NUM]
                second.type, second.pad, second.dir, second.size = kind, 0, abi.IOREQ_WRITE, code
                second.addr = addr
                second.data = value >> 32
            buf.write_pointer = (w + slots) & 0xFFFF_FFFF  # after the slots (wmb)
            self.buffered += 1
            self.hv.trace.record(TRACE_BUF_IOREQ, self.domid, "hypervisor", addr=addr, size=size)
            self._notify(self.bufioreq_port)
        return True
