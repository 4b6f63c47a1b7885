"""The xenstore ring: ``struct xenstore_domain_interface`` plus an event channel.

Models both ends of the shared page of ``xs_wire.h``: the guest side of
Linux's ``drivers/xen/xenbus/xenbus_comms.c`` (``xb_write``/``xb_read``) and
the server side of C xenstored's ``xenstored_domain.c`` (``readchn``,
``writechn``, ``domain_can_read``). The guest produces on ``req`` and consumes
``rsp``; xenstored the reverse. Indexes are free-running ``uint32`` values
masked with ``MASK_XENSTORE_IDX``; a producer never runs more than
``XENSTORE_RING_SIZE`` ahead, and a peer whose indexes break that is cut off
with ``error = XENSTORE_ERROR_RINGIDX`` (a framing violation gets
``XENSTORE_ERROR_PROTO``), as C xenstored does.

Deliberate difference from Xen: xenstored does not map the guest's frame by
its mfn. The guest grants its ring page to dom0 and the INTRODUCE ``gfn``
field carries that grant reference (Xen's toolstack reserves grant entry
``GNTTAB_RESERVED_XENSTORE`` for the same purpose; here the guest picks it).
The event channel is the guest's unbound port, bound by xenstored as in Xen.
xenstored's side follows C's ``handle_input``/``handle_output`` and
``domain_can_read`` for an unprivileged guest: it takes one request at a time
off the ring and stops taking them while ``Connection.can_read`` says no
(``outstanding`` replies unsent, C default 20, or the domain at its memory
quota). Output is queued in the store's connection (C's ``out_list``, where
identical events are dropped and queued bytes count against the domain's
memory); the channel is that connection's sink and writes what fits on the
rsp ring, once per request as C's main loop does. So a guest that floods
requests or never reads its ring holds at most 20 replies plus its memory
quota of events in dom0. To keep one busy guest from holding dom0's vCPU, one
service pass handles at most ``_BATCH`` requests and then queues itself
behind the other work.

Threaded mode: guest-side requests block for their reply, so they must not
be issued from the guest's own vCPU thread (where the event upcall runs).
Deterministic mode (the guest's vCPU is a lane of the machine's executor,
:mod:`xenpci.hv.scheduler`): nothing blocks and no thread exists. xenstored's
service is a task on dom0's vCPU lane, woken by the event channel; a guest
request queues its whole frame and runs the executor until its reply is on
the rsp ring, reading the ring itself while it waits (as Linux's xenbus does
when polled), so a request made on the guest's own lane, from a watch
callback, is answered too, and one nested in another's wait queues behind
it. Replies are matched to requests by order (xenstored answers a connection
in order); a missing reply fails at a deadline on the virtual clock. Closing the guest's
end (the domain is being destroyed) fails a request waiting for its reply or
for ring space at once with ``ConnectionClosed``: a paused guest's vCPU never
delivers that reply, and a destroy must not wait out the reply timeout.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xenpci.abi import xs_wire as w
from xenpci.abi.ring import store_idx
from xenpci.hv.errors import HvError
from xenpci.hv.scheduler import Scheduler, SteppedVcpu
from xenpci.xenstore.errors import ConnectionClosed, ProtocolError, XenstoreError
from xenpci.xenstore.gate import gate_of
from xenpci.xenstore.wire import HEADER, HEADER_SIZE, Frame, FrameDecoder

if TYPE_CHECKING:
    from xenpci.hv import Domain as HvDomain
    from xenpci.hv.grant_table import GrantMapping
    from xenpci.xenstore.core import Connection, XenStore
    from xenpci.xenstore.domain import Domain

_IFACE = w.xenstore_domain_interface
REQ = _IFACE.req.offset
RSP = _IFACE.rsp.offset
REQ_CONS = _IFACE.req_cons.offset
REQ_PROD = _IFACE.req_prod.offset
RSP_CONS = _IFACE.rsp_cons.offset
RSP_PROD = _IFACE.rsp_prod.offset
SERVER_FEATURES = _IFACE.server_features.offset
CONNECTION = _IFACE.connection.offset
ERROR = _IFACE.error.offset
_U32 = struct.Struct("<I")
SIZE = w.XENSTORE_RING_SIZE
#: Put on the reply queue by GuestRing.close to wake a request waiting for its reply.
_CLOSED = object()
#: Requests one service pass takes off a guest's ring before yielding dom0's vCPU.
_BATCH = 8
#: Seconds (of virtual time, in deterministic mode) a guest request waits for its reply.
REPLY_TIMEOUT = 30.0


class RingIndexError(XenstoreError):
    """The peer's producer/consumer indexes are more than a ring apart."""

    def __init__(self, prod: int, cons: int) -> None:
        self.prod, self.cons = prod, cons
        super().__init__(f"ring indexes prod={prod} cons={cons} are invalid")


