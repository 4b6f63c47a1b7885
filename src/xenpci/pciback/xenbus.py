"""pciback's XenBus backend driver: one backend device per guest, in dom0.

Models Linux ``drivers/xen/xen-pciback/xenbus.c`` (fact sheet §1.11):
``xen_pcibk_xenbus_probe``, ``xen_pcibk_be_watch``, ``xen_pcibk_setup_backend``,
``xen_pcibk_export_device``, ``xen_pcibk_publish_pci_root``,
``xen_pcibk_attach`` (map ``pci-op-ref``, bind ``event-channel``, check
``magic``), ``xen_pcibk_reconfigure`` (hot attach/detach),
``xen_pcibk_frontend_changed`` and ``free_pdev``; and the event path of
``pciback_ops.c`` (``xen_pcibk_handle_event``,
``xen_pcibk_test_and_schedule_op``, §1.6).

The XenBus state logic is :class:`xenpci.xenbus.state.XenbusDevice` driven
by :class:`xenpci.xenbus.watch.XenbusWatch`; the pool, the bus modes and the
op logic are pciback's sans-IO core (:class:`~xenpci.pciback.pci_stub.PciStub`,
:class:`~xenpci.pciback.vpci.VpciBackend` /
:class:`~xenpci.pciback.passthrough.PassthroughBackend`,
:func:`~xenpci.pciback.pciback_ops.serve_shared_page`); this module only
wires them to XenStore, the grant table and the event channel.

Op service: the event-channel upcall runs on dom0's vCPU (like Linux's
lateeoi handler scheduling a work item on dom0); it serves exactly one op per
upcall, from a copy of the shared op taken once, and notifies back. Flood
defence (XSA-332 spirit): event channels coalesce in the hypervisor (one
pending bit per port), the handler keeps one ``op_active`` flag per device
(a second event while an op is in service is not queued), and an event with
no request posted is counted as spurious and costs nothing else. Guests are
served in the order their upcalls reach dom0's queue, one op each.

Deliberate differences: before attaching, the backend exports the devices
still Initialising (``xen_pcibk_reconfigure`` as for Initialised): libxl
writes a new guest's devices one transaction each, and if the frontend's
Initialised is handled before a later device's ``be_watch`` event, Linux
connects without that device and ignores it from then on (a race it rarely
loses; a loaded model lost it). Linux loops in ``xen_pcibk_do_op`` while requests
keep arriving; here each op needs its own event (a guest that posts without
notifying waits, which pcifront never does). AER relay requests are not
initiated (no host AER source exists).
"""

from __future__ import annotations

import contextlib
import struct
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xenpci.abi import pciif
from xenpci.abi.pciif import OP_OFFSET
from xenpci.abi.xenbus import XenbusState
from xenpci.errors import XenpciError
from xenpci.pci.address import SBDF
from xenpci.pciback.conf_space.dom0_pci import InterruptPlatform
from xenpci.pciback.passthrough import PassthroughBackend
from xenpci.pciback.pci_stub import PciStub, PcistubDevice
from xenpci.pciback.pciback_ops import serve_shared_page
from xenpci.pciback.vpci import VpciBackend, format_root, format_vdev
from xenpci.trace import Kind, Trace
from xenpci.xenbus import pci_keys
from xenpci.xenbus.client import (
    RingMapError,
    xenbus_map_ring_and_bind,
    xenbus_read_otherend,
    xenbus_unbind_and_unmap,
    xenbus_watch_otherend,
)
from xenpci.xenbus.pci_keys import BACKEND_ROOT
from xenpci.xenbus.probe_backend import XenbusBackendBus
from xenpci.xenbus.state import DriverCallback, Role, XenbusDevice
from xenpci.xenbus.watch import XenbusWatch
from xenpci.xenstore.client import XsClient
from xenpci.xenstore.errors import XsError

#: The op's (cmd, err) as the trace records them, read off the page after the answer.
_CMD_ERR = struct.Struct("<Ii")
_FLAGS = struct.Struct("<I")

if TYPE_CHECKING:
    from xenpci.hv.grant_table import GrantMapping
    from xenpci.hv.hypercalls import Hypercalls

S = XenbusState


class XenbusBackendError(XenpciError):
    """A backend step failed; becomes ``xenbus_dev_fatal`` (error node, Closing)."""


