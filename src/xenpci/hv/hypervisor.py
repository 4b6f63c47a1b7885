"""The hypervisor: the machine's domains and the subsystems they share.

Models the parts of Xen this project needs, one subsystem per module (memory,
grant tables, event channels, capabilities, IOMMU, I/O decode), wired
together here as ``xen/common/domain.c`` wires them at domain creation and
destruction. Domains run as threads in one process (one vCPU each); dom0 is
created with the machine and holds every capability, as the hardware domain
does at boot. Deliberate differences: a domain is created in one step
(``domctl_createdomain`` plus memory population), and destroyed in one step
(no zombie state visible to the toolstack; see ``grant_table`` for frames
still mapped by others).
"""

from __future__ import annotations

import contextlib
import itertools
import threading

from xenpci.hv.console import Console
from xenpci.hv.domain import DOMID_FIRST_RESERVED, Domain
from xenpci.hv.errors import (
    DomainExists,
    EvtchnError,
    HvError,
    InvalidArgument,
    NoSuchDomain,
    PermissionDenied,
)
from xenpci.hv.event_channel import EventChannels
from xenpci.hv.flushtlb import FlushClock
from xenpci.hv.grant_table import GrantTables
from xenpci.hv.hypercalls import Hypercalls
from xenpci.hv.iobus import IoBus
from xenpci.hv.iommu import Iommu
from xenpci.hv.memory import DEFAULT_RAM_FRAMES, P2M, PAGE_SIZE, MachineMemory
from xenpci.hv.msixtbl import MsixTables
from xenpci.hv.permissions import NR_PIRQS, Permissions, check_iomem, check_ioports, check_pirq
from xenpci.hv.rangeset import RangeSet
from xenpci.hv.scheduler import Scheduler
from xenpci.trace import Trace

#: pirqs below this are GSIs (INTx lines) and keep their number, as dom0's identity map does.
NR_GSI_PIRQS = 256
DOM0_MEMORY_KIB = 16 * 1024


