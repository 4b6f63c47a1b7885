"""pcifront's XenBus frontend driver: the guest half of the PCI split driver.

Models ``pcifront_xenbus_probe``, ``pcifront_publish_info``,
``pcifront_backend_changed``, ``pcifront_try_connect``/``pcifront_connect``,
``pcifront_detach_devices``/``pcifront_attach_devices``,
``pcifront_try_disconnect`` and ``pcifront_xenbus_remove`` of Linux
``drivers/pci/xen-pcifront.c`` (fact sheet §2.1), and the guest side of MSI
set-up in ``arch/x86/pci/xen.c`` (§2.3): the pirqs the backend returns are
bound to event channels of the guest.

The state logic is :class:`xenpci.xenbus.state.XenbusDevice` (sans-IO); this
module is its shell: it runs the actions the core returns (write ``state``,
grant the page, scan roots) against the guest's own XenStore client and
hypercall handle. Watch callbacks run on the XenStore client's callback
thread; the event-channel upcall runs on the guest's vCPU.

Deliberate differences: one frontend per guest as in Linux, but not a global
(``pcifront_dev``); AER requests from the backend are answered with
``PCI_ERS_RESULT_NONE`` (no guest driver has error handlers).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from xenpci.abi import pciif
from xenpci.abi.xenbus import XenbusState
from xenpci.errors import XenpciError
from xenpci.pci.address import SBDF
from xenpci.pcifront import ops
from xenpci.pcifront.errors import NotConnected, PcifrontError
from xenpci.trace import Kind, Trace
from xenpci.xenbus import pci_keys
from xenpci.xenbus.client import xenbus_read_otherend_details, xenbus_watch_otherend
from xenpci.xenbus.state import DriverCallback, Role, XenbusDevice
from xenpci.xenbus.watch import XenbusWatch
from xenpci.xenstore.client import XsClient, XsTransaction
from xenpci.xenstore.errors import XsError

if TYPE_CHECKING:
    from xenpci.hv.hypercalls import Hypercalls
    from xenpci.hv.scheduler import Scheduler

S = XenbusState


def frontend_node(domid: int) -> str:
    """``/local/domain/<domid>/device/pci/0``: the one pcifront device of a guest."""
    return pci_keys.frontend_path(domid)


# What pcifront needs of the guest PCI core above it (``xenpci.guest.pci_core``
# provides it): typed structurally, so this layer does not import the guest's.
class RootBus(Protocol):
    """A root bus ``pcifront_scan_root`` created."""

    def scan(self) -> Sequence[object]:
        """Probe the bus; return the devices newly found."""
        ...


class PciCore(Protocol):
    """The guest PCI core's bus registry."""

    def add_root(self, domain: int, number: int, ops: Pcifront) -> RootBus: ...

    def remove(self, sbdf: SBDF) -> object: ...

    def clear(self) -> None: ...


class RootBusId(Protocol):
    @property
    def domain(self) -> int: ...

    @property
    def number(self) -> int: ...


class PciDevice(Protocol):
    """A device the guest found: its address and the pirqs MSI set-up recorded."""

    @property
    def bus(self) -> RootBusId: ...

    @property
    def devfn(self) -> int: ...

    msi_pirqs: list[int]
    msix_pirqs: list[int]


def parse_root(text: str) -> tuple[int, int]:
    """``root-N`` is ``%x:%x`` (domain:bus) as ``pcifront_connect`` scans it."""
    try:
        d, b = pci_keys.scan_root(text)
    except ValueError:
        raise PcifrontError(f"root {text!r} is not DDDD:BB") from None
    if not (0 <= d <= 0xFFFF and 0 <= b <= 0xFF):
        raise PcifrontError(f"root {text!r} out of range")
    return d, b


def parse_vdev(text: str) -> SBDF:
    """``vdev-N`` is ``%x:%x:%x.%x`` (domain:bus:slot.func, func printed ``%02x``)."""
    try:
        return SBDF(*pci_keys.scan_bdf(text))  # the sscanf format pciback reads dev-N with
    except (ValueError, XenpciError) as e:
        raise PcifrontError(f"vdev {text!r} is not DDDD:BB:SS.FF ({e})") from None


