"""blkback's XenBus backend driver: one device per ``backend/vbd/<domid>/<devid>``.

Models ``drivers/block/xen-blkback/xenbus.c``: ``xen_blkbk_probe`` (the
backend device), ``backend_changed`` (open the disk named by the toolstack,
check ``mode``), ``connect`` (publish ``feature-flush-cache``,
``feature-persistent``, ``sectors``, ``info``, ``sector-size``,
``physical-sector-size``), ``connect_ring`` (read ``ring-ref``,
``event-channel``, ``protocol``; map the ring, bind the channel) and
``xen_blkif_disconnect``; and ``xen_blkif_schedule``, the per-ring kernel
thread (``xenblkd``, a :class:`~xenpci.kthread.Kthread`) woken by the
event-channel interrupt. With the machine's deterministic executor,
``xenblkd`` is a lane of it instead of a thread: the interrupt posts one
service pass, which runs when the executor gets to it.

The XenBus state logic is the shared :class:`~xenpci.xenbus.state.XenbusDevice`
(the one pciback uses), driven by :class:`~xenpci.xenbus.watch.XenbusWatch`;
probing per backend directory is :class:`~xenpci.xenbus.probe_backend.XenbusBackendBus`
and the ring mapping :func:`~xenpci.xenbus.client.xenbus_map_ring_and_bind`.
Deliberate differences: that machine takes pciback's path
(InitWait -> Initialised -> Connected) where Linux blkback goes from
InitWait straight to Connected; the disk is looked up by the ``params``
target in dom0's table of block devices (Linux opens ``physical-device``,
written by the hotplug script); only ``x86_64-abi`` (or no ``protocol``) is
accepted; one ring (no ``multi-queue-num-queues``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping

from xenpci.abi import blkif
from xenpci.abi.xenbus import XenbusState
from xenpci.blkback.blkback import BlkifRingServer, BlockDevice
from xenpci.blkback.ring import BackRing
from xenpci.errors import XenpciError
from xenpci.hv import Hypercalls
from xenpci.hv.grant_table import GrantMapping
from xenpci.kthread import Kthread
from xenpci.trace import Trace
from xenpci.xenbus.client import (
    RingMapError,
    xenbus_map_ring_and_bind,
    xenbus_read_otherend,
    xenbus_unbind_and_unmap,
    xenbus_watch_otherend,
)
from xenpci.xenbus.probe_backend import XenbusBackendBus
from xenpci.xenbus.state import DriverCallback, Role, XenbusDevice
from xenpci.xenbus.watch import XenbusWatch
from xenpci.xenstore.client import XsClient
from xenpci.xenstore.errors import XsError

BACKEND_ROOT = "/local/domain/0/backend/vbd"
#: ``XEN_IO_PROTO_ABI_X86_64`` (``xen/io/protocols.h``).
PROTOCOL_X86_64 = "x86_64-abi"


class BlkbackError(XenpciError):
    """A backend set-up step failed (reported with ``xenbus_dev_fatal``)."""


class BlkbackDevice:
    """``struct backend_info`` + its ``xen_blkif``: the backend of one virtual disk."""

    def __init__(
        self,
        domid: int,
        devid: int,
        hc: Hypercalls,
        xs: XsClient,
        disks: Mapping[str, BlockDevice],
        *,
        trace: Trace | None = None,
    ) -> None:
        self.domid = domid
        self.devid = devid
        self.hc = hc
        self.xs = xs
        self.disks = disks
        self.trace = trace
        self.nodename = f"{BACKEND_ROOT}/{domid}/{devid}"
        self.frontend_path = ""
        self.xenbus = XenbusDevice(Role.BACKEND)
        self.watch: XenbusWatch | None = None
        self.disk: BlockDevice | None = None
        self.readonly = False
        self.server: BlkifRingServer | None = None
        self.mapping: GrantMapping | None = None
        self.evtchn: int | None = None
        self._lock = threading.RLock()
        #: ``xenblkd`` while connected (a lane of the machine's executor in deterministic mode).
        self._xenblkd: Kthread | None = None
        #: Executor CPU seconds of the ``xenblkd`` of earlier connections.
        self._past_cpu_s = 0.0
        self._removed = False

    def probe(self) -> None:
        """``xen_blkbk_probe``: InitWait, then the watch machinery drives the rest."""
        self.frontend_path = xenbus_read_otherend(self.xs, self.nodename, "frontend")
        self.watch = xenbus_watch_otherend(
            self.xs, self.xenbus, self.nodename, self.frontend_path, self._callback
        )
        self.watch.start()

    def remove(self) -> None:
        if self.watch is not None:
            self.watch.remove()
        with self._lock:
            self._removed = True
            self._disconnect()

    def wait_for_state(self, state: XenbusState, timeout: float = 10.0) -> bool:
        if self.watch is None:
            return False
        return self.watch.wait_for(lambda d: d.state is state, timeout)

    @property
    def thread_ident(self) -> int | None:
        """The ``xenblkd`` thread (for its CPU clock), while connected."""
        xenblkd = self._xenblkd
        return xenblkd.thread_ident if xenblkd is not None else None

    @property
    def task_cpu_s(self) -> float:
        """CPU seconds of the executor tasks (deterministic mode: no thread has a clock)."""
        xenblkd = self._xenblkd
        return self._past_cpu_s + (xenblkd.task_cpu_s if xenblkd is not None else 0.0)

    # -- driver callbacks -------------------------------------------------------------
    def _callback(self, cb: DriverCallback) -> None:
        with self._lock:
            if self._removed:
                return
            if cb is DriverCallback.SETUP:
                self._backend_changed()
            elif cb is DriverCallback.CONNECT:
                self._connect_ring()
            elif cb in (DriverCallback.DISCONNECT, DriverCallback.REMOVE):
                self._disconnect()

    def _read(self, path: str) -> str:
        try:
            return self.xs.read(path).decode()
        except XsError:
            raise BlkbackError(f"reading {path}") from None

    def _backend_changed(self) -> None:
        """``backend_changed`` + ``connect``'s feature nodes: open the disk, publish it."""
        target = self._read(f"{self.nodename}/params")
        mode = self._read(f"{self.nodename}/mode")
        disk = self.disks.get(target)
        if disk is None:
            raise BlkbackError(f"no such block device {target!r} in dom0")
        self.disk = disk
        self.readonly = "w" not in mode
        for key, value in (
            ("feature-flush-cache", "1"),
            ("feature-persistent", "0"),
            ("sectors", str(disk.sectors)),
            ("info", str(blkif.VDISK_READONLY if self.readonly else 0)),
            ("sector-size", str(blkif.SECTOR_SIZE)),
            ("physical-sector-size", str(blkif.SECTOR_SIZE)),
        ):
            self.xs.write(f"{self.nodename}/{key}", value)

    def _connect_ring(self) -> None:
        """``connect_ring``: read the frontend's keys, map the ring, bind the channel."""
        fe = self.frontend_path
        try:
            gref = int(self._read(f"{fe}/ring-ref"))
            port = int(self._read(f"{fe}/event-channel"))
        except ValueError:
            raise BlkbackError("ring-ref or event-channel is not a number") from None
        with contextlib.suppress(BlkbackError):
            proto = self._read(f"{fe}/protocol")
            if proto != PROTOCOL_X86_64:
                raise BlkbackError(f"unknown fe protocol {proto}")
        if self.disk is None:
            raise BlkbackError("no disk opened")
        try:
            mapping, local = xenbus_map_ring_and_bind(self.hc, self.domid, gref, port)
        except RingMapError as e:
            what = f"mapping ring-ref {gref}" if e.step == "map" else f"binding port {port}"
            raise BlkbackError(f"{what}: {e.cause}") from None
        self.mapping, self.evtchn = mapping, local
        hc = self.hc
        self.server = BlkifRingServer(
            BackRing(mapping.view),
            hc,
            self.domid,
            self.disk,
            lambda: hc.evtchn_send(local),
            readonly=self.readonly,
            trace=self.trace,
            name=f"vbd-{self.domid}-{self.devid}",
        )
        self._xenblkd = Kthread(
            f"xenblkd-{self.domid}-{self.devid}", self._do_block_io_op, self.xs.executor
        )
        self.hc.evtchn_set_handler(local, self._irq)

    def _disconnect(self) -> None:
        """``xen_blkif_disconnect``: stop the thread, unbind, unmap."""
        xenblkd = self._xenblkd
        if xenblkd is not None:
            xenblkd.stop()  # queued work is dropped with it
            self._past_cpu_s += xenblkd.task_cpu_s
            self._xenblkd = None
        xenbus_unbind_and_unmap(self.hc, self.evtchn, self.mapping)
        self.evtchn = None
        self.server = None
        self.mapping = None

    # -- the data path -----------------------------------------------------------------
    def _irq(self, _port: int) -> None:
        # xen_blkif_be_int on dom0's vCPU: only wake xenblkd (it may sleep on IO).
        xenblkd = self._xenblkd
        if xenblkd is not None:
            xenblkd.kick()

    def _do_block_io_op(self) -> None:
        """One ``xen_blkif_schedule`` pass: serve the ring."""
        server = self.server
        if server is not None:
            server.do_block_io_op()