class Hypervisor:
    """One machine: dom0 at construction, guests on demand, all subsystems."""

    def __init__(
        self,
        iommu: bool = True,
        trace: Trace | None = None,
        *,
        ram_frames: int = DEFAULT_RAM_FRAMES,
        dom0_memory_kib: int = DOM0_MEMORY_KIB,
        deterministic: bool = False,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.trace = trace if trace is not None else Trace()
        #: The console ring (``xl dmesg``): faults and refusals, where they are detected.
        self.console = Console()
        #: With ``deterministic=True`` no vCPU threads exist: work runs on the caller's
        #: thread when driven (``run_until_idle``, ``Domain.call``), in FIFO order.
        #: A given ``scheduler`` (the daemon's real-time executor) implies deterministic.
        if scheduler is None and deterministic:
            scheduler = Scheduler()
        self.scheduler = scheduler
        self.machine = MachineMemory(ram_frames)
        self.grants = GrantTables(self.machine)
        self.evtchn = EventChannels()
        #: One clock for every change that invalidates a mapping's cached MMIO checks.
        self.flush_clock = FlushClock()
        self.permissions = Permissions(self.flush_clock)
        self.iobus = IoBus(self.flush_clock)
        #: MSI-X tables/PBAs dom0 protected (``mmio_ro_ranges``); guest accesses are mediated.
        self.msixtbl = MsixTables(self.flush_clock)
        #: Per guest: granted BAR frames whose memory decode the guest turned off (unmapped).
        self.decode_off: dict[int, RangeSet] = {}
        self.decode_generation = 0
        self.iommu = Iommu(
            self.machine, self._p2m_of, self.trace, enabled=iommu, console=self.console
        )
        self._lock = threading.RLock()
        self._domains: dict[int, Domain] = {}
        self._names: set[str] = set()
        self._pirqs: dict[int, tuple[int, int | str]] = {}
        self._pirq_of_source: dict[int | str, int] = {}
        self._closed = False
        self._domid_last = 0  # domid_alloc's domid_last: the search starts after it
        self.dom0 = self._create_domain("Domain-0", dom0_memory_kib, 0, privileged=True)

    @property
    def iommu_enabled(self) -> bool:
        return self.iommu.enabled

    # -- domains ----------------------------------------------------------
    def create_domain(self, name: str, memory_kib: int, domid: int | None = None) -> Domain:
        """Create a guest, as dom0 would (``XEN_DOMCTL_createdomain``)."""
        return self.dom0.hypercalls.domctl_createdomain(name, memory_kib, domid)

    def destroy_domain(self, domid: int) -> None:
        self.dom0.hypercalls.domctl_destroydomain(domid)

    def domain(self, domid: int) -> Domain:
        with self._lock:
            dom = self._domains.get(domid)
        if dom is None:
            raise NoSuchDomain(f"d{domid} does not exist", op="domain", target=domid)
        return dom

    def domains(self) -> list[Domain]:
        with self._lock:
            return [self._domains[d] for d in sorted(self._domains)]

    def _p2m_of(self, domid: int) -> P2M | None:
        dom = self._domains.get(domid)
        return dom.p2m if dom is not None else None

    def _create_domain(
        self, name: str, memory_kib: int, domid: int | None, *, privileged: bool = False
    ) -> Domain:
        op = "domctl_createdomain"
        if not name or "/" in name:
            raise InvalidArgument(f"bad domain name {name!r}", op=op)
        if memory_kib <= 0 or memory_kib % (PAGE_SIZE // 1024):
            raise InvalidArgument(
                f"memory_kib {memory_kib} is not a positive multiple of 4",
                op=op,
                memory_kib=memory_kib,
            )
        with self._lock:
            if self._closed:
                raise InvalidArgument("the hypervisor has shut down", op=op)
            if domid is None:
                domid = self._domid_alloc()
            if not 0 <= domid < DOMID_FIRST_RESERVED or (domid == 0 and not privileged):
                raise InvalidArgument(f"domid {domid} is reserved or out of range", op=op)
            if domid in self._domains:
                raise DomainExists(f"d{domid} already exists", op=op, target=domid)
            if name in self._names:
                raise DomainExists(f"a domain named {name!r} exists", op=op, name=name)
            mfns = self.machine.allocate(memory_kib // (PAGE_SIZE // 1024), domid)
            dom = Domain(
                domid,
                name,
                P2M(self.machine, mfns),
                privileged=privileged,
                on_error=self._vcpu_error,
                scheduler=self.scheduler,
            )
            dom.hypercalls = Hypercalls(self, dom)
            self.grants.add_domain(domid, dom.p2m)
            self.evtchn.add_domain(domid, dom.vcpu.post)
            self.permissions.add_domain(domid, everything=privileged)
            self._domains[domid] = dom
            self._names.add(name)
        return dom

    def _domid_alloc(self) -> int:
        """``domid_alloc(DOMID_ANY)`` (``xen/common/domid.c``): the first free id after
        the last one given, wrapping to 1; a freed id is not given again at once."""
        # Lazily: the first free id is almost always the very next one.
        order = itertools.chain(
            range(self._domid_last + 1, DOMID_FIRST_RESERVED), range(1, self._domid_last + 1)
        )
        domid: int | None = next((d for d in order if d not in self._domains), None)
        if domid is None:
            raise InvalidArgument("no free domid", errno="ENOSPC", op="domctl_createdomain")
        self._domid_last = domid
        return domid

    def _destroy_domain(self, domid: int) -> None:
        op = "domctl_destroydomain"
        with self._lock:
            dom = self._domains.get(domid)
            if dom is None:
                raise NoSuchDomain(f"d{domid} does not exist", op=op, target=domid)
            if dom.privileged:
                raise InvalidArgument("the hardware domain cannot be destroyed", op=op)
            dom.dying = True
            del self._domains[domid]
            self._names.discard(dom.name)
            self.evtchn.remove_domain(domid)
            pinned = self.grants.remove_domain(domid)
            devices = self.iommu.remove_domain(domid)
            self.permissions.remove_domain(domid)
            self.decode_off.pop(domid, None)
            for pirq in [p for p, (d, _) in self._pirqs.items() if d == domid]:
                _, source = self._pirqs.pop(pirq)
                del self._pirq_of_source[source]
            # The pinned frames (still mapped by another domain) stay owned until unmapped.
            self.machine.free(dom.p2m.mfns, keep=pinned)
        if devices:
            self.trace.record("devices_returned", 0, "hypervisor", target=domid, sbdfs=devices)
        dom.vcpu.stop()

    def run_until_idle(self) -> int:
        """Run queued vCPU work until none is left; return how many items ran.

        Deterministic mode: runs everything runnable on this thread. Threaded
        mode: waits until every domain's queue, as of now, has drained (returns 0).
        A paused domain's queue waits for its unpause: it is not waited for.
        """
        if self.scheduler is not None:
            return self.scheduler.run_until_idle()
        for dom in self.domains():
            if dom.paused:
                continue
            with contextlib.suppress(HvError):
                dom.call(lambda: None)
        return 0

    def _vcpu_error(self, domid: int, exc: BaseException) -> None:
        self.trace.record("vcpu_exception", domid, "hypervisor", error=repr(exc))

    def shutdown(self) -> None:
        """Destroy every guest and stop every vCPU thread (idempotent)."""
        with self._lock:
            self._closed = True
            guests = [d for d in self._domains if d != 0]
        for domid in guests:
            with contextlib.suppress(NoSuchDomain):
                self._destroy_domain(domid)
        self.dom0.dying = True
        self.dom0.vcpu.stop()

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- capabilities (called by Hypercalls after the privilege check) ---
    def _target(self, domid: int, op: str, caller: int) -> Domain:
        with self._lock:
            dom = self._domains.get(domid)
        if dom is None:
            raise NoSuchDomain(f"d{domid} does not exist", op=op, domid=caller, target=domid)
        return dom

    def _iomem_permission(self, caller: int, domid: int, first: int, nr: int, allow: bool) -> None:
        op = "iomem_permission"
        last = check_iomem(first, nr)
        self._target(domid, op, caller)
        if not self.permissions.iomem_permitted(caller, first, last):
            raise PermissionDenied("caller lacks the range itself", op=op, domid=caller)
        self.permissions.set_iomem(domid, first, last, allow)

    def _memory_decode(self, domid: int, first: int, nr: int, enabled: bool) -> None:
        op = "memory_decode"
        last = check_iomem(first, nr)
        self._target(domid, op, 0)
        if not self.permissions.iomem_permitted(domid, first, last):
            raise PermissionDenied(f"d{domid} was not granted these frames", op=op, domid=0)
        with self._lock:
            frames = self.decode_off.setdefault(domid, RangeSet(f"d{domid} decode off"))
            if enabled:
                frames.remove_range(first, last)
            else:
                frames.add_range(first, last)
            if frames.is_empty():
                del self.decode_off[domid]
            self.decode_generation += 1
            self.flush_clock.tick()

    def _ioport_permission(self, caller: int, domid: int, first: int, nr: int, allow: bool) -> None:
        op = "ioport_permission"
        last = check_ioports(first, nr)
        self._target(domid, op, caller)
        if not self.permissions.ioports_permitted(caller, first, last):
            raise PermissionDenied("caller lacks the ports itself", op=op, domid=caller)
        self.permissions.set_ioports(domid, first, last, allow)

    def _irq_permission(self, caller: int, domid: int, pirq: int, allow: bool) -> None:
        op = "irq_permission"
        check_pirq(pirq)
        self._target(domid, op, caller)
        if not self.permissions.irq_permitted(caller, pirq):
            raise PermissionDenied("caller lacks the irq itself", op=op, domid=caller)
        self.permissions.set_irq(domid, pirq, allow)

    # -- interrupts -------------------------------------------------------
    def _map_pirq(self, domid: int, source: int | str) -> int:
        op = "map_pirq"
        self._target(domid, op, 0)
        with self._lock:
            if isinstance(source, int):
                if not 0 <= source < NR_GSI_PIRQS:
                    raise InvalidArgument(f"GSI {source} out of range", op=op, source=source)
            elif not source:
                raise InvalidArgument("empty interrupt source name", op=op)
            have = self._pirq_of_source.get(source)
            if have is not None:
                owner = self._pirqs[have][0]
                if owner == domid:
                    return have
                raise InvalidArgument(
                    f"interrupt source {source!r} is mapped to d{owner}",
                    errno="EBUSY",
                    op=op,
                    source=source,
                )
            if isinstance(source, int):
                pirq = source
            else:
                free = (p for p in range(NR_GSI_PIRQS, NR_PIRQS) if p not in self._pirqs)
                pirq = next(free, -1)
                if pirq < 0:
                    raise InvalidArgument("no free pirq", errno="ENOSPC", op=op)
            self._pirqs[pirq] = (domid, source)
            self._pirq_of_source[source] = pirq
            return pirq

    def _unmap_pirq(self, domid: int, pirq: int) -> None:
        check_pirq(pirq)
        with self._lock:
            entry = self._pirqs.get(pirq)
            if entry is None or entry[0] != domid:
                raise InvalidArgument(f"pirq {pirq} is not mapped to d{domid}", op="unmap_pirq")
            del self._pirqs[pirq]
            del self._pirq_of_source[entry[1]]

    def check_pirq_bindable(self, domid: int, pirq: int) -> None:
        op = "evtchn_bind_pirq"
        check_pirq(pirq)
        with self._lock:
            entry = self._pirqs.get(pirq)
        if entry is None or entry[0] != domid:
            raise EvtchnError(f"pirq {pirq} is not mapped to d{domid}", op=op, domid=domid)
        if not self.permissions.irq_permitted(domid, pirq):
            self.console.gprintk(domid, f"refused binding of pirq {pirq}: not permitted")
            raise PermissionDenied(f"d{domid} may not use pirq {pirq}", op=op, domid=domid)

    def pirq_owner(self, pirq: int) -> int | None:
        with self._lock:
            entry = self._pirqs.get(pirq)
        return entry[0] if entry else None

    def raise_pirq(self, pirq: int) -> bool:
        """A device asserts its interrupt: deliver it to the owner's bound port.

        Returns whether an event channel was signalled (an unbound pirq is
        dropped and recorded, as Xen leaves it pending on the irq).
        """
        owner = self.pirq_owner(pirq)
        port = self.evtchn.deliver_pirq(owner, pirq) if owner is not None else None
        self.trace.record(
            "pirq",
            owner if owner is not None else 0,
            "direct",
            pirq=pirq,
            port=port,
            delivered=port is not None,
        )
        return port is not None