class Pcifront:
    """The pcifront device of one guest (``struct pcifront_device``).

    ``hc`` is the guest's hypercall handle, ``xs`` its XenStore client (acting
    as the guest's domid), ``pci`` the guest PCI core whose root buses this
    driver creates and fills.
    """

    def __init__(
        self,
        domid: int,
        hc: Hypercalls,
        xs: XsClient,
        pci: PciCore,
        *,
        op_timeout: float = ops.DEFAULT_OP_TIMEOUT,
        on_vcpu: Callable[[], bool] = lambda: False,
        executor: Scheduler | None = None,
        trace: Trace | None = None,
    ) -> None:
        self.domid = domid
        self.hc = hc
        self.xs = xs
        self.pci = pci
        self.op_timeout = op_timeout
        self.on_vcpu = on_vcpu
        self.executor = executor
        self.trace = trace
        self.nodename = frontend_node(domid)
        self.xenbus = XenbusDevice(Role.FRONTEND)
        self.backend_path = ""
        self.backend_id = 0
        self.gfn: int | None = None
        self.gref: int | None = None
        self.evtchn: int | None = None
        self.chan: ops.PciOpChannel | None = None
        self.watch: XenbusWatch | None = None
        self._removed = False

    # -- probe / remove -----------------------------------------------------
    def probe(self) -> None:
        """``pcifront_xenbus_probe``: publish the page and channel, watch the backend."""
        self.backend_id, self.backend_path = xenbus_read_otherend_details(
            self.xs, self.nodename, "backend-id", "backend"
        )
        self.watch = xenbus_watch_otherend(
            self.xs, self.xenbus, self.nodename, self.backend_path, self._callback
        )
        self.watch.start()

    def remove(self, *, halted: bool = False) -> None:
        """``pcifront_xenbus_remove``: free roots, unbind, end the grant, free the page.

        The XenBus device is unregistered as ``xenbus_dev_remove`` does (Closed,
        written only if our node still exists). With ``halted`` the kernel has
        stopped running instead: the watches go and nothing more is written.
        """
        self._removed = True
        if self.watch is not None:
            if halted:
                self.watch.close()
            else:
                self.watch.remove()
        self._disconnect()
        self._free_ring()

    def superseded(self) -> bool:
        """Our frontend node was re-created for a new device (``XenbusWatch.superseded``)."""
        return self.watch is not None and self.watch.superseded()

    def wait_connected(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until the frontend has reached Connected ``count`` times (hot-plug rescans)."""
        if self.watch is None:
            return False
        return self.watch.wait_for(
            lambda d: d.history.count(S.XenbusStateConnected) >= count, timeout
        )

    # -- ops for the guest PCI core (struct pci_ops) ------------------------
    def read(self, domain: int, bus: int, devfn: int, offset: int, size: int) -> tuple[int, int]:
        chan = self.chan  # ``_chan`` inlined: every devfn of every rescan comes here
        if chan is None:
            chan = self._chan()  # raises NotConnected
        return ops.conf_read(chan, domain, bus, devfn, offset, size)

    def write(self, domain: int, bus: int, devfn: int, offset: int, size: int, value: int) -> int:
        return ops.conf_write(self._chan(), domain, bus, devfn, offset, size, value)

    def _chan(self) -> ops.PciOpChannel:
        chan = self.chan
        if chan is None:
            raise NotConnected(f"d{self.domid}: pcifront has no shared page")
        return chan

    # -- MSI / MSI-X (arch/x86/pci/xen.c) -------------------------------------
    def enable_msi(self, dev: PciDevice, handler: Callable[[int], None]) -> int:
        """``xen_setup_msi_irqs`` for one vector: returns the guest event-channel port."""
        pirq = ops.enable_msi(self._chan(), dev.bus.domain, dev.bus.number, dev.devfn)
        dev.msi_pirqs = [pirq]
        return self._bind_pirq(pirq, handler)

    def disable_msi(self, dev: PciDevice) -> int:
        err = ops.disable_msi(self._chan(), dev.bus.domain, dev.bus.number, dev.devfn)
        dev.msi_pirqs = []
        return err

    def enable_msix(
        self, dev: PciDevice, entries: list[int], handler: Callable[[int], None]
    ) -> list[int]:
        """MSI-X: one pirq per table entry, each bound to a guest event channel."""
        pirqs = ops.enable_msix(self._chan(), dev.bus.domain, dev.bus.number, dev.devfn, entries)
        dev.msix_pirqs = pirqs
        return [self._bind_pirq(p, handler) for p in pirqs]

    def disable_msix(self, dev: PciDevice) -> int:
        err = ops.disable_msix(self._chan(), dev.bus.domain, dev.bus.number, dev.devfn)
        dev.msix_pirqs = []
        return err

    def _bind_pirq(self, pirq: int, handler: Callable[[int], None]) -> int:
        # xen_bind_pirq_msi_to_irq(DOMID_SELF): the interrupt arrives as an event.
        port = self.hc.evtchn_bind_pirq(pirq)
        self.hc.evtchn_set_handler(port, handler)
        return port

    # -- driver callbacks (run by the XenBus shell) ---------------------------
    def _callback(self, cb: DriverCallback) -> None:
        if self._removed:
            return  # a stale event for a removed device
        if cb is DriverCallback.PUBLISH:
            self._publish_info()
        elif cb is DriverCallback.CONNECT:
            self._connect()
        elif cb is DriverCallback.RECONFIGURE:
            self._detach_devices()
        elif cb is DriverCallback.DISCONNECT:
            self._disconnect()

    def _publish_info(self) -> None:
        """``pcifront_publish_info`` (with ``alloc_pdev``'s page set-up)."""
        hc = self.hc
        gfn = hc.alloc_page()
        page = hc.page(gfn)
        info = pciif.xen_pci_sharedinfo.from_buffer(page)
        info.flags = pciif.XEN_PCIB_AERHANDLER
        gref = hc.gnttab_grant_foreign_access(self.backend_id, gfn, False)
        port = hc.evtchn_alloc_unbound(self.backend_id)
        chan = ops.PciOpChannel(
            page,
            functools.partial(hc.evtchn_send, port),  # no Python frame of its own
            timeout=self.op_timeout,
            on_vcpu=self.on_vcpu,
            executor=self.executor,
        )
        # A partial (no lambda frame): this runs once per op, for the backend's answer.
        hc.evtchn_set_handler(port, functools.partial(self._handle_event, chan))
        self.gfn, self.gref, self.evtchn, self.chan = gfn, gref, port, chan

        def body(t: XsTransaction) -> None:
            w = t.write
            w(f"{self.nodename}/pci-op-ref", str(gref))
            w(f"{self.nodename}/event-channel", str(port))
            w(f"{self.nodename}/magic", pciif.XEN_PCI_MAGIC)

        self.xs.retry_transaction(body)

    def _handle_event(self, chan: ops.PciOpChannel, _port: int = 0) -> None:
        # pcifront_handler_aer: wake the op waiter; answer AER requests at once.
        if self.executor is None:  # deterministic mode polls the page: nobody to wake
            chan.on_event()
        if chan.page[0] & pciif.XEN_PCIB_active:  # little-endian flags: the bit is in byte 0
            info = chan.info
            info.aer_op.err = 1  # PCI_ERS_RESULT_NONE: no guest driver handles AER
            info.flags &= ~pciif.XEN_PCIB_active
            if self.evtchn is not None:
                with contextlib.suppress(XenpciError):
                    self.hc.evtchn_send(self.evtchn)

    def _connect(self) -> None:
        """``pcifront_connect``: (re)scan every root the backend publishes."""
        try:
            raw = self.xs.read(f"{self.backend_path}/root_num")
            roots = [
                parse_root(self.xs.read(f"{self.backend_path}/{pci_keys.root_key(i)}").decode())
                for i in range(int(raw))
            ]
        except XsError:
            roots = [(0, 0)]  # Linux: "No PCI Roots found, trying 0000:00"
        except ValueError:
            raise PcifrontError(f"root_num {raw!r} is not a number") from None
        found = 0
        for dom, bus in roots:
            found += len(self.pci.add_root(dom, bus, self).scan())
        if self.trace is not None:
            self.trace.record(
                Kind.PCIFRONT_SCAN, self.domid, "dom0", roots=len(roots), new_devices=found
            )

    def _detach_devices(self) -> None:
        """``pcifront_detach_devices``: remove the devices whose ``state-i`` is Closing."""
        be = self.backend_path
        try:
            num = int(self.xs.read(f"{be}/num_devs"))
        except (XsError, ValueError):
            return
        for i in range(num):
            try:
                st = int(self.xs.read(f"{be}/{pci_keys.state_key(i)}"))
            except (XsError, ValueError):
                continue
            if st != S.XenbusStateClosing:
                continue
            try:
                sbdf = parse_vdev(self.xs.read(f"{be}/{pci_keys.vdev_key(i)}").decode())
            except (XsError, PcifrontError):
                continue
            self.pci.remove(sbdf)

    def _disconnect(self) -> None:
        self.pci.clear()

    def _free_ring(self) -> None:
        hc = self.hc
        if self.evtchn is not None:
            with contextlib.suppress(XenpciError):
                hc.evtchn_close(self.evtchn)
            self.evtchn = None
        self.chan = None
        if self.gref is not None:
            try:
                hc.gnttab_end_foreign_access(self.gref)
            except XenpciError:
                # Still mapped by the backend: Linux defers freeing the page
                # until the grant is released; we keep it (the domain's
                # destruction reclaims it) rather than reuse a shared frame.
                self.gref = self.gfn = None
                return
            self.gref = None
        if self.gfn is not None:
            with contextlib.suppress(XenpciError):
                hc.free_page(self.gfn)
            self.gfn = None