class BlkbackDriver(XenbusBackendBus[tuple[int, int], BlkbackDevice]):
    """The ``vbd`` backend driver: probes a device per backend directory that appears."""

    def __init__(
        self,
        hc: Hypercalls,
        xs: XsClient,
        disks: Mapping[str, BlockDevice],
        *,
        trace: Trace | None = None,
    ) -> None:
        super().__init__(xs, BACKEND_ROOT, "blkback-vbd")
        self.hc = hc
        self.disks = disks
        self.trace = trace

    def wait_for_device(self, domid: int, devid: int, timeout: float = 10.0) -> BlkbackDevice:
        return self._wait_device(
            (domid, devid), timeout, f"no blkback device for d{domid} vbd {devid}"
        )

    def _present(self, scope: set[tuple[int, int]] | None) -> set[tuple[int, int]]:
        # No scope (_scope's default): every event rescans the whole root.
        out: set[tuple[int, int]] = set()
        try:
            for d in self.xs.ls(BACKEND_ROOT):
                if not d.isdigit():
                    continue
                for n in self.xs.ls(f"{BACKEND_ROOT}/{d}"):
                    if n.isdigit() and self.xs.exists(f"{BACKEND_ROOT}/{d}/{n}/frontend"):
                        out.add((int(d), int(n)))
        except XsError:
            pass
        return out

    def _new_device(self, key: tuple[int, int]) -> BlkbackDevice:
        return BlkbackDevice(*key, self.hc, self.xs, self.disks, trace=self.trace)