def _get(buf: memoryview, off: int) -> int:
    # One 4-byte load (struct's native unpack is a memcpy of the word), like C's
    # ``cons = intf->req_cons``: a peer's single-store update is seen whole.
    return int(_U32.unpack_from(buf, off)[0])


def _put(buf: memoryview, off: int, value: int) -> None:
    """Store one ring word in a single 32-bit write (``intf->rsp_prod += len``): the
    page may be read by a peer process meanwhile (see :func:`store_idx`)."""
    store_idx(buf, off, value)


def ring_read(
    buf: memoryview, data: int, prod_off: int, cons_off: int, limit: int | None = None
) -> bytes:
    """Consume what is available on one ring (at most ``limit`` bytes); advance its consumer."""
    # ``_get`` inlined: a waiting request polls its rsp ring on every executor step.
    unpack = _U32.unpack_from
    cons, prod = unpack(buf, cons_off)[0], unpack(buf, prod_off)[0]
    avail = (prod - cons) & 0xFFFFFFFF
    if not avail:
        return b""  # the consumer index stays as it is: nothing to write back
    if avail > SIZE:
        raise RingIndexError(prod, cons)
    if limit is not None:
        avail = min(avail, limit)
    start = cons & (SIZE - 1)  # MASK_XENSTORE_IDX
    if start + avail <= SIZE:
        out = bytes(buf[data + start : data + start + avail])  # not wrapped: one slice
    else:
        first = SIZE - start
        out = bytes(buf[data + start : data + SIZE]) + bytes(buf[data : data + avail - first])
    store_idx(buf, cons_off, cons + avail)  # one store: a peer process may be reading
    return out


def ring_write(
    buf: memoryview, data: int, prod_off: int, cons_off: int, src: bytes | bytearray
) -> int:
    """Produce as much of ``src`` as fits; return how many bytes were written."""
    unpack = _U32.unpack_from  # ``_get`` inlined: once per request and per reply
    cons: int = unpack(buf, cons_off)[0]
    prod: int = unpack(buf, prod_off)[0]
    used = (prod - cons) & 0xFFFFFFFF
    if used > SIZE:
        raise RingIndexError(prod, cons)
    written = min(SIZE - used, len(src))
    if not written:
        return 0  # full (or nothing to write): the producer index stays as it is
    start = prod & (SIZE - 1)  # MASK_XENSTORE_IDX
    first = min(written, SIZE - start)
    buf[data + start : data + start + first] = src[:first]
    if first < written:  # wrapped: the rest from the ring's start
        buf[data : data + written - first] = src[first:written]
    store_idx(buf, prod_off, prod + written)  # one store: a peer process may be reading
    return written


@dataclass(slots=True)
class _Channel:
    """xenstored's state for one guest ring (``struct connection`` + ``struct domain``).

    Output waits in the store connection's queue (C's ``out_list``); the
    connection's sink writes it onto the rsp ring as far as it fits.
    """

    domid: int
    mapping: GrantMapping
    port: int
    conn: Connection
    #: The request being read: never more than one frame (C's ``conn->in``).
    inbuf: bytearray = field(default_factory=bytearray)
    #: Requests taken off the ring.
    requests: int = 0
    #: Bytes went onto the rsp ring since the guest was last kicked.
    wrote: bool = False
    #: The guest broke its rsp indexes while we wrote (XENSTORE_ERROR_RINGIDX).
    broken: bool = False
    #: A service pass is queued on dom0's vCPU (coalesces notifications).
    scheduled: bool = False
    dead: bool = False

    def sink(self, data: bytes) -> int:
        """The connection's sink: what fits on the rsp ring (called inside the store)."""
        if self.dead or self.broken:
            return 0
        try:
            n = ring_write(self.mapping.view, RSP, RSP_PROD, RSP_CONS, data)
        except RingIndexError:
            self.broken = True  # the next service pass cuts the guest off
            return 0
        if n:
            self.wrote = True
        return n


