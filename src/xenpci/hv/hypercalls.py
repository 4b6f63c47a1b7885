"""A domain's only door to the machine: its hypercall handle, bound to its domid.

Models the hypercall entry points a PV kernel uses (``HYPERVISOR_grant_table_op``,
``HYPERVISOR_event_channel_op``, ``HYPERVISOR_domctl``, ``HYPERVISOR_physdev_op``,
``HYPERVISOR_mmu_update`` for MMIO mappings) as one method each, named after the
real sub-op. The caller's identity comes from the handle, never from an
argument, so a guest cannot act as another domain. Privileged sub-ops check
that the caller is privileged (``XSM``'s ``xsm_domctl`` default policy: dom0
only) and raise ``PermissionDenied`` naming the call and the caller.

Every call is recorded in the trace with its arguments, its result or its
errno; ``path`` is ``dom0`` for calls made by the privileged domain (the
control plane) and ``direct`` for a guest's own calls (its data plane).
MMIO and port accesses are counted, not stored (see ``xenpci.trace``).

MMIO mappings model the data plane of passthrough: accesses go straight to
the device unless the frame is an MSI-X table/PBA frame dom0 protected with
``prepare_msix`` (``mmio_ro_ranges``; mediated by :mod:`xenpci.hv.msixtbl`,
traced as ``mmio_mediated``) or a BAR whose memory decode the owner turned
off (``memory_decode``, vPCI's ``modify_bars``; traced as ``mmio_unmapped``).
``bus_address`` is the PV kernel's ``xen_phys_to_bus``.

Deliberate differences: guest memory is read and written through the handle
(there are no guest page tables); ``mmio_map`` re-checks the capability on
every access, so revoking ``iomem_permission`` cuts an existing mapping off at
once (Xen relies on the toolstack/guest to tear such mappings down). The
check is cached per mapping, with the device window behind it, like a TLB
entry: stamped with the hypervisor's ``FlushClock`` (``flushtlb``), which every
change of permissions, MSI-X protection, decode state or I/O-bus windows ticks,
so the next access after any such change walks the full checks again. A plain
access on a current stamp is counted in a lock-free per-domain trace ``Tally``
(read back exactly by ``Trace.count``) and goes straight to the device.
``evtchn_send`` is traced through a pre-bound ``Trace.recorder``, its record
taken before the receiver's upcall is posted.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from xenpci.hv.errors import (
    HvError,
    InvalidArgument,
    MmioDenied,
    NoSuchDomain,
    PermissionDenied,
)
from xenpci.hv.event_channel import Handler, PortInfo
from xenpci.hv.grant_table import GrantMapping
from xenpci.hv.iobus import ACCESS_SIZES, MmioHandler, check_access
from xenpci.hv.memory import PAGE_SHIFT, PAGE_SIZE
from xenpci.hv.msixtbl import MsixRegion
from xenpci.hv.permissions import check_iomem, check_ioports

if TYPE_CHECKING:
    from xenpci.hv.domain import Domain
    from xenpci.hv.hypervisor import Hypervisor

P = ParamSpec("P")
R = TypeVar("R")


def hypercall(
    fn: Callable[Concatenate[Hypercalls, P], R],
) -> Callable[Concatenate[Hypercalls, P], R]:
    """Trace one call: its name, caller, named arguments and result or errno."""
    names = list(inspect.signature(fn).parameters)[1:]
    kind = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: Hypercalls, /, *args: P.args, **kwargs: P.kwargs) -> R:
        trace = self._hv.trace
        if not trace.enabled:
            return fn(self, *args, **kwargs)
        rec: dict[str, Any] = dict(zip(names, args, strict=False))
        rec.update(kwargs)
        try:
            result = fn(self, *args, **kwargs)
        except HvError as exc:
            trace.record(kind, self.domid, self._path, **rec, error=exc.errno)
            raise
        if isinstance(result, int) and not isinstance(result, bool):
            rec["result"] = result
        elif isinstance(result, GrantMapping):
            rec["handle"] = result.handle
        elif hasattr(result, "domid"):
            rec["result"] = result.domid  # a new Domain
        trace.record(kind, self.domid, self._path, **rec)
        return result

    return wrapper


#: Per access size, the first value that no longer fits (``value < limit``).
_VALUE_LIMIT = {size: 1 << (8 * size) for size in ACCESS_SIZES}


class MmioMapping:
    """A domain's mapping of machine MMIO frames (a BAR), used straight from the guest."""

    __slots__ = (
        "_base",
        "_bus",
        "_clock",
        "_delta",
        "_handler",
        "_hc",
        "_key",
        "_maxoff",
        "_plain",
        "_reads",
        "_size",
        "_stamp",
        "_writes",
        "first_mfn",
        "gfn",
        "mapped",
        "nr_mfns",
    )

    def __init__(self, hc: Hypercalls, first_mfn: int, nr_mfns: int, gfn: int | None) -> None:
        self._hc = hc
        self.first_mfn = first_mfn
        self.nr_mfns = nr_mfns
        self.gfn = gfn
        self.mapped = True
        self._base = first_mfn << PAGE_SHIFT
        self._size = nr_mfns * PAGE_SIZE
        # The checked answer: valid while no permission, MSI-X protection or decode state
        # changed since the whole mapping was last found plain (permitted, unprotected,
        # decoded). Any change sends accesses back through the full per-access checks.
        self._key: tuple[int, int, int] = (-1, -1, -1)
        self._plain = False
        # The device window behind the whole mapping, valid for one I/O-bus table
        # (token, handler, offset of the mapping in the window); None: use the bus.
        self._bus: tuple[object, MmioHandler | None, int] = (None, None, 0)
        # The fast path (the cached translation, see ``flushtlb``): usable while
        # ``_stamp is _clock.now``; then the whole mapping is plain, ``_handler``
        # answers it at ``_delta + offset``, and accesses are counted in the tallies.
        hv = hc._hv
        self._clock = hv.flush_clock
        self._stamp: object = None
        self._handler: MmioHandler | None = None
        self._delta = 0
        # Per valid access size, the last offset it may start at (bounds and size in one).
        self._maxoff = {size: self._size - size for size in ACCESS_SIZES}
        self._reads = hv.trace.tally("mmio_read", hc.domid)
        self._writes = hv.trace.tally("mmio_write", hc.domid)

    def _refill(self) -> bool:
        """Walk the checks again; re-arm the fast path if the mapping is plain, has one
        device window and both access kinds are count-only. Return whether it is armed."""
        stamp = self._clock.now  # read before checking: a change meanwhile makes it stale
        self._stamp = None
        if not self.mapped or self._reads is None or self._writes is None:
            return False
        if not self._is_plain():
            return False
        window = self._window()
        if window is None:
            return False
        self._handler, self._delta = window
        self._stamp = stamp
        return True

    def _is_plain(self) -> bool:
        hv = self._hc._hv
        key = (hv.permissions.generation, hv.msixtbl.generation, hv.decode_generation)
        if key != self._key:
            last = self.first_mfn + self.nr_mfns - 1
            off = hv.decode_off.get(self._hc.domid)
            self._plain = (
                hv.permissions.iomem_permitted(self._hc.domid, self.first_mfn, last)
                and not hv.msixtbl.ro_frames.overlaps(self.first_mfn, last)
                and (off is None or not off.overlaps(self.first_mfn, last))
            )
            self._key = key
        return self._plain

    def _window(self) -> tuple[MmioHandler, int] | None:
        """The one device window covering the whole mapping, for the current bus table
        (the access was bounds-checked against the mapping, so the window covers it);
        None when no single window does (the bus then decodes each access)."""
        iobus = self._hc._hv.iobus
        token = iobus.mmio_generation()
        bus = self._bus
        if bus[0] is not token:
            hit = iobus.mmio_covering(self._base, self._size)
            bus = self._bus = (token, *hit) if hit is not None else (token, None, 0)
        handler = bus[1]
        return None if handler is None else (handler, self._base - bus[2])

    @property
    def size(self) -> int:
        return self.nr_mfns * PAGE_SIZE

    def _paddr(self, offset: int, size: int) -> int:
        if not self.mapped:
            raise MmioDenied("MMIO mapping was unmapped", op="mmio", domid=self._hc.domid)
        check_access(offset, size)
        if offset + size > self.size:
            raise MmioDenied(
                f"offset {offset:#x}+{size} outside the {self.size:#x}-byte mapping",
                errno="EINVAL",
                op="mmio",
                domid=self._hc.domid,
                offset=offset,
            )
        paddr = (self.first_mfn << PAGE_SHIFT) + offset
        mfn = paddr >> PAGE_SHIFT
        hv = self._hc._hv
        if not hv.permissions.iomem_permitted(self._hc.domid, mfn, mfn):
            raise MmioDenied(
                f"d{self._hc.domid} lost access to mfn {mfn:#x}",
                op="mmio",
                domid=self._hc.domid,
                mfn=mfn,
            )
        return paddr

    def read(self, offset: int, size: int) -> int:
        # Fast path: the cached translation is current and the access is in bounds.
        if (self._stamp is self._clock.now or self._refill()) and 0 <= offset <= self._maxoff.get(
            size, -1
        ):
            self._reads.n += 1  # type: ignore[union-attr]  # armed only with tallies
            return self._handler.read(self._delta + offset, size)  # type: ignore[union-attr]
        return self._read_checked(offset, size)

    def _read_checked(self, offset: int, size: int) -> int:
        hv = self._hc._hv
        if (
            self.mapped
            and size in ACCESS_SIZES
            and 0 <= offset <= self._size - size
            and self._is_plain()
        ):
            paddr = self._base + offset
            hv.trace.record("mmio_read", self._hc.domid, "direct", paddr=paddr, size=size)
            window = self._window()
            if window is not None:
                return window[0].read(window[1] + offset, size)
            return hv.iobus.mmio_read(paddr, size)
        paddr = self._paddr(offset, size)
        if hv.decode_off and self._decode_off(paddr):
            return (1 << (8 * size)) - 1
        if hv.msixtbl.is_protected(paddr >> PAGE_SHIFT):
            # An MSI-X table/PBA frame: trapped to the hypervisor, which lets reads pass.
            hv.trace.record(
                "mmio_mediated", self._hc.domid, "hypervisor", op="read", paddr=paddr, size=size
            )
            return hv.iobus.mmio_read(paddr, size)
        hv.trace.record("mmio_read", self._hc.domid, "direct", paddr=paddr, size=size)
        return hv.iobus.mmio_read(paddr, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if (
            (self._stamp is self._clock.now or self._refill())
            and 0 <= offset <= self._maxoff.get(size, -1)
            and 0 <= value < _VALUE_LIMIT[size]  # size is valid: it has a max offset
        ):
            self._writes.n += 1  # type: ignore[union-attr]  # armed only with tallies
            self._handler.write(self._delta + offset, size, value)  # type: ignore[union-attr]
            return
        self._write_checked(offset, size, value)

    def _write_checked(self, offset: int, size: int, value: int) -> None:
        hv = self._hc._hv
        if (
            self.mapped
            and size in ACCESS_SIZES
            and 0 <= offset <= self._size - size
            and 0 <= value < 1 << (8 * size)
            and self._is_plain()
        ):
            paddr = self._base + offset
            hv.trace.record("mmio_write", self._hc.domid, "direct", paddr=paddr, size=size)
            window = self._window()
            if window is not None:
                window[0].write(window[1] + offset, size, value)
                return
            hv.iobus.mmio_write(paddr, size, value)
            return
        paddr = self._paddr(offset, size)
        check_access(offset, size, value)
        if hv.decode_off and self._decode_off(paddr):
            return
        if hv.msixtbl.is_protected(paddr >> PAGE_SHIFT):
            self._mediated_write(paddr, size, value)
            return
        hv.trace.record("mmio_write", self._hc.domid, "direct", paddr=paddr, size=size)
        hv.iobus.mmio_write(paddr, size, value)

    def _decode_off(self, paddr: int) -> bool:
        # vPCI modify_bars: with the guest's memory decode off the BAR is not in its
        # p2m; reads float to all-ones and writes go nowhere (counted, not stored).
        hv = self._hc._hv
        frames = hv.decode_off.get(self._hc.domid)
        if frames is None or (paddr >> PAGE_SHIFT) not in frames:
            return False
        hv.trace.record("mmio_unmapped", self._hc.domid, "hypervisor", paddr=paddr)
        return True

    def _mediated_write(self, paddr: int, size: int, value: int) -> None:
        # vPCI msix_write: the guest may toggle Mask; address/data writes are dropped.
        hv = self._hc._hv
        verdict, out = hv.msixtbl.filter_write(
            paddr, size, value, lambda: hv.iobus.mmio_read(paddr, size)
        )
        hv.trace.record(
            "mmio_mediated",
            self._hc.domid,
            "hypervisor",
            op="write",
            paddr=paddr,
            size=size,
            verdict=verdict,
        )
        if verdict == "dropped":
            # arch/x86/mm.c mmio_ro_emulated_write
            hv.console.gprintk(
                self._hc.domid,
                # PRI_mfn is "05lx"
                f"ignoring write to R/O MMIO 0x{paddr >> PAGE_SHIFT:05x}"
                f"{paddr & (PAGE_SIZE - 1):03x} len {size}",
            )
        if out is not None:
            hv.iobus.mmio_write(paddr, size, out)

    def unmap(self) -> None:
        if self.mapped:
            self.mapped = False
            self._stamp = None
            self._hc._hv.trace.record(
                "mmio_unmap",
                self._hc.domid,
                self._hc._path,
                first_mfn=self.first_mfn,
                nr_mfns=self.nr_mfns,
            )


class Hypercalls:
    """The hypercall handle of one domain."""

    def __init__(self, hv: Hypervisor, domain: Domain) -> None:
        self._hv = hv
        self._dom = domain
        self.domid = domain.domid
        self._path = "dom0" if domain.privileged else "direct"
        self._trace = hv.trace
        #: ``evtchn_send(port)``, the hottest hypercall: bound once (one Python frame per
        #: event), traced by hand through a pre-bound recorder, its record naming the
        #: end that was signalled and taken before the receiver's upcall is posted.
        self.evtchn_send: Callable[[int], None] = hv.evtchn.sender(
            self.domid,
            hv.trace.recorder(
                "evtchn_send", self.domid, self._path, ("port", "to_domid", "to_port")
            ),
            self._send_refused,
        )

    # -- helpers ----------------------------------------------------------
    def _privileged(self, op: str) -> None:
        if not self._dom.privileged:
            raise PermissionDenied(f"d{self.domid} is not privileged", op=op, domid=self.domid)

    def _alive(self, op: str) -> None:
        if self._dom.dying:
            raise NoSuchDomain(f"d{self.domid} is dying", op=op, domid=self.domid)

    # -- memory -----------------------------------------------------------
    def read(self, gpaddr: int, n: int) -> bytes:
        """Read the domain's own memory at guest-physical ``gpaddr``."""
        self._alive("read")
        return self._dom.p2m.read(gpaddr, n)

    def write(self, gpaddr: int, data: bytes) -> None:
        self._alive("write")
        self._dom.p2m.write(gpaddr, data)

    def page(self, gfn: int) -> memoryview:
        """A live view of one of the domain's own frames."""
        self._alive("page")
        return memoryview(self._dom.p2m.frame(gfn))

    @hypercall
    def alloc_page(self) -> int:
        self._alive("alloc_page")
        return self._dom.p2m.alloc_page()

    @hypercall
    def free_page(self, gfn: int) -> None:
        self._alive("free_page")
        self._dom.p2m.free_page(gfn)

    # -- grant tables -----------------------------------------------------
    @hypercall
    def gnttab_grant_foreign_access(self, domid: int, gfn: int, readonly: bool) -> int:
        self._alive("gnttab_grant_foreign_access")
        return self._hv.grants.grant(self.domid, domid, gfn, readonly)

    @hypercall
    def gnttab_end_foreign_access(self, gref: int) -> None:
        self._hv.grants.end_access(self.domid, gref)

    @hypercall
    def gnttab_map_grant_ref(self, granter: int, gref: int, readonly: bool) -> GrantMapping:
        self._alive("gnttab_map_grant_ref")
        return self._hv.grants.map(self.domid, granter, gref, readonly)

    @hypercall
    def gnttab_unmap_grant_ref(self, handle: int) -> None:
        self._hv.grants.unmap(self.domid, handle)

    # -- event channels ---------------------------------------------------
    @hypercall
    def evtchn_alloc_unbound(self, remote_domid: int) -> int:
        return self._hv.evtchn.alloc_unbound(self.domid, remote_domid)

    @hypercall
    def evtchn_bind_interdomain(self, remote_domid: int, remote_port: int) -> int:
        return self._hv.evtchn.bind_interdomain(self.domid, remote_domid, remote_port)

    def _send_refused(self, port: int, exc: HvError) -> None:
        """``evtchn_send``'s record of a refused send (see ``self.evtchn_send``)."""
        self._trace.record("evtchn_send", self.domid, self._path, port=port, error=exc.errno)

    @hypercall
    def evtchn_close(self, port: int) -> None:
        self._hv.evtchn.close(self.domid, port)

    @hypercall
    def evtchn_mask(self, port: int) -> None:
        self._hv.evtchn.mask(self.domid, port)

    @hypercall
    def evtchn_unmask(self, port: int) -> None:
        self._hv.evtchn.unmask(self.domid, port)

    def evtchn_pending(self, port: int) -> bool:
        # A read of the shared-info pending bitmap, not a hypercall: untraced.
        return self._hv.evtchn.pending(self.domid, port)

    def evtchn_clear_pending(self, port: int) -> bool:
        return self._hv.evtchn.clear_pending(self.domid, port)

    def evtchn_status(self, port: int) -> PortInfo:
        return self._hv.evtchn.status(self.domid, port)

    def evtchn_set_handler(self, port: int, callback: Handler | None) -> None:
        """Install the kernel's handler for ``port``; it runs on this domain's vCPU."""
        self._hv.evtchn.set_handler(self.domid, port, callback)

    @hypercall
    def evtchn_bind_pirq(self, pirq: int) -> int:
        self._hv.check_pirq_bindable(self.domid, pirq)
        return self._hv.evtchn.bind_pirq(self.domid, pirq)

    # -- privileged (domctl / physdev) -----------------------------------
    @hypercall
    def domctl_createdomain(self, name: str, memory_kib: int, domid: int | None = None) -> Domain:
        self._privileged("domctl_createdomain")
        return self._hv._create_domain(name, memory_kib, domid)

    @hypercall
    def domctl_destroydomain(self, domid: int) -> None:
        self._privileged("domctl_destroydomain")
        self._hv._destroy_domain(domid)

    @hypercall
    def domctl_pausedomain(self, domid: int) -> None:
        """``XEN_DOMCTL_pausedomain``: one more controller pause; returns with the
        vCPU off the CPU. A domain cannot pause itself (``EINVAL``)."""
        op = "domctl_pausedomain"
        self._privileged(op)
        target = self._hv._target(domid, op, self.domid)
        if target is self._dom:
            raise InvalidArgument("a domain cannot pause itself", op=op, domid=self.domid)
        target.pause_by_systemcontroller()

    @hypercall
    def domctl_unpausedomain(self, domid: int) -> None:
        """``XEN_DOMCTL_unpausedomain``: one controller pause less (``EINVAL`` if none);
        the last lets the vCPU run what was queued for it."""
        op = "domctl_unpausedomain"
        self._privileged(op)
        self._hv._target(domid, op, self.domid).unpause_by_systemcontroller()

    @hypercall
    def iomem_permission(self, domid: int, first_mfn: int, nr_mfns: int, allow: bool) -> None:
        self._privileged("iomem_permission")
        self._hv._iomem_permission(self.domid, domid, first_mfn, nr_mfns, allow)

    @hypercall
    def ioport_permission(self, domid: int, first_port: int, nr_ports: int, allow: bool) -> None:
        self._privileged("ioport_permission")
        self._hv._ioport_permission(self.domid, domid, first_port, nr_ports, allow)

    @hypercall
    def irq_permission(self, domid: int, pirq: int, allow: bool) -> None:
        self._privileged("irq_permission")
        self._hv._irq_permission(self.domid, domid, pirq, allow)

    @hypercall
    def assign_device(self, domid: int, sbdf: int) -> None:
        self._privileged("assign_device")
        self._hv.domain(domid)
        self._hv.iommu.assign(domid, sbdf)

    @hypercall
    def deassign_device(self, domid: int, sbdf: int) -> None:
        self._privileged("deassign_device")
        self._hv.domain(domid)
        self._hv.iommu.deassign(domid, sbdf)

    @hypercall
    def map_pirq(self, domid: int, source: int | str) -> int:
        self._privileged("map_pirq")
        return self._hv._map_pirq(domid, source)

    @hypercall
    def unmap_pirq(self, domid: int, pirq: int) -> None:
        self._privileged("unmap_pirq")
        self._hv._unmap_pirq(domid, pirq)

    @hypercall
    def prepare_msix(
        self, sbdf: int, table_paddr: int, table_size: int, pba_paddr: int, pba_size: int
    ) -> None:
        """``PHYSDEVOP_prepare_msix``: protect a device's MSI-X table and PBA frames."""
        self._privileged("prepare_msix")
        self._hv.msixtbl.prepare(MsixRegion(sbdf, table_paddr, table_size, pba_paddr, pba_size))

    @hypercall
    def memory_decode(self, domid: int, first_mfn: int, nr_mfns: int, enabled: bool) -> None:
        """The owner's view of a BAR's memory decode changed: map or unmap its frames.

        What vPCI's ``cmd_write``/``modify_bars`` do inside Xen; here the
        component that sees the guest's COMMAND write (pciback in dom0) reports
        it. Frames must be ones ``domid`` was granted.
        """
        self._privileged("memory_decode")
        self._hv._memory_decode(domid, first_mfn, nr_mfns, enabled)

    @hypercall
    def release_msix(self, sbdf: int) -> None:
        """``PHYSDEVOP_release_msix``: lift the protection (the device left pciback)."""
        self._privileged("release_msix")
        self._hv.msixtbl.release(sbdf)

    @hypercall
    def foreign_map(self, domid: int, gfn: int, readonly: bool) -> memoryview:
        """``xenforeignmemory_map`` (privcmd ``IOCTL_PRIVCMD_MMAPBATCH_V2``): map a frame
        of another domain's RAM, as a device model maps an HVM guest's memory.
        Privileged (XSM's default policy: dom0 only)."""
        op = "foreign_map"
        self._privileged(op)
        view = memoryview(self._hv._target(domid, op, self.domid).p2m.frame(gfn))
        return view.toreadonly() if readonly else view

    # -- data path --------------------------------------------------------
    def bus_address(self, gpaddr: int) -> int:
        """The bus address a device must be given to reach ``gpaddr`` of this domain.

        A PV kernel's ``phys_to_dma`` (``xen_phys_to_bus``): with an IOMMU the
        device's context translates guest frames (see :mod:`xenpci.hv.iommu`),
        without one the bus address is the machine address. A read of the
        domain's own p2m, so not a hypercall and not traced.
        """
        self._alive("bus_address")
        if self._hv.iommu.enabled:
            return gpaddr
        if gpaddr < 0:
            raise InvalidArgument(f"negative address {gpaddr:#x}", op="bus_address")
        gfn, off = gpaddr >> PAGE_SHIFT, gpaddr & (PAGE_SIZE - 1)
        return (self._dom.p2m.mfn(gfn) << PAGE_SHIFT) | off

    @hypercall
    def mmio_map(self, first_mfn: int, nr_mfns: int, gfn_hint: int | None = None) -> MmioMapping:
        last = check_iomem(first_mfn, nr_mfns)
        if not self._hv.permissions.iomem_permitted(self.domid, first_mfn, last):
            # arch/x86/mm.c: "non-privileged attempt to map MMIO space".
            self._hv.console.gprintk(
                self.domid,
                f"d{self.domid} non-privileged attempt to map MMIO space {first_mfn:05x}",
            )
            raise MmioDenied(
                f"d{self.domid} may not map mfns {first_mfn:#x}..{last:#x}",
                op="mmio_map",
                domid=self.domid,
                first_mfn=first_mfn,
                nr_mfns=nr_mfns,
            )
        return MmioMapping(self, first_mfn, nr_mfns, gfn_hint)

    def _ioport_check(self, port: int, size: int, op: str) -> None:
        check_access(port, size)
        last = check_ioports(port, size)
        if not self._hv.permissions.ioports_permitted(self.domid, port, last):
            self._hv.console.gprintk(
                self.domid, f"d{self.domid} refused access to I/O ports {port:#x}-{last:#x}"
            )
            raise MmioDenied(
                f"d{self.domid} may not access ports {port:#x}..{last:#x}",
                op=op,
                domid=self.domid,
                port=port,
                size=size,
            )

    def ioport_read(self, port: int, size: int) -> int:
        self._ioport_check(port, size, "ioport_read")
        self._hv.trace.record("ioport_read", self.domid, "direct", port=port, size=size)
        return self._hv.iobus.io_read(port, size)

    def ioport_write(self, port: int, size: int, value: int) -> None:
        self._ioport_check(port, size, "ioport_write")
        check_access(port, size, value)
        self._hv.trace.record("ioport_write", self.domid, "direct", port=port, size=size)
        self._hv.iobus.io_write(port, size, value)

    # -- queries ----------------------------------------------------------
    def iomem_access_permitted(self, domid: int, first_mfn: int, last_mfn: int) -> bool:
        return self._hv.permissions.iomem_permitted(domid, first_mfn, last_mfn)

    def ioports_access_permitted(self, domid: int, first_port: int, last_port: int) -> bool:
        return self._hv.permissions.ioports_permitted(domid, first_port, last_port)

    def irq_access_permitted(self, domid: int, pirq: int) -> bool:
        return self._hv.permissions.irq_permitted(domid, pirq)
