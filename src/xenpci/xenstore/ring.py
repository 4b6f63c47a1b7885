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
Guest-side requests block for their reply, so they must not be issued from
the guest's own vCPU thread (where the event upcall runs). Closing the guest's
end (the domain is being destroyed) fails a request waiting for its reply or
for ring space at once with ``ConnectionClosed``: a paused guest's vCPU never
delivers that reply, and a destroy must not wait out the reply timeout.
"""

from __future__ import annotations

import contextlib
import queue
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xenpci.abi import xs_wire as w
from xenpci.xenstore.errors import ConnectionClosed, ProtocolError, XenstoreError
from xenpci.xenstore.wire import Frame, FrameDecoder

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


class RingIndexError(XenstoreError):
    """The peer's producer/consumer indexes are more than a ring apart."""

    def __init__(self, prod: int, cons: int) -> None:
        self.prod, self.cons = prod, cons
        super().__init__(f"ring indexes prod={prod} cons={cons} are invalid")


def _get(buf: memoryview, off: int) -> int:
    return int(_U32.unpack_from(buf, off)[0])


def _put(buf: memoryview, off: int, value: int) -> None:
    _U32.pack_into(buf, off, value & 0xFFFFFFFF)


def ring_read(buf: memoryview, data: int, prod_off: int, cons_off: int) -> bytes:
    """Consume everything available on one ring; advance its consumer index."""
    cons, prod = _get(buf, cons_off), _get(buf, prod_off)
    avail = (prod - cons) & 0xFFFFFFFF
    if avail > SIZE:
        raise RingIndexError(prod, cons)
    out = bytearray()
    while avail:
        start = w.MASK_XENSTORE_IDX(cons)
        n = min(avail, SIZE - start)
        out += buf[data + start : data + start + n]
        cons += n
        avail -= n
    _put(buf, cons_off, cons)
    return bytes(out)


def ring_write(buf: memoryview, data: int, prod_off: int, cons_off: int, src: bytes) -> int:
    """Produce as much of ``src`` as fits; return how many bytes were written."""
    cons, prod = _get(buf, cons_off), _get(buf, prod_off)
    used = (prod - cons) & 0xFFFFFFFF
    if used > SIZE:
        raise RingIndexError(prod, cons)
    room = SIZE - used
    written = 0
    while room and written < len(src):
        start = w.MASK_XENSTORE_IDX(prod)
        n = min(room, SIZE - start, len(src) - written)
        buf[data + start : data + start + n] = src[written : written + n]
        prod += n
        room -= n
        written += n
    _put(buf, prod_off, prod)
    return written


@dataclass(slots=True)
class _Channel:
    domid: int
    mapping: GrantMapping
    port: int
    conn: Connection
    pending: bytearray = field(default_factory=bytearray)
    dead: bool = False


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
        store.on_introduce = self._introduce
        store.on_release = self._release

    def _introduce(self, dom: Domain) -> None:
        mapping = self.hc.gnttab_map_grant_ref(dom.domid, dom.gfn, False)
        port = self.hc.evtchn_bind_interdomain(dom.domid, dom.evtchn)
        conn = self.store.connection(dom.domid)
        ch = _Channel(dom.domid, mapping, port, conn)
        buf = mapping.view
        _put(buf, SERVER_FEATURES, w.XENSTORE_SERVER_FEATURE_ERROR)
        _put(buf, CONNECTION, w.XENSTORE_CONNECTED)
        _put(buf, ERROR, w.XENSTORE_ERROR_NONE)
        self.channels[dom.domid] = ch
        # Events queued by other connections: service this ring on dom0's vCPU.
        conn.notify = lambda: self._post(ch)
        self.hc.evtchn_set_handler(port, lambda _port: self._service(ch))
        self._post(ch)  # requests written before the introduce

    def _post(self, ch: _Channel) -> None:
        if not ch.dead:
            with contextlib.suppress(Exception):
                self.dom0.run(self._service, ch)

    def _release(self, dom: Domain) -> None:
        ch = self.channels.pop(dom.domid, None)
        if ch is None:
            return
        ch.dead = True
        with contextlib.suppress(Exception):
            self.hc.evtchn_set_handler(ch.port, None)
            self.hc.evtchn_close(ch.port)
        with contextlib.suppress(Exception):
            self.hc.gnttab_unmap_grant_ref(ch.mapping.handle)

    def _fail(self, ch: _Channel, error: int) -> None:
        _put(ch.mapping.view, ERROR, error)
        ch.dead = True
        ch.conn.close("ring error")

    def _service(self, ch: _Channel) -> None:
        """``handle_input`` + ``handle_output`` for one ring (on dom0's vCPU)."""
        if ch.dead:
            return
        buf = ch.mapping.view
        try:
            data = ring_read(buf, REQ, REQ_PROD, REQ_CONS)
        except RingIndexError:
            self._fail(ch, w.XENSTORE_ERROR_RINGIDX)
            return
        kick = bool(data)
        if data:
            ch.pending += b"".join(ch.conn.feed(data))
            if ch.conn.closed:
                self._fail(ch, w.XENSTORE_ERROR_PROTO)
                self.hc.evtchn_send(ch.port)
                return
        else:
            ch.pending += b"".join(ch.conn.take_output())
        if ch.pending:
            try:
                n = ring_write(buf, RSP, RSP_PROD, RSP_CONS, bytes(ch.pending))
            except RingIndexError:
                self._fail(ch, w.XENSTORE_ERROR_RINGIDX)
                return
            del ch.pending[:n]
            kick = kick or n > 0
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
        hc.evtchn_set_handler(self.port, self._upcall)

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

    def request(self, data: bytes) -> Frame:
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
                reply = self._replies.get(timeout=30)
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
