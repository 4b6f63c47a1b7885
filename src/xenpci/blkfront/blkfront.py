"""blkfront: a guest's virtual disk over the blkif ring.

Models ``drivers/block/xen-blkfront.c``: ``blkfront_probe``,
``talk_to_blkback`` (allocate and grant the ring page with
``XEN_FRONT_RING_INIT``, allocate the event channel, write ``ring-ref``,
``event-channel``, ``protocol``), ``blkfront_connect`` (read ``sectors``,
``info``, ``sector-size``, ``feature-flush-cache``), ``blkif_queue_rw_req``
(one request per up to 11 pages, each page granted to the backend,
read-only for a write), ``flush_requests``
(``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`` then ``notify_remote_via_irq``)
and ``blkif_interrupt`` (responses until ``RING_FINAL_CHECK_FOR_RESPONSES``,
``gnttab_end_foreign_access`` of each page).

Deliberate differences: the block layer is two calls, :meth:`Blkfront.write`
and :meth:`Blkfront.read` of whole sectors, each queueing as many requests as
the ring takes before one push (a request batch), then waiting for their
responses on the caller's thread; no persistent grants, no indirect
descriptors, no multi-queue.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

from xenpci.abi import blkif
from xenpci.blkfront.ring import FrontRing
from xenpci.errors import XenpciError
from xenpci.hv import PAGE_SHIFT, PAGE_SIZE, Hypercalls
from xenpci.hv.scheduler import wait_for
from xenpci.trace import Trace
from xenpci.xenbus.client import xenbus_read_otherend_details, xenbus_watch_otherend
from xenpci.xenbus.state import DriverCallback, Role, XenbusDevice
from xenpci.xenbus.watch import XenbusWatch
from xenpci.xenstore.client import XsClient, XsTransaction

SECTOR = blkif.SECTOR_SIZE
#: Sectors one request carries: 11 whole pages.
MAX_SECTORS_PER_REQUEST = blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST * blkif.SECTORS_PER_PAGE
DEFAULT_TIMEOUT = 30.0


class BlkfrontError(XenpciError):
    """The virtual disk is not usable, or a request failed."""


class BlkIoError(BlkfrontError):
    """The backend answered a request with an error status (``BLKIF_RSP_*``)."""

    def __init__(self, sector: int, status: int) -> None:
        self.sector = sector
        self.status = status
        super().__init__(f"blkif request at sector {sector} failed: status {status}")


@dataclass(slots=True)
class _Inflight:
    sector: int
    pages: list[int]
    grefs: list[int]
    nsect: int


class Blkfront:
    """``struct blkfront_info`` of one virtual disk ``device/vbd/<devid>``."""

    def __init__(
        self,
        domid: int,
        devid: int,
        hc: Hypercalls,
        xs: XsClient,
        *,
        trace: Trace | None = None,
    ) -> None:
        self.domid = domid
        self.devid = devid
        self.hc = hc
        self.xs = xs
        self.trace = trace
        self.nodename = f"/local/domain/{domid}/device/vbd/{devid}"
        self.xenbus = XenbusDevice(Role.FRONTEND)
        self.watch: XenbusWatch | None = None
        self.backend_path = ""
        self.backend_id = 0
        self.ring: FrontRing | None = None
        self.ring_gfn: int | None = None
        self.ring_gref: int | None = None
        self.evtchn: int | None = None
        self.sectors = 0
        self.readonly = False
        self.flush = False
        self.notifications = 0
        self._cond = threading.Condition()
        self._done: dict[int, int] = {}
        self._inflight: dict[int, _Inflight] = {}
        self._next_id = 0
        self._free_pages: list[int] = []
        self._connected = threading.Event()

    # -- XenBus ----------------------------------------------------------------------
    def probe(self) -> None:
        """``blkfront_probe``: find the backend, publish, follow its state."""
        self.backend_id, self.backend_path = xenbus_read_otherend_details(
            self.xs, self.nodename, "backend-id", "backend"
        )
        self.watch = xenbus_watch_otherend(
            self.xs, self.xenbus, self.nodename, self.backend_path, self._callback
        )
        self.watch.start()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        executor = self.xs.executor
        if executor is not None:  # run the machine until connected, on the virtual clock
            return executor.wait_until(self._connected.is_set, timeout)
        return self._connected.wait(timeout)

    def remove(self) -> None:
        if self.watch is not None:
            self.watch.remove()
        self._free()

    def _callback(self, cb: DriverCallback) -> None:
        if cb is DriverCallback.PUBLISH:
            self._talk_to_blkback()
        elif cb is DriverCallback.CONNECT:
            self._blkfront_connect()
        elif cb is DriverCallback.DISCONNECT:
            self._connected.clear()

    def _talk_to_blkback(self) -> None:
        hc = self.hc
        gfn = hc.alloc_page()
        self.ring = FrontRing(hc.page(gfn))
        self.ring_gfn = gfn
        self.ring_gref = hc.gnttab_grant_foreign_access(self.backend_id, gfn, False)
        self.evtchn = hc.evtchn_alloc_unbound(self.backend_id)
        hc.evtchn_set_handler(self.evtchn, self._interrupt)

        def body(t: XsTransaction) -> None:
            write = t.write
            write(f"{self.nodename}/ring-ref", str(self.ring_gref))
            write(f"{self.nodename}/event-channel", str(self.evtchn))
            write(f"{self.nodename}/protocol", "x86_64-abi")
            write(f"{self.nodename}/feature-persistent", "0")

        self.xs.retry_transaction(body)

    def _blkfront_connect(self) -> None:
        be = self.backend_path
        self.sectors = int(self.xs.read(f"{be}/sectors"))
        info = int(self.xs.read(f"{be}/info"))
        self.readonly = bool(info & blkif.VDISK_READONLY)
        sector_size = int(self.xs.read(f"{be}/sector-size"))
        if sector_size != SECTOR:
            raise BlkfrontError(f"sector-size {sector_size} is not supported")
        with contextlib.suppress(XenpciError, ValueError):
            self.flush = int(self.xs.read(f"{be}/feature-flush-cache")) == 1
        self._connected.set()

    def _free(self) -> None:
        hc = self.hc
        if self.evtchn is not None:
            with contextlib.suppress(XenpciError):
                hc.evtchn_close(self.evtchn)
            self.evtchn = None
        if self.ring_gref is not None:
            with contextlib.suppress(XenpciError):
                hc.gnttab_end_foreign_access(self.ring_gref)
            self.ring_gref = None
        self.ring = None

    # -- the data path -----------------------------------------------------------------
    def _page(self) -> int:
        return self._free_pages.pop() if self._free_pages else self.hc.alloc_page()

    def _interrupt(self, _port: int) -> None:
        """``blkif_interrupt`` on the guest's vCPU: collect responses, wake the waiter."""
        ring = self.ring
        if ring is None:
            return
        with self._cond:
            while True:
                if ring.response_overflow():
                    # "Ill-behaved backend": stop consuming.
                    self._done[-1] = blkif.BLKIF_RSP_ERROR
                    break
                while ring.unconsumed_responses():
                    rsp = ring.take_response()
                    self._done[int(rsp.id)] = int(rsp.status)
                if not ring.final_check_for_responses():
                    break
            self._cond.notify_all()

    def _queue(self, op: int, sector: int, nsect: int, data: bytes | None) -> int:
        ring = self.ring
        assert ring is not None
        hc = self.hc
        pages: list[int] = []
        grefs: list[int] = []
        req = blkif.blkif_request()
        req.operation = op
        req.handle = self.devid & 0xFFFF
        req.sector_number = sector
        npages = -(-nsect // blkif.SECTORS_PER_PAGE)
        req.nr_segments = npages
        for i in range(npages):
            gfn = self._page()
            first = i * blkif.SECTORS_PER_PAGE
            n = min(blkif.SECTORS_PER_PAGE, nsect - first)
            if data is not None:
                hc.write(gfn << PAGE_SHIFT, data[first * SECTOR : (first + n) * SECTOR])
            gref = hc.gnttab_grant_foreign_access(self.backend_id, gfn, op == blkif.BLKIF_OP_WRITE)
            pages.append(gfn)
            grefs.append(gref)
            req.seg[i].gref = gref
            req.seg[i].first_sect = 0
            req.seg[i].last_sect = n - 1
        self._next_id += 1
        req.id = self._next_id
        self._inflight[req.id] = _Inflight(sector, pages, grefs, nsect)
        ring.put_request(req)
        return int(req.id)

    def _flush(self) -> None:
        ring = self.ring
        assert ring is not None and self.evtchn is not None
        if ring.push_requests_and_check_notify():
            self.notifications += 1
            self.hc.evtchn_send(self.evtchn)

    def _run(self, op: int, sector: int, nsect: int, data: bytes | None) -> bytes:
        if not self._connected.is_set() or self.ring is None:
            raise BlkfrontError(f"d{self.domid} vbd {self.devid} is not connected")
        if nsect <= 0 or sector < 0 or sector + nsect > self.sectors:
            raise BlkfrontError(f"sectors {sector}+{nsect} outside the {self.sectors}-sector disk")
        ring = self.ring
        out: dict[int, bytes] = {}
        pos = 0
        waiting: list[int] = []
        while pos < nsect or waiting:
            # Queue a batch: as many requests as the ring has free slots.
            queued = False
            while pos < nsect and ring.free_requests() > 0:
                n = min(MAX_SECTORS_PER_REQUEST, nsect - pos)
                chunk = data[pos * SECTOR : (pos + n) * SECTOR] if data is not None else None
                waiting.append(self._queue(op, sector + pos, n, chunk))
                pos += n
                queued = True
            if queued:
                self._flush()
            with self._cond:
                if not wait_for(
                    self._cond,
                    lambda: any(i in self._done for i in waiting) or -1 in self._done,
                    DEFAULT_TIMEOUT,
                    self.xs.executor,
                ):
                    raise BlkfrontError(f"d{self.domid}: no response from the backend")
                finished = [i for i in waiting if i in self._done]
                statuses = {i: self._done.pop(i) for i in finished}
                broken = self._done.get(-1)
            for i in finished:
                waiting.remove(i)
                inflight = self._inflight.pop(i)
                for gref in inflight.grefs:
                    self.hc.gnttab_end_foreign_access(gref)
                if statuses[i] != blkif.BLKIF_RSP_OKAY:
                    self._free_pages.extend(inflight.pages)
                    raise BlkIoError(inflight.sector, statuses[i])
                if op == blkif.BLKIF_OP_READ:
                    out[inflight.sector] = b"".join(
                        self.hc.read(g << PAGE_SHIFT, PAGE_SIZE) for g in inflight.pages
                    )[: inflight.nsect * SECTOR]
                self._free_pages.extend(inflight.pages)
            if broken is not None:
                raise BlkfrontError(f"d{self.domid}: the backend overran the response ring")
        return b"".join(out[k] for k in sorted(out))

    def write(self, sector: int, data: bytes) -> None:
        """Write whole sectors at ``sector``."""
        if not data or len(data) % SECTOR:
            raise BlkfrontError(f"{len(data)} bytes is not whole {SECTOR}-byte sectors")
        if self.readonly:
            raise BlkfrontError("the disk is read-only")
        self._run(blkif.BLKIF_OP_WRITE, sector, len(data) // SECTOR, data)

    def read(self, sector: int, nsect: int) -> bytes:
        return self._run(blkif.BLKIF_OP_READ, sector, nsect, None)

    def submit_raw(self, req: blkif.blkif_request) -> int:
        """Post one request as given (what a buggy or hostile frontend can do); its status."""
        ring = self.ring
        if ring is None:
            raise BlkfrontError("not connected")
        ring.put_request(req)
        self._flush()
        with self._cond:
            if not wait_for(
                self._cond, lambda: int(req.id) in self._done, DEFAULT_TIMEOUT, self.xs.executor
            ):
                raise BlkfrontError("no response")
            return self._done.pop(int(req.id))
