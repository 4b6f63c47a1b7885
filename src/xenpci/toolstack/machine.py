"""The machine: hypervisor, dom0 (XenStore + pciback), host devices, guests.

There is no single real counterpart; this is what booting a Xen host does
before any ``xl`` command runs: Xen starts (IOMMU on or off), dom0's kernel
binds pciback's XenBus backend driver (watching ``backend/pci``), xenstored
runs (in-process for dom0's components; guests reach it over their own ring
page and event channel, as Linux's ``xenbus_comms`` does; optionally also on
a Unix socket through :class:`xenpci.xenstore.server.XenstoredServer`), the
host bridge has given every device its BAR addresses, and each guest created
later runs a PV kernel (XenBus frontend, pcifront, PCI core) on its own vCPU
thread.

It implements the toolstack's :class:`xenpci.toolstack.libxl.Platform`:
``host_functions``, ``pciback_bind``/``unbind``/``set_permissive`` (pciback's
sysfs files), ``reset_device`` (sysfs ``reset``: the config header is restored
after it, from what pciback saved at seize for a device it holds),
``start_guest`` (optionally paused) / ``pause_guest`` / ``unpause_guest`` /
``guest_paused`` / ``stop_guest``. Pausing is the hypervisor's
(``XEN_DOMCTL_pausedomain``, :meth:`xenpci.hv.Hypercalls.domctl_pausedomain`):
the guest's kernel handles no XenBus event and no event-channel upcall until
the last unpause.

dom0's block devices (``block_devices``) are its NVMe driver bound to every
NVMe-model function pciback does not hold, ``/dev/nvme0n1`` first, with
blkback serving ``backend/vbd``; both start on first use (a ``disk=`` in a
config), so a machine without disks runs neither. An HVM guest
(``start_hvm_guest``) is :func:`xenpci.toolstack.iomodels.start_hvm_guest`'s:
a device model in dom0 serving the guest's emulated NVMe controller from one
of those block devices.

Dom0's MSI set-up is pciback's
:class:`~xenpci.pciback.platform.HvInterruptPlatform`; the machine wires a
model device's messages to it, so each reaches the guest's event channel
through ``Hypervisor.raise_pirq``.

Executors: threaded (a thread per vCPU, the default), ``deterministic=True``
(everything as tasks of one executor on a virtual clock, driven by the caller),
or a given ``executor`` (the machine daemon's real-time one, whose serving
thread runs all machine work; ``serve_xenstore`` then only moves bytes on its
thread and posts each client's requests to that executor).

Deliberate differences: the host-bridge allocator is a bump allocator over
three fixed windows (no bridge windows are programmed); devices from dumps
and sysfs keep their host addresses and have nothing behind their BARs.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenpci.blkback.blkback import BlockDevice
from xenpci.blkback.dom0_block import Dom0Disk
from xenpci.blkback.xenbus import BlkbackDriver
from xenpci.check.host import HostFacts
from xenpci.check.rules import refusals
from xenpci.devices.base import DeviceModel
from xenpci.devices.irq import Interrupt
from xenpci.devices.nvme import NvmeFunction
from xenpci.errors import XenpciError
from xenpci.guest.kernel import GuestKernel
from xenpci.guest.lspci import guest_function
from xenpci.hv import HvError, Hypercalls, Hypervisor, SteppedVcpu
from xenpci.hv.domain import Domain
from xenpci.hv.scheduler import Scheduler
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.function import PciFunction
from xenpci.pciback.conf_space import DeviceOptions, ModuleParams
from xenpci.pciback.conf_space.dom0_pci import Dom0PciDev
from xenpci.pciback.conf_space.explain import Difference, WriteRule, explain, write_rules
from xenpci.pciback.pci_stub import PciStub, PcistubDevice, pci_reset_function
from xenpci.pciback.platform import HvInterruptPlatform
from xenpci.pciback.xenbus import PcibackDriver
from xenpci.pcifront.ops import DEFAULT_OP_TIMEOUT
from xenpci.toolstack.errors import PauseError
from xenpci.toolstack.libxl import Libxl
from xenpci.toolstack.xlcfg import DomainConfig, PciSpec
from xenpci.trace import Trace
from xenpci.xenstore.client import XsClient
from xenpci.xenstore.core import XenStore
from xenpci.xenstore.gate import gate_of
from xenpci.xenstore.perms import Perms
from xenpci.xenstore.ring import GuestRing, XenstoredRings
from xenpci.xenstore.server import XenstoredServer

if TYPE_CHECKING:
    from xenpci.toolstack.iomodels import HvmGuest


class MachineError(XenpciError):
    """A machine-level request that cannot be done (unknown device, no room...)."""


@dataclass
class _Window:
    name: str
    base: int
    limit: int
    next: int = 0

    def take(self, size: int) -> int:
        start = max(self.next, self.base)
        start = (start + size - 1) & ~(size - 1)  # natural alignment, as BARs need
        if start + size > self.limit:
            raise MachineError(f"host bridge {self.name} window full ({size:#x} bytes wanted)")
        self.next = start + size
        return start


class HostBridge:
    """A bump allocator for model devices' BARs (firmware's job on real hosts)."""

    def __init__(self) -> None:
        self.io = _Window("io", 0xC000, 0x10000)
        self.mem32 = _Window("mem32", 0xC000_0000, 0xF000_0000)
        self.mem64 = _Window("mem64", 0x40_0000_0000, 0x80_0000_0000)

    def place(self, fn: DeviceModel) -> list[tuple[int, str, int, int]]:
        """Give every BAR of ``fn`` an address; returns (index, kind, address, size)."""
        out: list[tuple[int, str, int, int]] = []
        # Biggest first keeps the windows dense.
        for bar in sorted(fn.bars, key=lambda b: -(b.size or 0)):
            if not bar.size:
                continue
            if bar.kind == "io":
                win = self.io
            elif bar.kind == "mem64" and bar.prefetchable:
                win = self.mem64
            else:
                win = self.mem32
            addr = win.take(max(bar.size, 16))
            fn.assign_bar(bar.index, addr)
            out.append((bar.index, bar.kind, addr, bar.size))
        return out


class Machine:
    """One Xen host: see the module docstring. Use as a context manager."""

    def _domain_exists(self, domid: int) -> bool:
        try:
            self.hv.domain(domid)
        except HvError:
            return False
        return True

    def __init__(
        self,
        *,
        iommu: bool = True,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
        passthrough: bool = False,
        trace: Trace | None = None,
        permissive: bool = False,
        guest_xenstore: str = "ring",
        deterministic: bool = False,
        executor: Scheduler | None = None,
    ) -> None:
        if guest_xenstore not in ("ring", "in-process"):
            raise MachineError(f"guest_xenstore: 'ring' or 'in-process', not {guest_xenstore!r}")
        self.guest_xenstore = guest_xenstore
        self.trace = trace if trace is not None else Trace()
        #: deterministic: the whole machine runs on the caller's thread, as tasks of one
        #: executor (``self.hv.scheduler``) on a virtual clock; runs replay identically.
        #: ``executor``: the machine runs as tasks of that one instead (the daemon's
        #: real-time executor, whose thread is then the only one running machine work).
        self.hv = Hypervisor(
            iommu=iommu, trace=self.trace, deterministic=deterministic, scheduler=executor
        )
        ex = self.hv.scheduler
        if ex is not None:
            self.trace.use_clock(ex.clock.now)
        # Deterministic mode: dom0's kernel watch callbacks (pciback's) run on a lane of
        # their own, Linux's xenwatch kthread, so dom0's vCPU stays free for the event
        # upcalls that xenstored's ring service runs from: a busy watch handler does
        # not stop the guests' XenStore, as in Linux.
        dom0_lane = ex.lane("xenwatch") if ex is not None else None
        self.op_timeout = op_timeout
        # SET_PERMS naming a domain asks the hypervisor whether it runs, as C does.
        self.store = XenStore(trace=self.trace, domain_exists=self._domain_exists)
        # xenstored's side of the guests' rings, served on dom0's vCPU.
        self.rings = XenstoredRings(self.store, self.hv.dom0) if guest_xenstore == "ring" else None
        #: dom0's toolstack connection (what libxl/xl use).
        self.xs = XsClient.in_process(
            self.store, 0, lane=ex.lane("toolstack") if ex is not None else None
        )
        self.irq_platform = HvInterruptPlatform(self.hv.dom0.hypercalls)
        self.stub = PciStub(ModuleParams(permissive=permissive), self.irq_platform)
        self._pciback_xs = XsClient.in_process(self.store, 0, lane=dom0_lane)
        self.pciback = PcibackDriver(
            self.hv.dom0.hypercalls,
            self._pciback_xs,
            self.stub,
            self.irq_platform,
            passthrough=passthrough,
            trace=self.trace,
        )
        self.pciback.start()
        self.host_bridge = HostBridge()
        self._host: dict[SBDF, PciFunction] = {}
        self.guests: dict[int, GuestKernel] = {}
        self._guest_clients: dict[int, XsClient] = {}
        self._servers: list[XenstoredServer] = []
        #: dom0's block devices by path and the vbd backend serving them (on first use)
        self._disks: dict[str, Dom0Disk] | None = None
        self.blkback: BlkbackDriver | None = None
        #: HVM guests' device models and drivers, by domid
        self.hvm: dict[int, HvmGuest] = {}
        self._lock = threading.RLock()
        self._closed = False

    # -- context manager ------------------------------------------------------------
    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def dom0(self) -> Hypercalls:
        return self.hv.dom0.hypercalls

    # -- host devices -------------------------------------------------------------------
    def add_host_devices(self, functions: Iterable[PciFunction]) -> list[PciFunction]:
        """Put functions on the host. Models get BARs, MMIO/IO handlers, DMA and IRQ wiring."""
        added = []
        with self._lock:
            for fn in functions:
                if fn.sbdf in self._host:
                    raise MachineError(f"a function {fn.sbdf} is already on the host")
                self._host[fn.sbdf] = fn
                if isinstance(fn, DeviceModel):
                    self._wire_model(fn)
                added.append(fn)
        return added

    def _wire_model(self, fn: DeviceModel) -> None:
        for index, kind, addr, size in self.host_bridge.place(fn):
            handler = fn.bar_handler(index)
            if kind == "io":
                self.hv.iobus.register_ioport(addr, size, handler)
            else:
                self.hv.iobus.register_mmio(addr, size, handler)
        fn.attach_dma(self.hv.iommu.dma_port(fn.sbdf.sbdf_int))
        fn.connect_irq(functools.partial(self._raise, fn))

    def _raise(self, fn: PciFunction, irq: Interrupt) -> None:
        if irq.kind == "intx":
            if not irq.asserted:
                return
            line = fn.config.read(regs.PCI_INTERRUPT_LINE, 1)
            pirq: int | None = line if 0 < line < 0xFF else None
        else:
            pirq = self.irq_platform.pirq_for(irq.kind, fn.sbdf, irq.vector)
        if pirq is not None:
            self.hv.raise_pirq(pirq)

    def host_function(self, sbdf: SBDF) -> PciFunction:
        fn = self._host.get(sbdf)
        if fn is None:
            raise MachineError(f"no PCI function {sbdf} on this host")
        return fn

    # -- Platform (xenpci.toolstack.libxl) ----------------------------------------------
    def host_functions(self) -> list[PciFunction]:
        with self._lock:
            return [self._host[s] for s in sorted(self._host, key=lambda s: s.sbdf_int)]

    def pciback_bound(self) -> set[SBDF]:
        with self.pciback.pool_lock:
            return {p.sbdf for p in self.stub}

    def pciback_bind(self, sbdf: SBDF, options: DeviceOptions | None = None) -> PcistubDevice:
        """Seize ``sbdf`` for passthrough (``new_slot`` + ``bind``), with per-device options.

        A function dom0 drives as a block device is refused: Linux would first have
        to unbind its NVMe driver from under the disks blkback serves.
        """
        fn = self.host_function(sbdf)
        for path, disk in (self._disks or {}).items():
            if disk.function.sbdf == sbdf:
                raise MachineError(f"{sbdf} is dom0's block device {path}: not assignable")
        with self.pciback.pool_lock:
            return self.stub.seize(fn, options)

    def pciback_unbind(self, sbdf: SBDF) -> None:
        with self.pciback.pool_lock:
            self.stub.release(sbdf)

    def pciback_set_permissive(self, sbdf: SBDF) -> None:
        with self.pciback.pool_lock:
            self.stub.set_permissive(sbdf)

    def reset_device(self, sbdf: SBDF) -> str | None:
        """``echo 1 > /sys/bus/pci/devices/BDF/reset``: the method used, or None.

        Linux's ``pci_reset_function`` saves the config header and restores it
        around the reset, so the BARs stay where firmware put them. For a
        function pciback holds, the state put back is the one pciback saved
        at seize (``pcistub_init_device``), as after every reset it does
        (``pcistub_put_pci_dev``): a reset never leaves a seized device with
        zeroed BARs.
        """
        fn = self.host_function(sbdf)
        with self.pciback.pool_lock:
            if sbdf in self.stub:
                psdev = self.stub.get(sbdf)
                linux, saved = psdev.dev_data.linux, psdev.saved_state
            else:
                linux = Dom0PciDev.probe(fn)
                saved = linux.pci_save_state()
            method = pci_reset_function(fn)
            linux.pci_restore_state(saved)
            return method

    # -- dom0's disks and HVM guests -------------------------------------------------------
    def block_devices(self) -> dict[str, BlockDevice]:
        """dom0's block devices by path (``/dev/nvme0n1``...), blkback serving them.

        Bound on first call: dom0's NVMe driver probes every NVMe-model function
        pciback does not hold, in address order.
        """
        with self._lock:
            if self._disks is None:
                disks: dict[str, Dom0Disk] = {}
                bound = self.pciback_bound()
                try:
                    for fn in self.host_functions():
                        if isinstance(fn, NvmeFunction) and fn.sbdf not in bound:
                            name = f"nvme{len(disks)}n1"
                            disk = Dom0Disk(self.hv.dom0, self.xs, fn, self.irq_platform, name=name)
                            disk.probe()
                            disks[f"/dev/{name}"] = disk
                    blkback = BlkbackDriver(self.dom0, self.xs, disks, trace=self.trace)
                    blkback.start()
                except BaseException:
                    for d in disks.values():
                        with contextlib.suppress(XenpciError):
                            d.remove()
                    raise
                self._disks, self.blkback = disks, blkback
            return dict(self._disks)

    def start_hvm_guest(self, name: str, memory_kib: int, disk_path: str) -> int:
        """Create an HVM domain whose emulated NVMe controller is backed by ``disk_path``."""
        # iomodels builds on this module (its host is a Machine): imported when used
        from xenpci.toolstack.iomodels import start_hvm_guest

        disk = self.block_devices().get(disk_path)
        if disk is None:
            raise MachineError(f"{disk_path} is not a block device of dom0")
        guest = start_hvm_guest(self, disk, name, memory_kib)
        with self._lock:
            self.hvm[guest.domid] = guest
        return guest.domid

    def start_guest(
        self, name: str, memory_kib: int, *, paused: bool = False, boot: bool = True
    ) -> int:
        """Create a PV domain with its XenStore home and boot its kernel.

        With ``paused`` the kernel boots only at :meth:`unpause_guest`, as
        ``xl create`` builds a paused domain, adds its devices and unpauses
        it last: devices added with ``starting`` then reach pciback before the
        frontend connects (once Connected, pciback ignores ``state-i = 1``
        devices unless the backend is switched to Reconfiguring). A paused
        guest does nothing at all, XenStore requests included. With
        ``boot=False`` the domain runs but its kernel never starts its XenBus
        frontend bus (no pcifront): a guest that acts only by hand.
        """
        dom = self.hv.create_domain(name, memory_kib)
        try:
            return self._make_guest(dom, name, paused=paused, boot=boot)
        except BaseException:
            # A half-made domain must not outlive the failure (e.g. a name XenStore
            # refuses): everything done so far is undone, the domid and name freed.
            self.stop_guest(dom.domid)
            raise

    def _make_guest(self, dom: Domain, name: str, *, paused: bool, boot: bool) -> int:
        """The XenStore home, the XenStore connection and the kernel of a new domain."""
        domid = dom.domid
        home = f"/local/domain/{domid}"
        ro = Perms.of("n0", f"r{domid}")
        rw = Perms.of(f"n{domid}")
        # libxl__domain_make: the home and device/ read-only to the guest,
        # error/, data/ and the rest its own.
        with self.xs.transaction() as t:
            t.write(home, "")
            t.set_perms(home, ro)
            t.write(f"{home}/name", name)
            t.write(f"{home}/domid", str(domid))
            t.write(f"{home}/device", "")
            t.set_perms(f"{home}/device", ro)
            for sub in ("error", "data", "drivers", "feature"):
                t.write(f"{home}/{sub}", "")
                t.set_perms(f"{home}/{sub}", rw)
        # Deterministic mode: the guest's watch callbacks are tasks on its vCPU.
        lane = dom.vcpu if isinstance(dom.vcpu, SteppedVcpu) else None
        if self.guest_xenstore == "ring":
            # The guest's xenbus_comms: its own page granted to dom0 plus an
            # event channel, introduced to xenstored (XS_INTRODUCE).
            ring = GuestRing(dom)
            with gate_of(self.store):
                self.store.introduce_domain(domid, ring.gref, ring.port)
            client = XsClient.ring(ring, lane=lane)
        else:
            with gate_of(self.store):
                self.store.introduce_domain(domid)
            client = XsClient.in_process(self.store, domid, lane=lane)
        kernel = GuestKernel(dom, client, op_timeout=self.op_timeout, trace=self.trace)
        with self._lock:
            self.guests[domid] = kernel
            self._guest_clients[domid] = client
        if paused:
            # Xen builds every domain paused; ours are built running, so pause it
            # before its kernel has anything to run (the vCPU is idle: no wait).
            self.pause_guest(domid)
        elif boot:
            kernel.boot()
        return domid

    def pause_guest(self, domid: int) -> None:
        """``libxl_domain_pause``: the guest's vCPU stops; what reaches it waits."""
        self.guest(domid)  # a guest of this machine, not dom0
        try:
            self.dom0.domctl_pausedomain(domid)
        except HvError as e:
            raise PauseError(domid, "Pausing domain", e.errno, str(e)) from e

    def unpause_guest(self, domid: int) -> None:
        """``libxl_domain_unpause``: on the last unpause the vCPU runs what was queued;
        a guest built paused boots its kernel (its frontends probe)."""
        kernel = self.guest(domid)
        try:
            self.dom0.domctl_unpausedomain(domid)
        except HvError as e:
            raise PauseError(domid, "Unpausing domain", e.errno, str(e)) from e
        if not self.guest_paused(domid):
            kernel.boot()  # idempotent: only a first unpause boots

    def guest_paused(self, domid: int) -> bool:
        """Is the domain paused by the toolstack (``xl list``'s ``p``)?"""
        self.guest(domid)
        try:
            return self.hv.domain(domid).paused
        except HvError:
            return False  # destroyed under us: nothing left paused

    def stop_guest(self, domid: int) -> None:
        """Cut the guest's XenStore connection, stop its kernel, forget it, destroy it.

        The connection goes first, paused or not: a request the kernel is blocked
        on (its reply never comes from a paused vCPU) fails at once with
        ``ConnectionClosed``, so its threads let go and the kernel stops without
        waiting out any timeout; nothing it does from then on reaches the store.
        The domain is destroyed still paused: its vCPU never runs again.
        """
        with self._lock:
            hvm = self.hvm.pop(domid, None)
            kernel = self.guests.pop(domid, None)
            client = self._guest_clients.pop(domid, None)
        if hvm is not None:
            hvm.stop()  # its device model goes before the domain it maps
        if client is not None:
            with contextlib.suppress(XenpciError):
                client.close()
        if kernel is not None:
            kernel.shutdown()
        with contextlib.suppress(XenpciError), gate_of(self.store):
            self.store.release_domain(domid)
        with contextlib.suppress(XenpciError):
            self.xs.rm(f"/local/domain/{domid}")
        with contextlib.suppress(XenpciError):
            self.hv.destroy_domain(domid)

    def guest(self, domid: int) -> GuestKernel:
        kernel = self.guests.get(domid)
        if kernel is None:
            raise MachineError(f"no guest d{domid}")
        return kernel

    # -- XenStore over a socket ---------------------------------------------------------
    def serve_xenstore(self, socket_path: str, ro_socket_path: str | None = None) -> None:
        """Also expose this machine's XenStore on a Unix socket (for xenstore-utils)."""
        # With a real-time executor the server thread only moves bytes: the requests
        # it reads are handled as the executor's tasks, like all machine work. (A
        # virtual-clock executor runs only when its caller drives it: the server
        # serves on its own thread, as in threaded mode.)
        ex = self.hv.scheduler
        server = XenstoredServer(
            self.store,
            socket_path,
            ro_socket_path,
            executor=ex if ex is not None and ex.realtime else None,
        )
        server.start()
        self._servers.append(server)

    # -- teardown -----------------------------------------------------------------------
    def shutdown(self) -> None:
        """Guests first, then pciback (devices reset and released), then the rest."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for domid in list(self.guests):
            self.stop_guest(domid)
        if self.blkback is not None:
            self.blkback.stop()
        for disk in (self._disks or {}).values():
            with contextlib.suppress(XenpciError):
                disk.remove()
        self.pciback.stop()
        with self.pciback.pool_lock:
            for psdev in list(self.stub):
                with contextlib.suppress(XenpciError):
                    self.stub.release(psdev.sbdf)
        for server in self._servers:
            with contextlib.suppress(XenpciError, OSError):
                server.stop()
        for client in (self._pciback_xs, self.xs):
            with contextlib.suppress(XenpciError):
                client.close()
        self.hv.shutdown()


# -- xenpci pci guest-view ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One passed-through device: the host's config, the guest's, and why they differ."""

    host: PciFunction
    guest: PciFunction
    differences: tuple[Difference, ...]
    write_rules: tuple[WriteRule, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A device that was not passed through, and the reason."""

    sbdf: SBDF
    reason: str


@dataclass(frozen=True, slots=True)
class GuestViewReport:
    views: tuple[DeviceView, ...]
    refused: tuple[Refusal, ...]


def boot_guest(
    machine: Machine,
    functions: Sequence[PciFunction],
    name: str = "guest",
    *,
    options: DeviceOptions | None = None,
    permissive: bool = False,
    memory_mib: int = 64,
    allow_unsafe: bool = True,
) -> int:
    """Boot a guest with ``functions`` passed through: the one path, ``xl create``'s.

    The functions are put on the host if they are not there yet and seized by
    pciback with ``options`` (``xl pci-assignable-add``, with per-device module
    options); then :meth:`Libxl.domain_create` does what ``xl create`` with
    ``pci=[...]`` does: the same checks (the one refusal table), permissions,
    IOMMU assignment, backend keys, unpause. ``allow_unsafe`` defaults to True
    here: callers are tests and ``guest-view``, which show a device rather than
    guard a host (the refusals that are never overridable still apply).
    """
    new = [fn for fn in functions if fn.sbdf not in machine._host]
    machine.add_host_devices(new)
    bound = machine.pciback_bound()
    for fn in functions:
        if fn.sbdf not in bound:
            machine.pciback_bind(fn.sbdf, options)
    cfg = DomainConfig(
        name=name,
        memory_mib=memory_mib,
        pci=tuple(PciSpec(fn.sbdf, permissive=permissive) for fn in functions),
    )
    libxl = Libxl(machine, machine.xs, timeout=machine.op_timeout, trace=machine.trace)
    return libxl.domain_create(cfg, allow_unsafe=allow_unsafe)


def refusal_reason(fn: PciFunction, functions: Sequence[PciFunction] = ()) -> str | None:
    """Why ``fn`` is not shown to a guest, or None: the first refusal of the one
    refusal table (:data:`xenpci.check.rules.REFUSALS`) that ``--allow-unsafe``
    does not override, as ``guest_view``'s boot allows the unsafe."""
    facts = HostFacts(functions=list(functions) or [fn], source="guest-view", iommu=True)
    hits = refusals(facts, fn, allow_unsafe=True)
    return hits[0][1] if hits else None


def guest_view(
    functions: Sequence[PciFunction],
    *,
    permissive: bool = False,
    policy: str = "linux",
    op_timeout: float = DEFAULT_OP_TIMEOUT,
    guest_name: str = "guest-view",
) -> GuestViewReport:
    """Boot a machine with one guest, pass ``functions`` through, read what it sees.

    Functions the refusal table refuses are left out (and listed); the others
    go through :func:`boot_guest`, ``xl create``'s path.
    """
    refused = [
        Refusal(fn.sbdf, reason)
        for fn in functions
        if (reason := refusal_reason(fn, functions)) is not None
    ]
    passing = [fn for fn in functions if fn.sbdf not in {r.sbdf for r in refused}]
    if not passing:
        return GuestViewReport((), tuple(refused))
    options = DeviceOptions(policy=policy)  # type: ignore[arg-type]
    views: list[DeviceView] = []
    with Machine(op_timeout=op_timeout) as m:
        domid = boot_guest(m, passing, guest_name, options=options, permissive=permissive)
        kernel = m.guest(domid)
        front = kernel.wait_for_pcifront(10)
        if not front.wait_connected(1, 30):
            raise MachineError(f"guest never connected: {front.watch and front.watch.errors}")
        back = m.pciback.wait_for_device(domid)
        with m.pciback.pool_lock:
            placed: dict[SBDF, PcistubDevice] = {}
            for exported in back.bus.devices():
                addr = back.bus.find(exported)
                if addr is not None:
                    placed[addr.sbdf] = exported
        for dev in list(kernel.pci.devices()):
            psdev = placed.get(dev.sbdf)
            if psdev is None:
                continue
            host = m.host_function(psdev.sbdf)
            seen = guest_function(dev, host.config.known_size, domid)
            with m.pciback.pool_lock:
                diffs = tuple(explain(psdev.dev_data))
                rules = tuple(write_rules(psdev.dev_data))
            views.append(DeviceView(host, seen, diffs, rules))
    return GuestViewReport(tuple(views), tuple(refused))