def _frame_need(inbuf: bytearray) -> int:
    """Bytes still missing from the request in ``inbuf`` (0: feed it now)."""
    if len(inbuf) < HEADER_SIZE:
        return HEADER_SIZE - len(inbuf)
    length: int = HEADER.unpack_from(inbuf)[3]
    if length > w.XENSTORE_PAYLOAD_MAX:
        return 0  # a bad header: the store refuses it at once (XENSTORE_ERROR_PROTO)
    return HEADER_SIZE + length - len(inbuf)


class XenstoredRings:
    """xenstored's ring side: serves every introduced domain on dom0's vCPU thread.

    Hooks the store's INTRODUCE/RELEASE: on introduce it maps the guest's
    granted page, binds the guest's event channel and opens a connection as
    that domain; on release it tears them down.
    """

    def __init__(self, store: XenStore, dom0: HvDomain) -> None:
        self.store = store
        self.dom0 = dom0
        self.hc = dom0.hypercalls
        self.channels: dict[int, _Channel] = {}
        self._gate = gate_of(store)
        store.on_introduce = self._introduce
        store.on_release = self._release

    def _introduce(self, dom: Domain) -> None:
        mapping = self.hc.gnttab_map_grant_ref(dom.domid, dom.gfn, False)
        port = self.hc.evtchn_bind_interdomain(dom.domid, dom.evtchn)
        with self._gate:
            conn = self.store.connection(dom.domid)
        ch = _Channel(dom.domid, mapping, port, conn)
        buf = mapping.view
        _put(buf, SERVER_FEATURES, w.XENSTORE_SERVER_FEATURE_ERROR)
        _put(buf, CONNECTION, w.XENSTORE_CONNECTED)
        _put(buf, ERROR, w.XENSTORE_ERROR_NONE)
        self.channels[dom.domid] = ch
        conn.sink = ch.sink
        # Events queued by other connections: service this ring on dom0's vCPU.
        conn.notify = lambda: self._post(ch)
        # A partial, not a lambda: one Python frame less per request's upcall.
        self.hc.evtchn_set_handler(port, functools.partial(self._service, ch))
        self._post(ch)  # requests written before the introduce

    def _post(self, ch: _Channel) -> None:
        # One queued pass is enough however many events arrive before it runs:
        # it takes them all. Cleared by the pass before it takes them.
        if ch.dead or ch.scheduled:
            return
        ch.scheduled = True
        try:
            self.dom0.run(self._service, ch)
        except Exception:
            ch.scheduled = False

    def _release(self, dom: Domain) -> None:
        ch = self.channels.pop(dom.domid, None)
        if ch is None:
            return
        ch.dead = True
        self._clear(ch)
        with contextlib.suppress(Exception):
            self.hc.evtchn_set_handler(ch.port, None)
            self.hc.evtchn_close(ch.port)
        with contextlib.suppress(Exception):
            self.hc.gnttab_unmap_grant_ref(ch.mapping.handle)

    def _clear(self, ch: _Channel) -> None:
        ch.inbuf.clear()
        with self._gate:
            ch.conn.close("domain released")

    def _fail(self, ch: _Channel, error: int) -> None:
        _put(ch.mapping.view, ERROR, error)
        ch.dead = True
        ch.inbuf.clear()
        with self._gate:
            ch.conn.close("ring error")

    def _service(self, ch: _Channel, _port: int = 0) -> None:
        """``handle_input`` + ``handle_output`` for one ring (on dom0's vCPU); also the
        ring's event handler (``_port`` is the event's)."""
        ch.scheduled = False
        if ch.dead:
            return
        buf = ch.mapping.view
        conn = ch.conn
        kick = False
        taken = 0
        failed = False
        try:
            with self._gate:  # the store's other callers run on other threads
                conn.flush()  # the guest may have made room on rsp
                while not ch.broken:
                    if taken >= _BATCH or not conn.can_read():
                        break
                    # C's handle_input: the header, then (once whole) the body, in one
                    # pass; can_read is asked once per pass, as C's main loop does.
                    need = _frame_need(ch.inbuf)
                    while need:
                        data = ring_read(buf, REQ, REQ_PROD, REQ_CONS, need)
                        if not data:
                            break
                        kick = True
                        ch.inbuf += data
                        need = _frame_need(ch.inbuf)
                    if need:
                        break  # the rest of the frame is not on the ring yet
                    frame = bytes(ch.inbuf)
                    ch.inbuf.clear()
                    taken += 1
                    ch.requests += 1
                    conn.feed(frame)  # the reply goes to the sink (or waits in the queue)
                    if conn.closed:
                        self._fail(ch, w.XENSTORE_ERROR_PROTO)
                        failed = True
                        break
        except RingIndexError:
            ch.broken = True
        if failed:
            self.hc.evtchn_send(ch.port)  # outside the store: the guest sees the error
            return
        if ch.broken:
            self._fail(ch, w.XENSTORE_ERROR_RINGIDX)
            return
        if taken >= _BATCH:
            self._post(ch)  # more may be waiting: after the other queued work
        if ch.wrote:
            ch.wrote = False
            kick = True
        if kick:
            self.hc.evtchn_send(ch.port)


