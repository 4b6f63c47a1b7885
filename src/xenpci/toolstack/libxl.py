"""The toolstack library: domains and PCI passthrough as libxl does them for PV guests.

Mirrors ``tools/libs/light``: ``libxl_domain_create_new`` / ``libxl_domain_destroy``
(``libxl_create.c``, ``libxl_domain.c``), ``libxl_device_pci_assignable_add/remove/list``,
``libxl__device_pci_add`` (``do_pci_add``, ``pci_add_dm_done``) and
``libxl__device_pci_remove_common`` (``do_pci_remove``, ``pci_remove_detached``) of
``libxl_pci.c`` (fact sheet pciback.md §3.2-§3.7). The XenStore keys are
:mod:`xenpci.toolstack.libxl_pci`'s; dom0's privileged hypercalls are
``xenpci.hv``'s; the machine (host devices, pciback's pool, guest kernels) is
reached through the small :class:`Platform` protocol.

Deliberate differences from libxl (each also said where it happens):

- Refusals beyond libxl, unless ``allow_unsafe``: a memory BAR smaller than a
  page that shares its page with another device's BAR (XSA-461: the guest would
  be granted the neighbour's registers), and a device that can DMA on a machine
  without an IOMMU (the guest becomes as trusted as dom0); and always: the
  functions of one device, or the devices of one IOMMU group, split between
  two guests (they share fate in the IOMMU and via resets), and a device whose
  config space the source does not give well enough for pciback to show it (a
  BAR of unknown size). The check package's table
  (:data:`xenpci.check.rules.REFUSALS`) holds these rules for every caller.
- Disks: ``disk=[...]`` vbds (``libxl__device_disk_add``'s keys) are added to a
  PV guest before its PCI devices, with ``phy`` targets that must be dom0's
  block devices; an HVM guest (``type="hvm"``) gets its device model instead
  of a built PV kernel, and PCI passthrough to it is refused.
- ``*`` (all functions): libxl HEAD attaches only the first function it finds;
  we attach every present function.
- Detach asks the guest to let go first (the XenStore Closing handshake) and
  revokes permissions and the IOMMU context afterwards; libxl revokes first,
  cutting off a driver that may still be doing DMA. With ``force`` an
  unresponsive guest loses the device anyway.
- A failed attach rolls back every grant it made (libxl leaves earlier grants
  behind on failure).
- No quarantine: the hypervisor model has no ``DOMID_IO``; assignable devices
  stay with dom0 (owned by pciback) until assigned, as with ``iommu=no-quarantine``.
  ``pci-assignable-remove`` of a device that is not assignable still fails as
  libxl's de-quarantine does ("failed to de-quarantine BDF").
- Locking: each domain has its own lock (libxl's per-domain userdata lock) and
  a :class:`~xenpci.toolstack.libxl_pci.Cancel`; ``domain_destroy`` cancels the
  domain's running operation (its wait ends at once), then takes the domain's
  lock. Detach and destroy hold only that domain's lock; creation and attach
  also hold the context lock (checks, claims and grants span domains, and as in
  libxl the claim precedes the wait for the backend), always taken after a
  domain's lock.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from xenpci.check.host import HostFacts
from xenpci.check.rules import refusals as check_refusals
from xenpci.errors import XenpciError
from xenpci.hv import Hypercalls, Hypervisor, SteppedVcpu
from xenpci.hv.errors import HvError
from xenpci.hv.memory import PAGE_SHIFT, PAGE_SIZE
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.bar import IORESOURCE_MEM
from xenpci.pci.function import PciFunction
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack import xldisk
from xenpci.toolstack.errors import DomainGone, LibxlErrorCode, Refused, ToolstackError, XlError
from xenpci.toolstack.xlcfg import (
    BdfError,
    DomainConfig,
    PciSpec,
    parse_bdf,
    require_supported_type,
)
from xenpci.trace import Trace
from xenpci.xenstore.client import XsClient
from xenpci.xenstore.errors import XsError

#: libxl__domain_build_info_setdefault: ``max_memkb`` defaults to 32 MiB (xl sets none).
DEFAULT_MEMORY_MIB = 32
#: The Xen this models (``xl info``'s xen_major, xen_minor, xen_extra).
XEN_VERSION = (4, 17, "-xenpci")
PCIBACK_DRIVER_PATH = "/sys/bus/pci/drivers/pciback"


class Platform(Protocol):
    """What the toolstack needs from the machine it runs on (dom0's view of it)."""

    hv: Hypervisor

    def host_functions(self) -> list[PciFunction]:
        """Every PCI function on the host (``/sys/bus/pci/devices``)."""
        ...

    def pciback_bound(self) -> set[SBDF]:
        """Functions currently bound to pciback (``/sys/bus/pci/drivers/pciback``)."""
        ...

    def pciback_bind(self, sbdf: SBDF) -> object:
        """Seize a function for passthrough (pciback ``new_slot`` + ``bind``)."""
        ...

    def pciback_unbind(self, sbdf: SBDF) -> None:
        """Give a function back to dom0 (``unbind`` + ``remove_slot``)."""
        ...

    def pciback_set_permissive(self, sbdf: SBDF) -> None:
        """``echo BDF > pciback/permissive``."""
        ...

    def reset_device(self, sbdf: SBDF) -> str | None:
        """``echo 1 > /sys/bus/pci/devices/BDF/reset``: the method used, or None if none works.

        As Linux's ``pci_reset_function``, the config header (BARs, ROM, interrupt
        line) is restored after the reset; for a device pciback holds, to the state
        pciback saved when it seized it.
        """
        ...

    def start_guest(self, name: str, memory_kib: int, *, paused: bool = False) -> int:
        """Create a PV domain with a guest kernel (XenBus, pcifront); return its domid.

        With ``paused`` the kernel does not run until :meth:`unpause_guest`.
        """
        ...

    def pause_guest(self, domid: int) -> None:
        """``xc_domain_pause``: the guest's vCPU stops running (counted, as Xen's)."""
        ...

    def unpause_guest(self, domid: int) -> None:
        """``xc_domain_unpause``: undo one pause; the last lets the guest run (a guest
        created paused boots)."""
        ...

    def guest_paused(self, domid: int) -> bool:
        """Whether the toolstack holds the guest paused."""
        ...

    def stop_guest(self, domid: int) -> None:
        """Shut the guest kernel down and destroy the domain."""
        ...

    def block_devices(self) -> Mapping[str, object]:
        """dom0's block devices by path (``/dev/nvme0n1``), served by blkback."""
        ...

    def start_hvm_guest(self, name: str, memory_kib: int, disk_path: str) -> int:
        """Create an HVM domain: its device model in dom0 serving an emulated NVMe
        controller from dom0's ``disk_path``; the guest boots and probes it."""
        ...


@dataclass(slots=True)
class DomainRecord:
    """What the toolstack remembers of a guest it created (libxl's domain userdata)."""

    domid: int
    name: str
    memory_mib: int
    vcpus: int
    allow_unsafe: bool = False
    # host BDF -> the grants made for it, so detach revokes exactly those
    grants: dict[SBDF, Grants] = field(default_factory=dict)
    #: libxl's per-domain lock: one operation on this domain at a time (re-entrant:
    #: a failed create destroys its own domain while holding it)
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: ``domain_destroy`` cancels the wait of the operation holding ``lock``
    cancel: lp.Cancel = field(default_factory=lp.Cancel)
    domain_type: str = "pv"
    #: the vbds created for ``disk=[...]`` (PV), removed at destroy
    disks: tuple[xldisk.DiskSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class Grants:
    """Permissions one attach gave a guest: iomem (first_mfn, nr), ioports (first, nr), pirq."""

    iomem: tuple[tuple[int, int], ...] = ()
    ioports: tuple[tuple[int, int], ...] = ()
    pirq: int | None = None
    assigned: bool = False


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """One line of ``xl list``."""

    name: str
    domid: int
    memory_mib: int
    vcpus: int
    state: str = "-b----"
    cpu_time: float = 0.0  # seconds of vCPU time (``xl list``'s Time(s))


@dataclass(frozen=True, slots=True)
class AssignableDevice:
    sbdf: SBDF
    name: str | None


#: libxl's own name for bit 0 of a resource's flags (``PCI_BAR_IO`` in libxl_internal.h)
PCI_BAR_IO = 0x01


def bar_page_ranges(fn: PciFunction) -> list[tuple[str, int, int]]:
    """The resource ranges libxl grants for ``fn``: ("iomem", first_mfn, nr) or ("ioport", ...).

    As ``pci_add_dm_done``: each line of sysfs ``resource`` (dom0's
    ``dev->resource[0..6]``, :attr:`PciFunction.resources`, six BARs and the
    ROM) with a non-zero start is granted. These are dom0's (CPU) addresses,
    which pciback also shows the guest, not the BAR registers' (bus) addresses:
    behind an address-translating bridge the two differ.

    Deliberate differences: a range is I/O when Linux flagged it
    ``IORESOURCE_IO`` (libxl tests bit 0, ``PCI_BAR_IO``, which Linux's fixed
    legacy-IDE port resources lack, so libxl would grant them as memory page
    0); a memory range gets every page it touches (libxl's
    ``(size + 4095) >> 12`` from the start's page misses the last page of a
    range that straddles a page boundary); a resource whose size the source
    did not give is skipped (the refusal table refuses such a device first).
    """
    out: list[tuple[str, int, int]] = []
    for r in fn.resources.values():
        if not r.start or not r.size:
            continue
        if r.is_io or (r.flags & PCI_BAR_IO and not r.flags & IORESOURCE_MEM):
            out.append(("ioport", r.start, r.size))
        else:
            first = r.start >> PAGE_SHIFT
            last = (r.start + r.size - 1) >> PAGE_SHIFT
            out.append(("iomem", first, last - first + 1))
    return out


def legacy_irq(fn: PciFunction) -> int | None:
    """dom0's IRQ for the function's INTx (``/sys/bus/pci/devices/BDF/irq``), if any."""
    if fn.config.known_size <= regs.PCI_INTERRUPT_PIN:
        return None
    if not fn.config.read(regs.PCI_INTERRUPT_PIN, 1):
        return None
    # The source's dev->irq when it gave one (sysfs irq, "routed to IRQ N"): the value
    # pciback shows the guest as INTERRUPT_LINE, so the pirq libxl maps must be this one.
    irq = fn.irq if fn.irq is not None else fn.config.read(regs.PCI_INTERRUPT_LINE, 1)
    return irq if 0 < irq < 0xFF else None


class Libxl:
    """One toolstack context (``libxl_ctx``) over a machine; all calls are serialized."""

    def __init__(
        self,
        platform: Platform,
        xs: XsClient,
        *,
        timeout: float = lp.DEFAULT_TIMEOUT,
        trace: Trace | None = None,
    ) -> None:
        self.platform = platform
        self.trace = trace
        self.hv = platform.hv
        self.xs = xs
        self.timeout = timeout
        self.domains: dict[int, DomainRecord] = {}
        self._lock = threading.RLock()  # one toolstack operation at a time
        self._records_lock = threading.Lock()  # ``domains`` itself, for short lookups

    @contextlib.contextmanager
    def _traced(self, op: str, **args: object) -> Iterator[None]:
        """Record one toolstack operation (dom0 acting) and its outcome in the trace."""
        try:
            yield
        except BaseException as e:
            if self.trace is not None:
                reason = getattr(e, "reason", None) or type(e).__name__
                self.trace.record("toolstack", 0, "dom0", op=op, result=reason, **args)
            raise
        if self.trace is not None:
            self.trace.record("toolstack", 0, "dom0", op=op, result="ok", **args)

    @property
    def _dom0(self) -> Hypercalls:
        return self.hv.dom0.hypercalls

    # ------------------------------------------------------------------ lookups
    def _function(self, sbdf: SBDF) -> PciFunction:
        for fn in self.platform.host_functions():
            if fn.sbdf == sbdf:
                return fn
        raise Refused(
            "no-such-device",
            f"PCI device {sbdf} does not exist on this host",
            LibxlErrorCode.ERROR_INVAL,
        )

    def _domain(self, dom: int | str) -> DomainRecord:
        """A guest by domid or name; dom0 and unknown domains are refused as xl does."""
        for rec in self.domains.values():
            if rec.domid == dom or rec.name == dom or str(rec.domid) == dom:
                return rec
        domid = self._domid_of(dom)
        if domid == 0:
            raise ToolstackError(
                "domain 0 is dom0, not a guest this toolstack created", LibxlErrorCode.ERROR_INVAL
            )
        raise ToolstackError(f"domain {domid} does not exist", LibxlErrorCode.ERROR_DOMAIN_NOTFOUND)

    def _domid_of(self, dom: int | str) -> int:
        """``libxl_domain_qualifier_to_domid``: digits are a domid (whether or not it
        exists), anything else a name that must exist (``find_domain``'s error)."""
        if isinstance(dom, int):
            return dom
        if dom.isdigit():
            return int(dom)
        if dom == "Domain-0":
            return 0
        for rec in self.domains.values():
            if rec.name == dom:
                return rec.domid
        raise XlError(
            f"{dom} is an invalid domain identifier (rc={int(LibxlErrorCode.ERROR_INVAL)})",
            LibxlErrorCode.ERROR_INVAL,
        )

    def resolve(self, spec: PciSpec) -> SBDF:
        """The host address a spec names (by ``name=`` through ``/libxl/pci/*/name``)."""
        if spec.sbdf is not None:
            return spec.sbdf
        assert spec.name is not None
        sbdf = lp.resolve_name(self.xs, spec.name)
        if sbdf is None:
            raise Refused(
                "no-such-name",
                f"no assignable device named {spec.name!r}",
                LibxlErrorCode.ERROR_INVAL,
            )
        return sbdf

    # ------------------------------------------------------------------ domains
    def domain_create(self, cfg: DomainConfig, *, allow_unsafe: bool = False) -> int:
        """``xl create``: a PV guest with its ``disk=`` vbds and ``pci=`` devices added
        before it runs, or an HVM guest with its device model.

        As libxl, a failed device attach fails the whole creation and the domain
        is destroyed.
        """
        require_supported_type(cfg)  # PVH, HVM with passthrough: refused
        with self._traced("create", name=cfg.name), self._lock:
            if any(r.name == cfg.name for r in self.domains.values()) or cfg.name == "Domain-0":
                raise ToolstackError(
                    f"domain with name {cfg.name!r} already exists", LibxlErrorCode.ERROR_INVAL
                )
            self._check_disks(cfg)
            mem = cfg.memory_mib or DEFAULT_MEMORY_MIB
            if cfg.domain_type == "hvm":
                # libxl__spawn_local_dm: the device model starts with the domain; the
                # guest's firmware and kernel then find the emulated controller.
                domid = self.platform.start_hvm_guest(cfg.name, mem * 1024, cfg.disks[0].target)
                with self._records_lock:
                    self.domains[domid] = DomainRecord(
                        domid, cfg.name, mem, cfg.vcpus, allow_unsafe, domain_type="hvm"
                    )
                return domid
            if cfg.pci and not self.hv.iommu_enabled and not allow_unsafe:
                # libxl__domain_config_setdefault: passthrough needs an IOMMU.
                raise Refused(
                    "no-iommu",
                    "passthrough not supported on this platform (no IOMMU): a guest driving "
                    "a DMA-capable device could reach all memory and be as trusted as dom0; "
                    "override with --allow-unsafe",
                )
            # Check every device before anything is created, so a refusal leaves nothing.
            for spec in cfg.pci:
                self._seize_if_asked(spec)
            together = frozenset(s for spec in cfg.pci for s in self._functions_of(spec))
            for sbdf in sorted(together):
                self._check_attachable(sbdf, None, allow_unsafe, together)
            # As xl: build the domain paused, add every device, unpause last. A guest
            # running while devices are added could connect between two of them, and
            # pciback ignores ``state-i = 1`` devices that appear after it is Connected.
            domid = self.platform.start_guest(cfg.name, mem * 1024, paused=True)
            rec = DomainRecord(domid, cfg.name, mem, cfg.vcpus, allow_unsafe)
            with rec.lock:
                with self._records_lock:
                    self.domains[domid] = rec
                try:
                    # libxl__add_disks before the PCI devices (libxl_create.c's order)
                    for disk in cfg.disks:
                        xldisk.vbd_add(self.xs, domid, disk)
                        rec.disks += (disk,)
                    for spec in cfg.pci:
                        self._check_alive(rec)
                        self._pci_add(rec, spec, starting=True, together=together)
                    self._check_alive(rec)
                    self.platform.unpause_guest(domid)
                except BaseException:
                    with self._records_lock:
                        ours = self.domains.get(domid) is rec
                    if ours:
                        self._domain_destroy(domid)
                    raise
            return domid

    def _check_disks(self, cfg: DomainConfig) -> None:
        """Every ``disk=`` target must be one of dom0's block devices (``phy`` backend:
        the block hotplug script fails on anything else)."""
        if not cfg.disks:
            return
        have = self.platform.block_devices()
        for disk in cfg.disks:
            if disk.target not in have:
                raise Refused(
                    "no-such-disk",
                    f"disk {disk.vdev}: {disk.target} is not a block device of dom0 "
                    f"(dom0 has: {', '.join(sorted(have)) or 'none'})",
                    LibxlErrorCode.ERROR_INVAL,
                )

    def domain_destroy(self, dom: int | str) -> None:
        """``xl destroy``: force-remove every device (``libxl__device_pci_destroy_all``).

        An operation already running on this domain (typically an attach waiting
        on a wedged guest) is cancelled first: its wait ends with
        :class:`DomainGone`, it rolls back and lets go of the domain's lock, which
        destroy then takes. No timeout decides anything here.
        """
        with self._records_lock:
            if self._domid_of(dom) == 0:
                raise XlError("Not destroying domain 0", LibxlErrorCode.ERROR_INVAL)
            rec = self._domain(dom)
        rec.cancel.cancel()
        with rec.lock:
            with self._records_lock:
                if self.domains.get(rec.domid) is not rec:
                    return  # the cancelled operation destroyed it (a failed create does)
            # No context lock: tearing this domain down waits on nothing another
            # domain's operation holds (its devices are its own; releasing one is safe
            # against a concurrent attach, whose check sees it claimed until released).
            with self._traced("destroy", domain=str(dom)):
                self._domain_destroy(rec.domid)

    def _domain_destroy(self, dom: int | str) -> None:
        with self._records_lock:
            rec = self._domain(dom)
        for entry in reversed(lp.device_pci_list(self.xs, rec.domid)):
            # force: carry on, the domain is going anyway
            with contextlib.suppress(ToolstackError):
                self._pci_remove(rec, entry.sbdf, force=True, timeout=min(self.timeout, 1.0))
        # Devices still recorded (half-attached) are released too.
        for sbdf in list(rec.grants):
            self._release(rec, sbdf)
        for disk in rec.disks:
            with contextlib.suppress(XsError):
                xldisk.vbd_remove(self.xs, rec.domid, disk.devid, disk.backend_domid)
        lp.device_destroy(self.xs, rec.domid)
        self.platform.stop_guest(rec.domid)
        with self._records_lock:
            del self.domains[rec.domid]

    def domain_list(self, dom: int | str | None = None) -> list[DomainInfo]:
        """``xl list [DOMAIN]``: dom0 first, then guests by domid (answers even while an
        attach waits). An unknown name is ``find_domain``'s error; a domid that does
        not exist is ``main_list``'s "Error: Domain ... does not exist."."""
        with self._records_lock:
            guest_time = {
                rec.domid: _vcpu_seconds(self.hv, rec.domid) for rec in self.domains.values()
            }
            # dom0 runs the toolstack, pciback, xenstored and Xen's own work here: all the
            # process's CPU time that no guest vCPU used.
            dom0_time = max(0.0, time.process_time() - sum(guest_time.values()))
            dom0 = self.hv.dom0
            out = [
                DomainInfo("Domain-0", 0, dom0.nr_pages * PAGE_SIZE >> 20, 1, "r-----", dom0_time)
            ]
            for rec in sorted(self.domains.values(), key=lambda r: r.domid):
                out.append(
                    DomainInfo(
                        rec.name,
                        rec.domid,
                        rec.memory_mib,
                        rec.vcpus,
                        self._state(rec),
                        guest_time[rec.domid],
                    )
                )
            if dom is None:
                return out
            domid = self._domid_of(dom)  # a name must exist (find_domain), a number need not
            picked = [d for d in out if d.domid == domid]
            if not picked:
                raise XlError(
                    f"Error: Domain '{dom}' does not exist.", LibxlErrorCode.ERROR_DOMAIN_NOTFOUND
                )
            return picked

    def domain_config(self, dom: int | str | None = None) -> list[dict[str, object]]:
        """``xl list -l``: per domain ``{"domid": N, "config": libxl_domain_config}`` in
        libxl's JSON shape (``printf_info_one_json``), for the fields modelled.

        As libxl's generated ``*_gen_json``, a field at its default (0, false,
        empty) is left out, an aggregate always written; enums are their
        lower-case names. Checked against libxenlight's own
        ``libxl_domain_config_to_json`` in the tests.
        """
        infos = self.domain_list(dom)
        out: list[dict[str, object]] = []
        for info in infos:
            rec = self.domains.get(info.domid)
            dtype = rec.domain_type if rec is not None else "pv"
            c_info: dict[str, object] = {"type": dtype, "name": info.name}
            if info.domid:
                c_info["domid"] = info.domid
            memkb = info.memory_mib * 1024
            b_info: dict[str, object] = {
                "max_vcpus": info.vcpus,
                "avail_vcpus": list(range(info.vcpus)),
                "max_memkb": memkb,
                "target_memkb": memkb,
                # aggregates libxl's generator always writes, empty at their defaults
                "sched_params": {},
                f"type.{dtype}": {},
                "arch_arm": {},
                "arch_x86": {},
            }
            pcidevs = [_pci_json(e) for e in lp.device_pci_list(self.xs, info.domid)]
            config: dict[str, object] = {"c_info": c_info, "b_info": b_info}
            if pcidevs:
                config["pcidevs"] = pcidevs
            out.append({"domid": info.domid, "config": config})
        return out

    def _state(self, rec: DomainRecord) -> str:
        """xl's six state flags ``rbpscd``; an idle guest is blocked, a paused one ``p``."""
        try:
            paused = self.platform.guest_paused(rec.domid)
        except XenpciError:
            return "-----d" if not self._alive(rec.domid) else "------"
        return "--p---" if paused else "-b----"

    def domain_pause(self, dom: int | str) -> None:
        """``xl pause``: stop the guest's vCPU (``libxl_domain_pause``).

        Takes no context lock: pausing (and above all unpausing) must work while
        another operation waits on this guest, as xl's separate processes do.
        """
        with self._records_lock:
            domid = self._domain(dom).domid
        with self._traced("pause", domain=str(dom)):
            self.platform.pause_guest(domid)

    def domain_unpause(self, dom: int | str) -> None:
        """``xl unpause``: undo one pause; queued guest work runs on the last one."""
        with self._records_lock:
            domid = self._domain(dom).domid
        with self._traced("unpause", domain=str(dom)):
            self.platform.unpause_guest(domid)

    # ------------------------------------------------------------------ host
    def host_info(self) -> list[tuple[str, str]]:
        """``xl info``: (field, value) in xl's order, for the fields modelled.

        The IOMMU shows as Xen shows it: ``virt_caps`` has ``pv_directio`` only with
        an IOMMU (``XEN_SYSCTL_PHYSCAP_directio``), and the command line says
        ``iommu=``. The node and CPU count are this host's (``uname``).
        """
        uts = os.uname()
        mem = self.hv.machine
        mib = (1 << 20) // PAGE_SIZE
        iommu = self.hv.iommu_enabled
        return [
            ("host", uts.nodename),
            ("release", uts.release),
            ("version", uts.version),
            ("machine", uts.machine),
            ("nr_cpus", str(os.cpu_count() or 1)),
            ("virt_caps", "pv pv_directio" if iommu else "pv"),
            ("total_memory", str(mem.nr_frames // mib)),
            ("free_memory", str((mem.nr_frames - mem.allocated) // mib)),
            ("xen_major", str(XEN_VERSION[0])),
            ("xen_minor", str(XEN_VERSION[1])),
            ("xen_extra", XEN_VERSION[2]),
            ("xen_version", "{}.{}{}".format(*XEN_VERSION)),
            ("xen_caps", "xen-3.0-x86_64"),
            ("xen_pagesize", str(PAGE_SIZE)),
            ("xen_commandline", "iommu=on" if iommu else "iommu=off"),
            ("xend_config_format", "4"),
        ]

    def dmesg(self, *, clear: bool = False) -> list[str]:
        """``xl dmesg [-c]``: the hypervisor's console ring (``XEN_SYSCTL_readconsole``)."""
        return self.hv.console.read(clear=clear)

    # ------------------------------------------------------------------ assignable
    def assignable_add(self, sbdf: SBDF, name: str | None = None) -> None:
        """``libxl_device_pci_assignable_add``: bind to pciback, remember the driver, name it."""
        with self._traced("pci-assignable-add", bdf=str(sbdf)), self._lock:
            fn = self._function(sbdf)
            if name is not None:
                lp.PciBackendDevice(sbdf, name=name)  # libxl: <= 64 chars, all isgraph
                other = lp.resolve_name(self.xs, name)
                if other is not None and other != sbdf:
                    raise Refused(
                        "name-in-use",
                        f"name {name!r} already names {other}",
                        LibxlErrorCode.ERROR_INVAL,
                    )
            if sbdf not in self.platform.pciback_bound():
                if fn.driver and fn.driver != "pciback":
                    lp.set_driver_path(self.xs, sbdf, f"/sys/bus/pci/drivers/{fn.driver}")
                self.platform.pciback_bind(sbdf)
            # else: libxl warns "already bound to pciback" and goes on to naming.
            lp.set_assignable_name(self.xs, sbdf, name)
            # Quarantine (xc_assign_device(DOMID_IO)) is not modelled: see the module docstring.

    def assignable_remove(self, bdf_or_name: str, *, rebind: bool = False) -> SBDF:
        """``libxl_device_pci_assignable_remove``: NAME tried first, then BDF."""
        with self._traced("pci-assignable-remove", target=bdf_or_name), self._lock:
            sbdf = lp.resolve_name(self.xs, bdf_or_name)
            if sbdf is None:
                try:
                    sbdf, _all = parse_bdf(bdf_or_name)  # xlu_pci_parse_bdf, as xl
                except BdfError:
                    # xl: not a name, then parsed as a BDF; a malformed one exits 2
                    raise XlError(
                        f"pci-assignable-remove: malformed BDF '{bdf_or_name}'",
                        LibxlErrorCode.ERROR_INVAL,
                        exit_code=2,
                    ) from None
            owner = lp.assigned_domid(self.xs, sbdf)
            if owner is not None:
                raise Refused(
                    "assigned",
                    f"PCI device {sbdf} is assigned to domain {owner}; detach it first",
                )
            if sbdf not in self.platform.pciback_bound():
                # libxl de-quarantines first (xc_deassign_device(DOMID_IO)), which Xen
                # refuses for a device that was never made assignable: ERROR_FAIL.
                raise Refused("not-assignable", f"failed to de-quarantine {sbdf}")
            self.platform.pciback_unbind(sbdf)
            # -r: rebind to the driver it had (here: forget its path; the model has no drivers).
            if rebind:
                lp.set_driver_path(self.xs, sbdf, None)
            lp.set_assignable_name(self.xs, sbdf, None)
            return sbdf

    def assignable_list(self) -> list[AssignableDevice]:
        """Bound to pciback and not assigned to a guest (no ``/libxl/pci/<bdf>/domid``)."""
        with self._lock:
            out = []
            for sbdf in sorted(self.platform.pciback_bound()):
                if lp.assigned_domid(self.xs, sbdf) is None:
                    out.append(AssignableDevice(sbdf, lp.assignable_name(self.xs, sbdf)))
            return out

    # ------------------------------------------------------------------ attach
    def pci_attach(self, dom: int | str, spec: PciSpec, *, allow_unsafe: bool = False) -> None:
        """``xl pci-attach``: hot-plug into a running guest."""
        what = str(spec.sbdf or spec.name)
        with self._records_lock:
            rec = self._domain(dom)
        # The context lock too: as libxl, the claim and grants come before the wait for
        # the backend (a hot-plug's wait on the guest holds it; destroy cancels it).
        with self._traced("pci-attach", domain=str(dom), spec=what), rec.lock, self._lock:
            self._check_alive(rec)
            if rec.domain_type != "pv":
                raise Refused(
                    "hvm-passthrough",
                    f"domain {rec.domid} is an HVM guest: PCI passthrough to HVM guests "
                    "is not modelled",
                    LibxlErrorCode.ERROR_INVAL,
                )
            self._seize_if_asked(spec)
            self._pci_add(rec, spec, starting=False, allow_unsafe=allow_unsafe)

    def pci_list(self, dom: int | str) -> list[lp.PciBackendEntry]:
        """``xl pci-list``: read from the backend's keys, like libxl (no context lock).

        Any domid is addressable, dom0 included: one with no backend has no devices.
        """
        with self._records_lock:
            domid = self._domid_of(dom)
        return lp.device_pci_list(self.xs, domid)

    def _seize_if_asked(self, spec: PciSpec) -> None:
        """``seize=1``: make a device that is not yet bound to pciback assignable first."""
        if not spec.seize:
            return
        bound = self.platform.pciback_bound()
        for sbdf in self._functions_of(spec):
            if sbdf not in bound and lp.assigned_domid(self.xs, sbdf) is None:
                self.assignable_add(sbdf)

    def _functions_of(self, spec: PciSpec) -> list[SBDF]:
        """The host functions a spec covers: one, or with ``*`` every present one of the slot.

        libxl HEAD's add path returns after the first function it finds for ``*``
        (only the remove path iterates with ``next_func``); we attach them all.
        """
        base = self.resolve(spec)
        if not spec.all_functions:
            return [base]
        if spec.vslot is None:
            # libxl: "Must specify a v-slot for multi-function devices"
            raise ToolstackError(
                "must specify a v-slot for multi-function devices", LibxlErrorCode.ERROR_INVAL
            )
        present = [
            fn.sbdf
            for fn in self.platform.host_functions()
            if (fn.sbdf.segment, fn.sbdf.bus, fn.sbdf.device)
            == (base.segment, base.bus, base.device)
        ]
        if not present:
            self._function(base)  # raises "does not exist"
        return sorted(present)

    def _check_attachable(
        self,
        sbdf: SBDF,
        domid: int | None,
        allow_unsafe: bool,
        together: frozenset[SBDF] = frozenset(),
    ) -> None:
        """Every refusal, each with its reason (fact sheet §3.4 step 3, plus ours).

        ``together`` are the functions going to the same guest in this request;
        sharing a page with them (or with the guest's own devices) is allowed, as
        SUPPORT.md suggests: pass all the sharers to one guest.
        """
        fn = self._function(sbdf)
        owner = lp.assigned_domid(self.xs, sbdf)
        if owner is not None:
            raise Refused(
                "already-assigned",
                f"PCI device {sbdf} is already assigned to domain {owner}",
            )
        if sbdf not in self.platform.pciback_bound():
            raise Refused(
                "not-assignable",
                f"PCI device {sbdf} is not assignable (not bound to pciback; "
                "use xl pci-assignable-add)",
            )
        # Beyond libxl: all functions of one device, and all devices of one IOMMU group
        # (which the IOMMU cannot tell apart, e.g. behind a PCIe-to-PCI bridge), must go
        # to the same guest. Neither Xen nor libxl enforces this (fact sheet §3.7).
        for other in self.platform.host_functions():
            o = other.sbdf
            same_slot = (o.segment, o.bus, o.device) == (sbdf.segment, sbdf.bus, sbdf.device)
            same_group = fn.iommu_group is not None and other.iommu_group == fn.iommu_group
            if o == sbdf or not (same_slot or same_group):
                continue
            o_owner = lp.assigned_domid(self.xs, o)
            if o_owner is not None and o_owner != domid:
                what = "function" if same_slot else f"IOMMU group {fn.iommu_group} member"
                raise Refused(
                    "split-functions",
                    f"PCI device {sbdf}: {what} {o} is assigned to domain {o_owner}; "
                    "functions of one device (or one IOMMU group) may not be split "
                    "between guests",
                )
        neighbours = [
            o
            for o in self.platform.host_functions()
            if o.sbdf not in together
            and (domid is None or lp.assigned_domid(self.xs, o.sbdf) != domid)
        ]
        # The one refusal table (check.rules.REFUSALS), read by ``xenpci check`` and
        # ``xenpci pci guest-view`` too: same rules, same reason texts.
        facts = HostFacts(functions=neighbours, source="xl", iommu=self.hv.iommu_enabled)
        for code, text, overridable in check_refusals(facts, fn, allow_unsafe=allow_unsafe):
            raise Refused(code, f"{text} (override with --allow-unsafe)" if overridable else text)

    def _pci_add(
        self,
        rec: DomainRecord,
        spec: PciSpec,
        *,
        starting: bool,
        allow_unsafe: bool = False,
        together: frozenset[SBDF] = frozenset(),
    ) -> None:
        functions = self._functions_of(spec)
        together = together | frozenset(functions)
        for sbdf in functions:
            self._check_attachable(sbdf, rec.domid, allow_unsafe or rec.allow_unsafe, together)
        done: list[SBDF] = []
        try:
            for sbdf in functions:
                vdevfn = spec.vdevfn | (sbdf.function if spec.all_functions else 0)
                self._do_pci_add(rec, sbdf, spec, vdevfn, starting=starting)
                done.append(sbdf)
        except BaseException:
            for sbdf in reversed(done):
                self._pci_remove(rec, sbdf, force=True, timeout=min(self.timeout, 1.0))
            raise

    def _do_pci_add(
        self, rec: DomainRecord, sbdf: SBDF, spec: PciSpec, vdevfn: int, *, starting: bool
    ) -> None:
        """``do_pci_add`` + ``pci_add_dm_done`` for one function (PV: no device model)."""
        fn = self._function(sbdf)
        lp.set_assigned_domid(self.xs, sbdf, rec.domid)
        rec.grants[sbdf] = Grants()
        try:
            # sysfs ``reset`` (libxl__device_pci_reset); pciback restores the config it saved
            self.platform.reset_device(sbdf)
            iomem: list[tuple[int, int]] = []
            ioports: list[tuple[int, int]] = []
            for kind, first, nr in bar_page_ranges(fn):
                if kind == "ioport":
                    self._dom0.ioport_permission(rec.domid, first, nr, True)
                    ioports.append((first, nr))
                else:
                    self._dom0.iomem_permission(rec.domid, first, nr, True)
                    iomem.append((first, nr))
                rec.grants[sbdf] = Grants(tuple(iomem), tuple(ioports))
            irq = legacy_irq(fn)
            pirq: int | None = None
            if irq is not None:
                # xc_physdev_map_pirq(domid, irq, &pirq): the guest's pirq equals dom0's irq.
                pirq = self._dom0.map_pirq(rec.domid, irq)
                rec.grants[sbdf] = Grants(tuple(iomem), tuple(ioports), pirq)
                self._dom0.irq_permission(rec.domid, pirq, True)
            if spec.permissive:
                self.platform.pciback_set_permissive(sbdf)
            assigned = False
            if self.hv.iommu_enabled:
                self._dom0.assign_device(rec.domid, sbdf.sbdf_int)
                assigned = True
            rec.grants[sbdf] = Grants(tuple(iomem), tuple(ioports), pirq, assigned)
            dev = lp.PciBackendDevice(
                sbdf,
                vdevfn=vdevfn,
                name=spec.name,
                msitranslate=spec.msitranslate,
                power_mgmt=spec.power_mgmt,
                permissive=spec.permissive,
                rdm_policy=spec.rdm_policy,
            )
            lp.device_pci_add_xenstore(
                self.xs,
                rec.domid,
                rec.name,
                dev,
                starting=starting,
                timeout=self.timeout,
                cancel=rec.cancel,
            )
        except HvError as e:
            self._release(rec, sbdf)
            if not self._alive(rec.domid):
                # The guest died under us (xl destroy, a crash): the hypercall failed
                # because the domain is gone, which is what the caller must hear, the
                # same error a death seen while waiting on the backend gives.
                raise DomainGone(rec.domid) from e
            raise ToolstackError(f"PCI device {sbdf}: hypervisor refused: {e}") from e
        except BaseException:
            self._release(rec, sbdf)
            raise

    # ------------------------------------------------------------------ detach
    def pci_detach(self, dom: int | str, spec: PciSpec, *, force: bool = False) -> None:
        """``xl pci-detach [-f]``; functions are removed 7 -> 0 as libxl's ``next_func``."""
        what = str(spec.sbdf or spec.name)
        with self._records_lock:
            rec = self._domain(dom)
        # This domain's lock only: the Closing handshake waits on the guest.
        with self._traced("pci-detach", domain=str(dom), spec=what), rec.lock:
            self._check_alive(rec)
            base = self.resolve(spec)
            attached = {e.sbdf for e in lp.device_pci_list(self.xs, rec.domid)}
            if spec.all_functions:
                targets = sorted(
                    (
                        s
                        for s in attached
                        if (s.segment, s.bus, s.device) == (base.segment, base.bus, base.device)
                    ),
                    reverse=True,
                )
            else:
                targets = [base]
            if not targets or any(t not in attached for t in targets):
                raise ToolstackError(
                    f"PCI device {base} is not attached to domain {rec.domid}",
                    LibxlErrorCode.ERROR_INVAL,
                )
            for sbdf in targets:
                self._pci_remove(rec, sbdf, force=force, timeout=self.timeout, cancel=rec.cancel)

    def _pci_remove(
        self,
        rec: DomainRecord,
        sbdf: SBDF,
        *,
        force: bool,
        timeout: float,
        cancel: lp.Cancel | None = None,
    ) -> None:
        # Guest first (Closing handshake, pcifront unbinds its driver), then the hypervisor
        # state; libxl does the reverse (pci_remove_detached before the XenStore removal).
        try:
            lp.device_pci_remove_xenstore(
                self.xs, rec.domid, sbdf, timeout=timeout, force=force, cancel=cancel
            )
        except ToolstackError:
            if not force:
                raise
        self._release(rec, sbdf)

    def _release(self, rec: DomainRecord, sbdf: SBDF) -> None:
        """Revoke what the attach granted, de-assign, reset, and forget the owner."""
        g = rec.grants.pop(sbdf, Grants())
        if self._alive(rec.domid):
            for first, nr in g.iomem:
                self._ignore_hv(self._dom0.iomem_permission, rec.domid, first, nr, False)
            for first, nr in g.ioports:
                self._ignore_hv(self._dom0.ioport_permission, rec.domid, first, nr, False)
            if g.pirq is not None:
                self._ignore_hv(self._dom0.irq_permission, rec.domid, g.pirq, False)
                self._ignore_hv(self._dom0.unmap_pirq, rec.domid, g.pirq)
            if g.assigned:
                self._ignore_hv(self._dom0.deassign_device, rec.domid, sbdf.sbdf_int)
        self.platform.reset_device(sbdf)
        with contextlib.suppress(XsError):
            lp.clear_assigned_domid(self.xs, sbdf)

    @staticmethod
    def _check_alive(rec: DomainRecord) -> None:
        """A cancelled domain (being destroyed) takes no new operation."""
        if rec.cancel.cancelled:
            raise DomainGone(rec.domid)

    def _alive(self, domid: int) -> bool:
        return any(d.domid == domid for d in self.hv.domains())

    @staticmethod
    def _ignore_hv(call: Callable[..., object], *args: object) -> None:
        # the domain may already be gone; teardown must go on
        with contextlib.suppress(HvError):
            call(*args)


def _vcpu_seconds(hv: Hypervisor, domid: int) -> float:
    """CPU time the domain's vCPU thread has used (``xc_domain_getinfo``'s ``cpu_time``).

    Read from Linux's per-thread accounting (``/proc/self/task/TID/schedstat``,
    nanoseconds; else ``stat``'s utime+stime in clock ticks), by the thread's id:
    a thread that ended meanwhile simply reads as 0 (asking a dead thread's
    pthread CPU clock would be undefined behaviour). A domain without a thread
    reports what its executor lane has used (the daemon's real-time executor
    charges each lane its tasks' CPU time; a virtual-clock run, 0).
    """
    try:
        vcpu = hv.domain(domid).vcpu
    except HvError:
        return 0.0
    if isinstance(vcpu, SteppedVcpu):
        return vcpu.cpu_seconds
    ident = vcpu.ident
    thread = next((t for t in threading.enumerate() if t.ident == ident), None)
    if ident is None or thread is None or thread.native_id is None:
        return 0.0
    task = f"/proc/self/task/{thread.native_id}"
    try:
        with open(f"{task}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"{task}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0  # the thread ended between the lookup and the read


def _pci_json(e: lp.PciBackendEntry) -> dict[str, object]:
    """One ``libxl_device_pci`` as ``libxl_device_pci_gen_json`` writes it (IDL order,
    defaults left out)."""
    s = e.sbdf
    # the backend's ``opts-N``: "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict"
    opts = dict(kv.partition("=")[::2] for kv in (e.opts or "").split(",") if kv)
    fields: list[tuple[str, object]] = [
        ("func", s.function),
        ("dev", s.device),
        ("bus", s.bus),
        ("domain", s.segment),
        ("vdevfn", e.vdevfn),
        ("msitranslate", opts.get("msitranslate") == "1"),
        ("power_mgmt", opts.get("power_mgmt") == "1"),
        ("permissive", opts.get("permissive") == "1"),
        ("rdm_policy", opts.get("rdm_policy")),
        ("name", e.name),
    ]
    return {k: v for k, v in fields if v}
