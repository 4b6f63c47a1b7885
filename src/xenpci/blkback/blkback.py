"""blkback's request service: ``blkif`` requests in, dom0 block IO, responses out.

Models ``drivers/block/xen-blkback/blkback.c``: ``__do_block_io_op`` (copy
each request out of the ring, stop on ``RING_REQUEST_PROD_OVERFLOW``),
``dispatch_rw_block_io`` (its checks, in its order: segment count, sector
range of each segment, the device's size and mode; then ``xen_blkbk_map`` of
every segment's grant, read-only for a write), the block IO itself,
``xen_blkbk_unmap`` and ``make_response`` (push + ``notify_remote_via_irq``
when ``RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`` says so), and
``xen_blkif_schedule``'s loop around ``RING_FINAL_CHECK_FOR_REQUESTS``.

Errors are the protocol's: a malformed read/write gets ``BLKIF_RSP_ERROR``,
an unknown operation ``BLKIF_RSP_EOPNOTSUPP`` (``dispatch_other_io``);
``BLKIF_OP_DISCARD`` and ``BLKIF_OP_INDIRECT`` get ``BLKIF_RSP_EOPNOTSUPP``
too (Linux serves them; neither feature is advertised here). Each
kind of error is logged once per ring (Linux uses ``pr_debug``/ratelimited
messages); every one is counted and traced. A frontend that claims more
requests than the ring holds halts its own ring ("Frontend provided bogus
ring requests") and nothing else.

Deliberate differences: no persistent grants and no indirect descriptors
(neither is advertised), so every segment is mapped and unmapped per
request, as Linux does without ``feature-persistent``; the block IO is
synchronous (one bio chain at a time); a ``BLKIF_OP_FLUSH_DISKCACHE``
without data succeeds at once (the disk model has no volatile cache), one
with data is a write.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from xenpci.abi import blkif
from xenpci.blkback.ring import BackRing
from xenpci.errors import XenpciError
from xenpci.hv import Hypercalls
from xenpci.hv.grant_table import GrantMapping
from xenpci.trace import Kind, Trace

log = logging.getLogger("xenpci.blkback")

#: Trace kinds (plain strings; see :mod:`xenpci.trace`).
TRACE_REQUEST = Kind.BLKIF_REQUEST
TRACE_ERROR = Kind.BLKIF_ERROR
TRACE_HALT = Kind.BLKIF_RING_HALTED

SECTOR = blkif.SECTOR_SIZE
#: ``BLKIF_OP_WRITE_BARRIER`` is served as a flush (Linux: ``drain``, then the
#: ``BLKIF_OP_FLUSH_DISKCACHE`` path); both are writes with ``REQ_PREFLUSH``.
_FLUSH_OPS = frozenset({blkif.BLKIF_OP_WRITE_BARRIER, blkif.BLKIF_OP_FLUSH_DISKCACHE})
#: What ``dispatch_rw_block_io`` serves here; anything else is ``dispatch_other_io``.
_RW_OPS = frozenset({blkif.BLKIF_OP_READ, blkif.BLKIF_OP_WRITE}) | _FLUSH_OPS


class BlockDevice(Protocol):
    """What blkback submits to: dom0's block device (see :mod:`.dom0_block`)."""

    sectors: int

    def read(self, sector: int, count: int) -> bytes: ...

    def write(self, sector: int, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request failed: a stable reason name (for the log-once set) and detail."""

    reason: str
    detail: str
    status: int = blkif.BLKIF_RSP_ERROR


def check_request(req: blkif.blkif_request, sectors: int, readonly: bool) -> Refusal | None:
    """``dispatch_rw_block_io``'s checks before any grant is touched, in Linux's order.

    A flush is a write with ``REQ_PREFLUSH``: it may carry no segment at all, and
    like any write it is refused on a read-only device (``xen_vbd_translate``).
    """
    nseg = req.nr_segments
    flush = req.operation in _FLUSH_OPS
    if (nseg == 0 and not flush) or nseg > blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST:
        return Refusal("bad-segment-count", f"Bad number of segments in request ({nseg})")
    total = 0
    for i in range(nseg):
        seg = req.seg[i]
        if seg.last_sect >= blkif.SECTORS_PER_PAGE or seg.last_sect < seg.first_sect:
            return Refusal(
                "bad-segment-sectors",
                f"segment {i}: sectors {seg.first_sect}..{seg.last_sect} do not fit a page",
            )
        total += seg.last_sect - seg.first_sect + 1
    if req.operation != blkif.BLKIF_OP_READ and readonly:
        return Refusal("read-only", "write to a read-only device")
    if req.sector_number + total > sectors:
        # xen_vbd_translate: "access beyond end of device"
        return Refusal(
            "beyond-end",
            f"access beyond end of device ({req.sector_number}+{total} > {sectors})",
        )
    return None


class BlkifRingServer:
    """The service of one ring (``struct xen_blkif_ring``): sans threads, sans XenStore.

    ``notify`` signals the frontend (``notify_remote_via_irq``). Called only from
    one thread at a time (the device's ``xenblkd``).
    """

    def __init__(
        self,
        ring: BackRing,
        hc: Hypercalls,
        frontend: int,
        disk: BlockDevice,
        notify: Callable[[], None],
        *,
        readonly: bool = False,
        trace: Trace | None = None,
        name: str = "vbd",
    ) -> None:
        self.ring = ring
        self.hc = hc
        self.frontend = frontend
        self.disk = disk
        self.notify = notify
        self.readonly = readonly
        self.trace = trace
        self.name = name
        self.halted = False
        #: Set when the ring is halted (a test or the toolstack can wait on it).
        self.halt_event = threading.Event()
        self.served = 0
        self.errors: Counter[str] = Counter()
        self._logged: set[str] = set()
        self.notifications = 0

    # -- the loop -----------------------------------------------------------------
    def do_block_io_op(self) -> int:
        """``do_block_io_op``: serve until the ring is empty after a final check."""
        handled = 0
        while not self.halted:
            handled += self._do_block_io_op()
            if not self.ring.final_check_for_requests():
                break
        return handled

    def _do_block_io_op(self) -> int:
        ring = self.ring
        rp = ring.req_prod
        if ring.prod_overflow(rp):
            self.halted = True
            msg = (
                f"{self.name}: Frontend provided bogus ring requests "
                f"({rp} - {ring.rsp_prod_pvt} = {(rp - ring.rsp_prod_pvt) & 0xFFFFFFFF}). "
                "Halting ring processing"
            )
            log.warning(msg)
            if self.trace is not None:
                self.trace.record(TRACE_HALT, 0, "dom0", frontend=self.frontend, req_prod=rp)
            self.halt_event.set()  # last: a waiter sees the log and the trace record
            return 0
        rc = ring.req_cons
        n = 0
        while rc != rp:
            if ring.cons_overflow(rc):
                break
            req = ring.copy_request(rc)
            rc = (rc + 1) & 0xFFFFFFFF
            ring.req_cons = rc
            status = self.dispatch(req)
            self.make_response(req.id, req.operation, status)
            n += 1
        return n

    def make_response(self, req_id: int, operation: int, status: int) -> None:
        self.ring.put_response(req_id, operation, status)
        if self.ring.push_responses_and_check_notify():
            self.notifications += 1
            self.notify()

    # -- one request ----------------------------------------------------------------
    def dispatch(self, req: blkif.blkif_request) -> int:
        op = req.operation
        self.served += 1
        if self.trace is not None:
            self.trace.record(
                TRACE_REQUEST,
                0,
                "dom0",
                frontend=self.frontend,
                op=blkif.BLKIF_OP_NAMES.get(op, str(op)),
                id=req.id,
                sector=req.sector_number,
                nseg=req.nr_segments,
            )
        if op not in _RW_OPS:
            return self._refuse(
                Refusal("unsupported-op", f"operation {op}", blkif.BLKIF_RSP_EOPNOTSUPP), req
            )
        refusal = check_request(req, self.disk.sectors, self.readonly)
        if refusal is not None:
            return self._refuse(refusal, req)
        if req.nr_segments == 0:
            return blkif.BLKIF_RSP_OKAY  # a bare flush: the disk model has no volatile cache
        write = op != blkif.BLKIF_OP_READ  # a write, or a flush carrying data
        maps: list[GrantMapping] = []
        try:
            for i in range(req.nr_segments):
                # xen_blkbk_map: GNTMAP_readonly when the data only leaves the guest.
                maps.append(self.hc.gnttab_map_grant_ref(self.frontend, req.seg[i].gref, write))
        except XenpciError as e:
            self._unmap(maps)
            return self._refuse(
                Refusal("grant-map", f"invalid buffer -- could not remap it ({e})"), req
            )
        try:
            segs = [
                (maps[i].view, req.seg[i].first_sect, req.seg[i].last_sect)
                for i in range(len(maps))
            ]
            if write:
                data = b"".join(bytes(v[f * SECTOR : (la + 1) * SECTOR]) for v, f, la in segs)
                self.disk.write(req.sector_number, data)
            else:
                total = sum(la - f + 1 for _, f, la in segs)
                data = self.disk.read(req.sector_number, total)
                pos = 0
                for v, f, la in segs:
                    n = (la - f + 1) * SECTOR
                    v[f * SECTOR : (la + 1) * SECTOR] = data[pos : pos + n]
                    pos += n
        except XenpciError as e:
            return self._refuse(Refusal("io-error", f"block IO failed: {e}"), req)
        finally:
            self._unmap(maps)
        return blkif.BLKIF_RSP_OKAY

    def _unmap(self, maps: list[GrantMapping]) -> None:
        for m in maps:
            with contextlib.suppress(XenpciError):
                self.hc.gnttab_unmap_grant_ref(m.handle)

    def _refuse(self, refusal: Refusal, req: blkif.blkif_request) -> int:
        self.errors[refusal.reason] += 1
        if refusal.reason not in self._logged:
            self._logged.add(refusal.reason)
            log.warning("%s: d%d request %d: %s", self.name, self.frontend, req.id, refusal.detail)
        if self.trace is not None:
            self.trace.record(
                TRACE_ERROR,
                0,
                "dom0",
                frontend=self.frontend,
                id=req.id,
                reason=refusal.reason,
                status=refusal.status,
            )
        return refusal.status