class GuestRing:
    """The guest's end (Linux ``xenbus_comms``): a :class:`Transport` for XsClient.

    Allocates the ring page in the guest's own memory, grants it to dom0 and
    allocates an unbound event channel for dom0. Pass ``gref`` and ``port`` to
    INTRODUCE (``XenStore.introduce_domain(domid, gref, port)``).
    """

    def __init__(self, guest: HvDomain, backend_domid: int = 0) -> None:
        self.guest = guest
        hc = guest.hypercalls
        self.hc = hc
        self.gfn = hc.alloc_page()
        self.buf = hc.page(self.gfn)
        self.buf[: _IFACE.error.offset + 4] = bytes(_IFACE.error.offset + 4)
        self.gref = hc.gnttab_grant_foreign_access(backend_domid, self.gfn, False)
        self.port = hc.evtchn_alloc_unbound(backend_domid)
        self.on_event: Callable[[Frame], None] = lambda f: None
        self._decoder = FrameDecoder()
        # None: the ring failed (xenstored set ``error``); _CLOSED: our end was closed.
        self._replies: queue.Queue[Frame | object | None] = queue.Queue()
        self._space = threading.Condition()
        self._lock = threading.Lock()
        self._closed = False
        # Deterministic mode (the guest's vCPU is a lane of the machine's executor):
        # no thread ever blocks here; a request queues its frame and runs the
        # executor until its reply is on the rsp ring (see _pump).
        vcpu = guest.vcpu
        self.executor: Scheduler | None = vcpu.scheduler if isinstance(vcpu, SteppedVcpu) else None
        #: Deterministic mode: request bytes not yet on the req ring (whole frames, in order).
        self._out = bytearray()
        #: Deterministic mode: replies by request sequence number (xenstored answers in order).
        self._answers: dict[int, Frame] = {}
        self._sent = 0
        self._answered = 0
        self._failed = False
        hc.evtchn_set_handler(self.port, self._upcall if self.executor is None else self._pump)

    @property
    def error(self) -> int:
        """The ring page's ``error`` field as xenstored set it."""
        return _get(self.buf, ERROR)

    def _upcall(self, _port: int) -> None:
        # Guest vCPU: drain replies and events, then tell xenstored there is room.
        try:
            data = ring_read(self.buf, RSP, RSP_PROD, RSP_CONS)
            frames = self._decoder.feed(data)
        except (RingIndexError, ProtocolError):
            self._replies.put(None)
            return
        for f in frames:
            if f.type == w.XS_WATCH_EVENT:
                self.on_event(f)
            else:
                self._replies.put(f)
        if data:
            self.hc.evtchn_send(self.port)
        if self.error != w.XENSTORE_ERROR_NONE:
            self._replies.put(None)
        with self._space:
            self._space.notify_all()

    def _pump(self, _port: int = 0) -> None:
        """Deterministic mode: move queued request bytes onto req and replies off rsp.

        Also the event handler of the guest's port in that mode (``_port`` is the event's).

        Run by the guest's event upcall and by a waiting request's predicate, so
        a request made on the guest's own lane (a watch callback's read) gets
        its reply although the upcall cannot run meanwhile: the kernel reads
        its rsp ring, as Linux's xenbus does when polled.
        """
        if self._closed or self._failed:
            return
        buf = self.buf
        try:
            if self._out:
                n = ring_write(buf, REQ, REQ_PROD, REQ_CONS, self._out)
                if n:
                    del self._out[:n]
                    self._kick()
            data = ring_read(buf, RSP, RSP_PROD, RSP_CONS)
            frames = self._decoder.feed(data) if data else []
        except (RingIndexError, ProtocolError):
            self._failed = True
            return
        for f in frames:
            if f.type == w.XS_WATCH_EVENT:
                self.on_event(f)
            else:
                self._answers[self._answered] = f
                self._answered += 1
        if data:
            self._kick()  # room on rsp: xenstored may write more
        if _U32.unpack_from(buf, ERROR)[0] != w.XENSTORE_ERROR_NONE:  # ``_get`` inlined
            self._failed = True

    def _kick(self) -> None:
        # notify_remote_via_evtchn: nothing to report if xenstored has not bound the
        # port yet; it reads the ring when it introduces the domain.
        try:  # noqa: SIM105 - no context manager on every request's way out
            self.hc.evtchn_send(self.port)
        except HvError:
            pass

    def _request_on_executor(self, ex: Scheduler, data: bytes) -> Frame:
        # No lock: one thread runs everything, and a request nested in another's
        # wait (a watch callback's read) queues its frame whole behind the first.
        if self._closed:
            raise ConnectionClosed("ring closed")
        seq = self._sent
        self._sent += 1
        self._out += data
        answers = self._answers

        def answered() -> bool:
            self._pump()
            return seq in answers or self._closed or self._failed

        if not ex.wait_until(answered, REPLY_TIMEOUT):
            raise ConnectionClosed("no reply from xenstored")
        reply = answers.pop(seq, None)
        if reply is not None:
            return reply
        if self._closed:
            raise ConnectionClosed("ring closed while waiting for the reply")
        raise ConnectionClosed(f"ring error {self.error}")

    def request(self, data: bytes) -> Frame:
        ex = self.executor
        if ex is not None:
            return self._request_on_executor(ex, data)
        if self.guest.vcpu.on_this_vcpu():
            raise XenstoreError("xenstore requests cannot be made from the guest's vCPU thread")
        with self._lock:
            if self._closed:
                raise ConnectionClosed("ring closed")
            sent = 0
            while sent < len(data):
                with self._space:
                    try:
                        n = ring_write(self.buf, REQ, REQ_PROD, REQ_CONS, data[sent:])
                    except RingIndexError as e:
                        self._closed = True
                        raise ConnectionClosed(str(e)) from e
                    sent += n
                    if n:
                        self.hc.evtchn_send(self.port)
                    elif self._closed:
                        raise ConnectionClosed("ring closed while waiting for space")
                    elif not self._space.wait(timeout=10):
                        raise ConnectionClosed("xenstored does not consume the ring")
                    if self._closed:
                        raise ConnectionClosed("ring closed while waiting for space")
            try:
                reply = self._replies.get(timeout=REPLY_TIMEOUT)
            except queue.Empty:
                raise ConnectionClosed("no reply from xenstored") from None
            if reply is _CLOSED:
                raise ConnectionClosed("ring closed while waiting for the reply")
            if reply is None:
                self._closed = True
                raise ConnectionClosed(f"ring error {self.error}")
            assert isinstance(reply, Frame)
            return reply

    def close(self) -> None:
        """Shut our end: a request blocked on a reply or on ring space fails now."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.hc.evtchn_set_handler(self.port, None)
        # Not under _lock: the request waiting holds it. The marker is left for a
        # request not yet waiting too; none can come after (they check _closed).
        self._replies.put(_CLOSED)
        with self._space:
            self._space.notify_all()