def backend_node(domid: int) -> str:
    return pci_keys.backend_path(domid)


def parse_dev(text: str) -> SBDF:
    """``dev-N``: ``%x:%x:%x.%x`` (domain:bus:slot.func), as ``setup_backend`` scans it."""
    try:
        return SBDF(*pci_keys.scan_bdf(text))
    except (ValueError, XenpciError):
        raise XenbusBackendError(f"Error reading device configuration: {text!r}") from None


@dataclass
class OpStats:
    """Per-device op accounting (what ``xen_pcibk_handle_event`` and lateeoi count)."""

    served: int = 0
    spurious: int = 0
    busy: int = 0
    errors: list[str] = field(default_factory=list)


class PcibackDevice:
    """``struct xen_pcibk_device``: the backend of one guest's pci device 0."""

    def __init__(
        self,
        domid: int,
        hc: Hypercalls,
        xs: XsClient,
        stub: PciStub,
        platform: InterruptPlatform,
        *,
        passthrough: bool = False,
        lock: threading.RLock | None = None,
        trace: Trace | None = None,
    ) -> None:
        self.domid = domid
        self.hc = hc
        self.xs = xs
        self.stub = stub
        self.platform = platform
        self.bus: VpciBackend | PassthroughBackend = (
            PassthroughBackend() if passthrough else VpciBackend()
        )
        self.trace = trace
        self.nodename = backend_node(domid)
        self.frontend_path = ""
        self.xenbus = XenbusDevice(Role.BACKEND)
        self.watch: XenbusWatch | None = None
        self._removed = False
        self.mapping: GrantMapping | None = None
        self.evtchn: int | None = None
        self.stats = OpStats()
        self._op_active = False
        self._page: memoryview | None = None
        self._info: pciif.xen_pci_sharedinfo | None = None
        #: The ``pci_op`` record, bound once to this guest (the op path's trace call).
        self._record_op = (
            trace.recorder(Kind.PCI_OP, domid, "dom0", ("cmd", "err"))
            if trace is not None
            else None
        )
        # The pool is shared by every guest's backend: one lock (the driver's)
        # serialises XenBus work and op service across them.
        self._lock = lock if lock is not None else threading.RLock()

    # -- probe / remove -------------------------------------------------------------
    def probe(self) -> None:
        """``xen_pcibk_xenbus_probe``: InitWait, watch our node and the frontend."""
        self.frontend_path = xenbus_read_otherend(self.xs, self.nodename, "frontend")
        online = self._read_int("online", 1)
        self.xenbus.online = online != 0
        self.watch = xenbus_watch_otherend(
            self.xs, self.xenbus, self.nodename, self.frontend_path, self._callback
        )
        self.watch.start()

    def remove(self) -> None:
        """``xen_pcibk_xenbus_remove`` -> ``free_pdev``: unwatch, disconnect, release all."""
        if self.watch is not None:
            self.watch.remove()  # queued events for this device are dropped from here on
        with self._lock:
            self._removed = True
            self._disconnect()
            self._release_all()

    def superseded(self) -> bool:
        """Our backend node was re-created for a new device (see ``XenbusWatch.superseded``)."""
        return self.watch is not None and self.watch.superseded()

    def wait_for_state(self, state: XenbusState, timeout: float = 10.0) -> bool:
        if self.watch is None:
            return False
        return self.watch.wait_for(lambda d: d.state is state, timeout)

    # -- driver callbacks from the XenBus shell --------------------------------------
    def _callback(self, cb: DriverCallback) -> None:
        with self._lock:
            if self._removed:
                return  # a stale event for an unregistered device
            if cb is DriverCallback.SETUP:
                self._setup_backend()
            elif cb is DriverCallback.CONNECT:
                # Export devices added since setup whose own-node event is still queued
                # behind the frontend's: once Connected, be_watch ignores them (as
                # Linux's does), and the guest would never see them.
                self._reconfigure()
                self._attach()
            elif cb is DriverCallback.RECONFIGURE:
                self._reconfigure()
            elif cb is DriverCallback.DISCONNECT:
                self._disconnect()
            elif cb is DriverCallback.REMOVE:
                self._disconnect()
                self._release_all()

    def _read(self, key: str) -> str:
        return self.xs.read(f"{self.nodename}/{key}").decode()

    def _read_int(self, key: str, default: int | None = None) -> int:
        try:
            return int(self._read(key))
        except (XsError, ValueError):
            if default is None:
                raise XenbusBackendError(f"error reading {key}") from None
            return default

    def _write(self, key: str, value: str) -> None:
        self.xs.write(f"{self.nodename}/{key}", value)

    def _setup_backend(self) -> None:
        """``xen_pcibk_setup_backend``: export every ``dev-i``, publish roots."""
        num = self._read_int("num_devs")
        for i in range(num):
            self._export(i)
        self._publish_roots()

    def _export(self, i: int) -> None:
        try:
            host = parse_dev(self._read(pci_keys.dev_key(i)))
        except XsError:
            raise XenbusBackendError(f"error reading configuration for device {i}") from None
        if self._exported(host):
            return  # already exported (a re-run of reconfigure)
        try:
            psdev = self.stub.get_pci_dev(host, self.domid)
        except XenpciError as e:
            raise XenbusBackendError(str(e)) from None
        try:
            addr = self.bus.add(psdev, i)
        except XenpciError as e:
            self.stub.put_pci_dev(host)
            raise XenbusBackendError(str(e)) from None
        self._write(pci_keys.vdev_key(i), format_vdev(addr))
        self._write(pci_keys.state_key(i), str(int(S.XenbusStateInitialised)))

    def _publish_roots(self) -> None:
        """``xen_pcibk_publish_pci_root``: append roots not already listed."""
        have: list[str] = []
        n = self._read_int("root_num", 0)
        for k in range(n):
            with contextlib.suppress(XsError):
                have.append(self._read(pci_keys.root_key(k)))
        for dom, bus in self.bus.roots():
            text = format_root(dom, bus)
            if text in have:
                continue
            self._write(pci_keys.root_key(len(have)), text)
            have.append(text)
            self._write("root_num", str(len(have)))

    def _reconfigure(self) -> None:
        """``xen_pcibk_reconfigure``: export ``state-i`` 1, release ``state-i`` 5."""
        num = self._read_int("num_devs", 0)
        for i in range(num):
            state = self._read_int(pci_keys.state_key(i), 0)
            if state == S.XenbusStateInitialising:
                self._export(i)
                self._publish_roots()
            elif state == S.XenbusStateClosing:
                try:
                    vdev = parse_dev(self._read(pci_keys.vdev_key(i)))
                except XsError:
                    continue
                psdev = self.bus.get(vdev.segment, vdev.bus, vdev.devfn)
                if psdev is not None:
                    self._release(psdev)

    def _exported(self, host: SBDF) -> bool:
        return any(p.sbdf == host for p in self.bus.devices())

    def _release(self, psdev: PcistubDevice) -> None:
        """Backend ``release`` + ``pcistub_put_pci_dev`` (which resets the device)."""
        self.bus.release(psdev)
        with contextlib.suppress(XenpciError):
            self.stub.put_pci_dev(psdev.sbdf)

    def _release_all(self) -> None:
        for psdev in self.bus.devices():
            self._release(psdev)

    def _attach(self) -> None:
        """``xen_pcibk_attach``: check magic, map the page, bind the event channel."""
        fe = self.frontend_path
        try:
            gref = int(self.xs.read(f"{fe}/pci-op-ref"))
            port = int(self.xs.read(f"{fe}/event-channel"))
            magic = self.xs.read(f"{fe}/magic").decode()
        except (XsError, ValueError):
            raise XenbusBackendError("Error reading configuration from frontend") from None
        if magic != pciif.XEN_PCI_MAGIC:
            raise XenbusBackendError(
                f"version mismatch (frontend magic {magic!r}, backend {pciif.XEN_PCI_MAGIC!r})"
            )
        try:
            mapping, local = xenbus_map_ring_and_bind(self.hc, self.domid, gref, port)
        except RingMapError as e:
            what = "mapping other domain page" if e.step == "map" else "binding event channel"
            raise XenbusBackendError(f"Error {what}: {e.cause}") from None
        self.mapping, self.evtchn, self._page = mapping, local, mapping.view
        self._info = pciif.xen_pci_sharedinfo.from_buffer(mapping.view)
        self.hc.evtchn_set_handler(local, self._handle_event)

    def _disconnect(self) -> None:
        """``xen_pcibk_disconnect``: unbind the event channel, unmap the page."""
        xenbus_unbind_and_unmap(self.hc, self.evtchn, self.mapping)
        self.evtchn = None
        self._page = self._info = None
        self.mapping = None

    # -- the op path (dom0 vCPU) -----------------------------------------------------
    def _handle_event(self, _port: int) -> None:
        """``xen_pcibk_handle_event`` + ``test_and_schedule_op`` + ``do_one_op``."""
        page, info = self._page, self._info
        if page is None or info is None:
            self.stats.spurious += 1
            return
        if not _FLAGS.unpack_from(page, 0)[0] & pciif.XEN_PCIF_active:
            # Nothing posted: a spurious event (XEN_EOI_FLAG_SPURIOUS in Linux).
            self.stats.spurious += 1
            return
        if self._op_active:
            self.stats.busy += 1
            return
        self._op_active = True
        try:
            with self._lock:
                result = serve_shared_page(page, self.bus, self.platform)
            if result is None:
                self.stats.spurious += 1
                return
            self.stats.served += 1
        except XenpciError as e:
            # serve() answers the guest itself; anything else must not kill dom0.
            self.stats.errors.append(str(e))
            info.op.err = pciif.XEN_PCI_ERR_op_failed
            info.flags &= ~pciif.XEN_PCIF_active
        finally:
            self._op_active = False
        if self._record_op is not None:
            cmd, err = _CMD_ERR.unpack_from(page, OP_OFFSET)
            self._record_op((pciif.XEN_PCI_OP_NAMES.get(cmd, cmd), err))
        evtchn = self.evtchn
        if evtchn is not None:
            try:  # noqa: SIM105 - suppress() would cost a context manager per op
                self.hc.evtchn_send(evtchn)
            except XenpciError:
                pass  # the guest's end is gone: the answer is lost, as on real Xen


