"""A PV guest kernel, as far as PCI passthrough goes: XenBus frontend probing,
pcifront, and the PCI core.

Models the guest side of ``drivers/xen/xenbus/xenbus_probe_frontend.c``
(watch the guest's ``device/`` directory and probe a driver for each device
node that appears, remove it when the node goes) for two device types:
``pci``, bound to :class:`xenpci.pcifront.xenbus.Pcifront`, and ``vbd``, each
``device/vbd/<devid>`` bound to its own :class:`xenpci.blkfront.blkfront.Blkfront`.

Deliberate differences: only ``device/pci/0`` and ``device/vbd`` are watched
(Linux watches all of ``device/`` and matches driver names); the kernel is a set of objects
driven by XenStore watch callbacks and event-channel upcalls rather than code
running on the guest's vCPU, but every upcall still runs on that vCPU.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from xenpci.blkfront.blkfront import Blkfront
from xenpci.errors import XenpciError
from xenpci.guest.pci_core import GuestPci
from xenpci.hv.domain import Domain
from xenpci.hv.scheduler import wait_for
from xenpci.pcifront import ops
from xenpci.pcifront.xenbus import Pcifront, frontend_node
from xenpci.trace import Trace
from xenpci.xenstore.client import WatchEvent, XsClient
from xenpci.xenstore.errors import ConnectionClosed, XsError


class GuestKernel:
    """The kernel of one guest domain: its XenStore client, pcifront and PCI core."""

    def __init__(
        self,
        domain: Domain,
        xs: XsClient,
        *,
        op_timeout: float = ops.DEFAULT_OP_TIMEOUT,
        trace: Trace | None = None,
    ) -> None:
        self.domain = domain
        self.domid = domain.domid
        self.xs = xs
        self.op_timeout = op_timeout
        self.trace = trace
        #: The machine's deterministic executor (None: threaded mode).
        self.executor = domain.executor
        self.pci = GuestPci()
        self.pcifront: Pcifront | None = None
        #: Every pcifront this kernel probed, oldest first (reconnects make new ones).
        self.history: list[Pcifront] = []
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._token = f"guest-{self.domid}-device-pci"
        #: blkfront per ``device/vbd/<devid>`` probed (xenbus_probe_frontend for "vbd")
        self.blkfronts: dict[int, Blkfront] = {}
        self._vbd_token = f"guest-{self.domid}-device-vbd"
        self._booted = False
        self._halting = False

    def boot(self) -> None:
        """Start the XenBus frontend bus: watch ``device/pci/0`` (fires once at once)."""
        with self._lock:
            if self._booted:
                return
            self._booted = True
            self._halting = False
        self.xs.watch(frontend_node(self.domid), self._token, self._device_changed)
        self.xs.watch(self._vbd_dir, self._vbd_token, self._vbd_changed)

    @property
    def _vbd_dir(self) -> str:
        return f"/local/domain/{self.domid}/device/vbd"

    def shutdown(self) -> None:
        """Stop the kernel: it stops watching and writes nothing more (the domain is
        destroyed or hangs); its frontend's resources are dropped."""
        # First, without the lock: a watch callback may hold it while rescanning
        # through pcifront, and a dying guest's answers never come back. Halting
        # the channel makes those ops fail at once instead of timing out per devfn.
        self._halting = True
        front = self.pcifront
        if front is not None and front.chan is not None:
            front.chan.halt()
        with self._lock:
            if not self._booted:
                return
            self._booted = False
            with contextlib.suppress(XenpciError):
                self.xs.unwatch(frontend_node(self.domid), self._token)
            with contextlib.suppress(XenpciError):
                self.xs.unwatch(self._vbd_dir, self._vbd_token)
            self._remove_frontend(halted=True)
            for blk in self.blkfronts.values():
                with contextlib.suppress(XenpciError):
                    blk.remove()
            self.blkfronts.clear()

    def wait_for_pcifront(self, timeout: float = 10.0) -> Pcifront:
        """Wait until a pcifront has been probed (raise ``TimeoutError`` otherwise)."""
        with self._changed:
            if not wait_for(
                self._changed, lambda: self.pcifront is not None, timeout, self.executor
            ):
                raise TimeoutError(f"d{self.domid}: no pcifront after {timeout:g} s")
            assert self.pcifront is not None
            return self.pcifront

    def wait(self, predicate: Callable[[GuestKernel], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate(self)`` holds after a frontend probe/removal."""
        with self._changed:
            return wait_for(self._changed, lambda: predicate(self), timeout, self.executor)

    def _device_changed(self, _ev: WatchEvent) -> None:
        try:
            self._probe_or_remove()
        except ConnectionClosed:
            # The kernel's XenStore connection went (the domain is being torn
            # down) while this event was queued: there is nothing left to probe.
            return

    def wait_for_blkfront(self, devid: int, timeout: float = 10.0) -> Blkfront:
        """Wait until ``device/vbd/<devid>`` has been probed (raise ``TimeoutError``)."""
        with self._changed:
            if not wait_for(self._changed, lambda: devid in self.blkfronts, timeout, self.executor):
                raise TimeoutError(
                    f"d{self.domid}: no blkfront for vbd {devid} after {timeout:g} s"
                )
            return self.blkfronts[devid]

    def _vbd_changed(self, _ev: WatchEvent) -> None:
        try:
            self._probe_or_remove_vbds()
        except ConnectionClosed:
            return  # torn down while the event was queued, as for pci

    def _probe_or_remove_vbds(self) -> None:
        """A blkfront for each ``device/vbd/<devid>`` with ``state`` and ``backend``;
        a vanished node's blkfront removed."""
        with self._lock:
            if not self._booted or self._halting:
                return
            present: set[int] = set()
            try:
                for name in self.xs.ls(self._vbd_dir):
                    node = f"{self._vbd_dir}/{name}"
                    if (
                        name.isdigit()
                        and self.xs.exists(f"{node}/state")
                        and self.xs.exists(f"{node}/backend")
                    ):
                        present.add(int(name))
            except XsError:
                pass  # no device/vbd (yet, or any more)
            for devid in sorted(set(self.blkfronts) - present):
                self.blkfronts.pop(devid).remove()
            for devid in sorted(present - set(self.blkfronts)):
                front = Blkfront(
                    devid=devid,
                    domid=self.domid,
                    hc=self.domain.hypercalls,
                    xs=self.xs,
                    trace=self.trace,
                )
                try:
                    front.probe()
                except (XenpciError, ValueError):
                    # unreadable or malformed frontend keys: this disk is not probed
                    # (Linux's xenbus_probe fails that one device); the others go on
                    continue
                self.blkfronts[devid] = front
            self._changed.notify_all()

    def _probe_or_remove(self) -> None:
        node = frontend_node(self.domid)
        with self._lock:
            if not self._booted or self._halting:
                return
            try:
                present = self.xs.exists(f"{node}/state") and self.xs.exists(f"{node}/backend")
            except XsError:
                present = False
            if present and self.pcifront is not None and self.pcifront.superseded():
                # libxl deleted and re-created device/pci/0 before we saw the
                # deletion: drop the stale frontend, probe a fresh one below.
                self._remove_frontend()
            if present and self.pcifront is None:
                front = Pcifront(
                    self.domid,
                    self.domain.hypercalls,
                    self.xs,
                    self.pci,
                    op_timeout=self.op_timeout,
                    on_vcpu=self.domain.vcpu.on_this_vcpu,
                    executor=self.executor,
                    trace=self.trace,
                )
                self.pcifront = front
                self.history.append(front)
                self._changed.notify_all()
                front.probe()
            elif not present and self.pcifront is not None:
                self._remove_frontend()

    def _remove_frontend(self, *, halted: bool = False) -> None:
        front, self.pcifront = self.pcifront, None
        if front is not None:
            front.remove(halted=halted)
        self._changed.notify_all()
