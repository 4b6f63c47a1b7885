"""Event channels, 2-level ABI: ports, pending and mask bits, interdomain and pirq binding.

Models ``xen/common/event_channel.c`` (``evtchn_alloc_unbound``,
``evtchn_bind_interdomain``, ``evtchn_send``, ``evtchn_close``,
``evtchn_bind_pirq``) and the 2-level pending/mask bitmaps of
``event_2l.c``: a send sets the remote port's pending bit; only a 0 -> 1
transition on an unmasked port raises an upcall; unmasking a pending port
raises it then. The upcall runs the guest kernel's handler for the port on the
receiving domain's vCPU thread, after clearing the pending bit (Linux's
``evtchn_2l_handle_events`` does the same before calling the irq handler).

Port 0 is reserved and never valid, as in Xen. Closing one end of an
interdomain channel leaves the other end ``UNBOUND`` towards the closer, as Xen
does. Deliberate difference: sending on an unbound port raises ``ENOTCONN``
where Xen silently drops it, so a wiring mistake is visible.

An upcall queued before a port was closed (or closed and reused) finds its port
object gone or its pending bit cleared and does nothing: no event ever reaches
a port that was closed or bound elsewhere.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass

from xenpci.hv.errors import EvtchnError, HvError, NoSuchDomain

#: ``EVTCHN_2L_NR_CHANNELS`` on a 64-bit guest: 64 words of 64 bits.
NR_EVTCHN_PORTS = 64 * 64

Handler = Callable[[int], None]
Post = Callable[[Callable[[], None]], None]


class PortState(enum.Enum):
    """``ECS_*`` of ``xen/include/xen/event.h`` (the ones modelled)."""

    #: ``ECS_UNBOUND``: allocated, waiting for ``remote_domid`` to bind.
    UNBOUND = "unbound"
    #: ``ECS_INTERDOMAIN``: connected to (remote_domid, remote_port).
    INTERDOMAIN = "interdomain"
    #: ``ECS_PIRQ``: a physical interrupt delivered as an event.
    PIRQ = "pirq"


_INTERDOMAIN = PortState.INTERDOMAIN


@dataclass(frozen=True, slots=True)
class PortInfo:
    """``EVTCHNOP_status`` of one port."""

    port: int
    state: PortState
    remote_domid: int | None
    remote_port: int | None
    pirq: int | None
    pending: bool
    masked: bool


def _no_upcall() -> None:
    return None


class _Port:
    __slots__ = (
        "handler",
        "masked",
        "number",
        "peer",
        "peer_dom",
        "pending",
        "pirq",
        "remote_dom",
        "remote_port",
        "state",
        "upcall",
    )

    def __init__(self, number: int, state: PortState) -> None:
        self.number = number
        self.state = state
        self.remote_dom: int | None = None
        self.remote_port: int | None = None
        self.pirq: int | None = None
        self.pending = False
        self.masked = False
        self.handler: Handler | None = None
        # The other end of an interdomain channel and its domain, kept next to
        # (remote_dom, remote_port) so a send needs no table lookups.
        self.peer: _Port | None = None
        self.peer_dom: _DomainPorts | None = None
        self.upcall: Callable[[], None] = _no_upcall


class _DomainPorts:
    __slots__ = ("domid", "ports", "post", "upcalls")

    def __init__(self, domid: int, post: Post) -> None:
        self.domid = domid
        self.post = post
        self.upcalls = 0
        self.ports: dict[int, _Port] = {}


class EventChannels:
    """All domains' ports under one lock; delivery posts to the receiver's vCPU."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._doms: dict[int, _DomainPorts] = {}
        self._pirq_port: dict[tuple[int, int], int] = {}

    def add_domain(self, domid: int, post: Post) -> None:
        with self._lock:
            self._doms[domid] = _DomainPorts(domid, post)

    def remove_domain(self, domid: int) -> None:
        with self._lock:
            dom = self._doms.get(domid)
            if dom is None:
                return
            for number in list(dom.ports):
                self._close_locked(dom, dom.ports[number])
            del self._doms[domid]

    # -- binding ----------------------------------------------------------
    def alloc_unbound(self, domid: int, remote_domid: int) -> int:
        with self._lock:
            dom = self._dom(domid, "evtchn_alloc_unbound")
            self._require_domain(remote_domid, "evtchn_alloc_unbound", domid)
            port = self._new_port(dom, PortState.UNBOUND, "evtchn_alloc_unbound")
            port.remote_dom = remote_domid
            return port.number

    def bind_interdomain(self, domid: int, remote_domid: int, remote_port: int) -> int:
        op = "evtchn_bind_interdomain"
        with self._lock:
            dom = self._dom(domid, op)
            rdom = self._require_domain(remote_domid, op, domid)
            rport = self._port(rdom, remote_port, op, caller=domid)
            if rport.state is not PortState.UNBOUND or rport.remote_dom != domid:
                raise EvtchnError(
                    f"d{remote_domid} port {remote_port} is not unbound for d{domid}",
                    op=op,
                    domid=domid,
                    remote_domid=remote_domid,
                    remote_port=remote_port,
                )
            port = self._new_port(dom, PortState.INTERDOMAIN, op)
            port.remote_dom, port.remote_port = remote_domid, remote_port
            rport.state = PortState.INTERDOMAIN
            rport.remote_port = port.number
            port.peer, port.peer_dom = rport, rdom
            rport.peer, rport.peer_dom = port, dom
            return port.number

    def bind_pirq(self, domid: int, pirq: int) -> int:
        op = "evtchn_bind_pirq"
        with self._lock:
            dom = self._dom(domid, op)
            if (domid, pirq) in self._pirq_port:
                raise EvtchnError(
                    f"pirq {pirq} already bound", errno="EEXIST", op=op, domid=domid, pirq=pirq
                )
            port = self._new_port(dom, PortState.PIRQ, op)
            port.pirq = pirq
            self._pirq_port[domid, pirq] = port.number
            return port.number

    def close(self, domid: int, number: int) -> None:
        with self._lock:
            dom = self._dom(domid, "evtchn_close")
            self._close_locked(dom, self._port(dom, number, "evtchn_close"))

    # -- signalling -------------------------------------------------------
    def send(self, domid: int, number: int) -> tuple[int, int]:
        """Notify the other end; return the ``(domid, port)`` that was signalled."""
        signalled: list[tuple[int, int, int]] = []
        self.sender(domid, signalled.append)(number)
        _, to_domid, to_port = signalled[0]
        return to_domid, to_port

    def sender(
        self,
        domid: int,
        sent: Callable[[tuple[int, int, int]], None] | None = None,
        failed: Callable[[int, HvError], None] | None = None,
    ) -> Callable[[int], None]:
        """``evtchn_send`` for ``domid``, bound once: ``send(port)`` notifies the other end.

        The hot path of every split driver, one Python frame per event: it sets
        the peer's pending bit under the lock, then (outside it) reports
        ``sent((port, to_domid, to_port))`` and only then posts the upcall, so
        the sender's trace record always precedes anything the woken handler
        does. A refused send reports ``failed(port, error)`` and raises. An
        upcall that runs after the port was closed finds it gone and does
        nothing.
        """
        lock, doms, send_error = self._lock, self._doms, self._send_error

        def send(number: int) -> None:
            lock.acquire()  # explicit acquire/release: measurably cheaper than ``with`` here
            try:
                dom = doms.get(domid)
                port = dom.ports.get(number) if dom is not None else None
                if port is None or port.state is not _INTERDOMAIN:
                    error: HvError | None = send_error(domid, number)
                else:
                    error = None
                    rport, rdom = port.peer, port.peer_dom
                    assert rport is not None and rdom is not None  # set with INTERDOMAIN
                    post = None
                    if not rport.pending:
                        rport.pending = True
                        if not rport.masked and rport.handler is not None:
                            post = rdom.post
                    to_domid, to_port, upcall = rdom.domid, rport.number, rport.upcall
            finally:
                lock.release()
            if error is not None:
                if failed is not None:
                    failed(number, error)
                raise error
            if sent is not None:
                sent((number, to_domid, to_port))
            if post is not None:
                # Posted to the receiver's vCPU after the lock and the record.
                try:  # noqa: SIM105 - the event hot path: no context manager per event
                    post(upcall)
                except HvError:
                    pass  # racing with the receiver's destruction: lost, as on real Xen

        return send

    def _send_error(self, domid: int, number: int) -> HvError:
        try:
            port = self._port(self._dom(domid, "evtchn_send"), number, "evtchn_send")
        except HvError as exc:
            return exc
        return EvtchnError(
            f"port {number} is {port.state.value}, not connected",
            errno="ENOTCONN" if port.state is PortState.UNBOUND else "EINVAL",
            op="evtchn_send",
            domid=domid,
            port=number,
        )

    def deliver_pirq(self, domid: int, pirq: int) -> int | None:
        """A physical interrupt for ``domid``'s ``pirq``: the port signalled, or ``None``."""
        with self._lock:
            number = self._pirq_port.get((domid, pirq))
            dom = self._doms.get(domid)
            if number is None or dom is None:
                return None
            self._set_pending(dom, dom.ports[number])
            return number

    def mask(self, domid: int, number: int) -> None:
        with self._lock:
            self._port(self._dom(domid, "evtchn_mask"), number, "evtchn_mask").masked = True

    def unmask(self, domid: int, number: int) -> None:
        with self._lock:
            dom = self._dom(domid, "evtchn_unmask")
            port = self._port(dom, number, "evtchn_unmask")
            port.masked = False
            if port.pending:
                self._raise_upcall(dom, port)

    def pending(self, domid: int, number: int) -> bool:
        with self._lock:
            return self._port(self._dom(domid, "evtchn_pending"), number, "evtchn_pending").pending

    def clear_pending(self, domid: int, number: int) -> bool:
        """Clear and return the pending bit (a guest polling without a handler)."""
        with self._lock:
            port = self._port(self._dom(domid, "evtchn_clear_pending"), number, "evtchn_clear")
            was, port.pending = port.pending, False
            return was

    def set_handler(self, domid: int, number: int, handler: Handler | None) -> None:
        with self._lock:
            dom = self._dom(domid, "evtchn_set_handler")
            port = self._port(dom, number, "evtchn_set_handler")
            port.handler = handler
            if handler is not None and port.pending and not port.masked:
                self._raise_upcall(dom, port)

    def status(self, domid: int, number: int) -> PortInfo:
        with self._lock:
            p = self._port(self._dom(domid, "evtchn_status"), number, "evtchn_status")
            return PortInfo(
                p.number, p.state, p.remote_dom, p.remote_port, p.pirq, p.pending, p.masked
            )

    def upcalls(self, domid: int) -> int:
        """How many handler calls ``domid``'s vCPU has made for its ports."""
        dom = self._doms.get(domid)
        return dom.upcalls if dom is not None else 0

    def ports(self, domid: int) -> list[int]:
        with self._lock:
            dom = self._doms.get(domid)
            return sorted(dom.ports) if dom else []

    # -- internals --------------------------------------------------------
    def _set_pending(self, dom: _DomainPorts, port: _Port) -> None:
        if port.pending:
            return  # already pending: events coalesce, as the 2-level bitmap does
        port.pending = True
        if not port.masked and port.handler is not None:
            self._raise_upcall(dom, port)

    def _raise_upcall(self, dom: _DomainPorts, port: _Port) -> None:
        dom.post(port.upcall)

    def _make_upcall(self, dom: _DomainPorts, port: _Port) -> Callable[[], None]:
        """The function the receiving vCPU runs for ``port`` (built once per port)."""
        lock, number = self._lock, port.number

        def upcall() -> None:
            lock.acquire()
            try:
                # The port may have been closed (or closed and reallocated) since.
                handler = port.handler
                if (
                    handler is None
                    or not port.pending
                    or port.masked
                    or dom.ports.get(number) is not port
                ):
                    return
                port.pending = False
            finally:
                lock.release()
            # Counted, not traced: the send that caused it is in the trace already.
            # Only this domain's vCPU runs its upcalls, so the counter has one writer.
            dom.upcalls += 1
            handler(number)

        return upcall

    def _close_locked(self, dom: _DomainPorts, port: _Port) -> None:
        if port.state is PortState.INTERDOMAIN:
            assert port.remote_dom is not None and port.remote_port is not None
            rdom = self._doms.get(port.remote_dom)
            rport = rdom.ports.get(port.remote_port) if rdom else None
            if rport is not None:
                rport.state = PortState.UNBOUND
                rport.remote_dom = dom.domid
                rport.remote_port = None
                rport.peer = rport.peer_dom = None
        elif port.state is PortState.PIRQ:
            assert port.pirq is not None
            self._pirq_port.pop((dom.domid, port.pirq), None)
        port.pending = False
        port.handler = None
        port.peer = port.peer_dom = None
        del dom.ports[port.number]

    def _new_port(self, dom: _DomainPorts, state: PortState, op: str) -> _Port:
        # Xen's get_free_port hands out the lowest free port; port 0 is reserved.
        for number in range(1, NR_EVTCHN_PORTS):
            if number not in dom.ports:
                port = _Port(number, state)
                port.upcall = self._make_upcall(dom, port)
                dom.ports[number] = port
                return port
        raise EvtchnError("no free port", errno="ENOSPC", op=op, domid=dom.domid)

    def _dom(self, domid: int, op: str) -> _DomainPorts:
        dom = self._doms.get(domid)
        if dom is None:
            raise NoSuchDomain(f"d{domid} does not exist", op=op, domid=domid)
        return dom

    def _require_domain(self, domid: int, op: str, caller: int) -> _DomainPorts:
        dom = self._doms.get(domid)
        if dom is None:
            raise NoSuchDomain(f"remote d{domid} does not exist", op=op, domid=caller)
        return dom

    @staticmethod
    def _port(dom: _DomainPorts, number: int, op: str, caller: int | None = None) -> _Port:
        who = dom.domid if caller is None else caller
        if not 0 < number < NR_EVTCHN_PORTS:
            raise EvtchnError(
                f"port {number} out of range 1..{NR_EVTCHN_PORTS - 1}",
                op=op,
                domid=who,
                port=number,
            )
        port = dom.ports.get(number)
        if port is None:
            raise EvtchnError(f"port {number} is not allocated", op=op, domid=who, port=number)
        return port