class PcibackDriver(XenbusBackendBus[int, PcibackDevice]):
    """The ``pciback`` xenbus backend driver: watches ``backend/pci`` in dom0.

    Creates a :class:`PcibackDevice` for each ``<domid>/0`` that appears (what
    the xenbus backend bus does on its ``backend/pci`` watch) and removes it
    when the node goes.
    """

    def __init__(
        self,
        hc: Hypercalls,
        xs: XsClient,
        stub: PciStub,
        platform: InterruptPlatform,
        *,
        passthrough: bool = False,
        trace: Trace | None = None,
    ) -> None:
        super().__init__(xs, BACKEND_ROOT, "pciback-backend-pci")
        self.hc = hc
        self.stub = stub
        self.platform = platform
        self.passthrough = passthrough
        self.trace = trace
        #: Held while the pool (``stub``) is used, by every backend device.
        self.pool_lock = threading.RLock()

    def wait_for_device(self, domid: int, timeout: float = 10.0) -> PcibackDevice:
        return self._wait_device(
            domid, timeout, f"no pciback device for d{domid} after {timeout:g} s"
        )

    def _scope(self, path: str) -> set[int] | None:
        """As Linux's ``xenbus_dev_changed``: an event under one guest's directory
        re-examines that guest only; an event on the root itself (the watch's first
        firing, the root removed) re-examines them all."""
        rest = path[len(BACKEND_ROOT) + 1 :] if path.startswith(BACKEND_ROOT + "/") else ""
        first = rest.split("/", 1)[0]
        if first.isdigit() and first == str(int(first)):
            return {int(first)}
        return None

    def _present(self, scope: set[int] | None) -> set[int]:
        try:
            if scope is not None:
                names = [str(d) for d in scope]
            else:
                names = [d for d in self.xs.ls(BACKEND_ROOT) if d.isdigit()]
            return {int(d) for d in names if self.xs.exists(f"{BACKEND_ROOT}/{d}/0/frontend")}
        except XsError:
            return set()

    def _stale(self, dev: PcibackDevice) -> bool:
        # Deleted and re-created (a re-attach right after the last detach)
        # before we saw the deletion: the old device is stale, probe afresh.
        return dev.superseded()

    def _new_device(self, domid: int) -> PcibackDevice:
        return PcibackDevice(
            domid,
            self.hc,
            self.xs,
            self.stub,
            self.platform,
            passthrough=self.passthrough,
            lock=self.pool_lock,
            trace=self.trace,
        )
