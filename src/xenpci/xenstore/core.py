"""The xenstored request handler, sans-IO (``xenstored_core.c``, ``_watch.c``, ``_domain.c``).

:class:`XenStore` holds the tree, the domain table, every connection's
watches and transactions; :class:`Connection` turns request bytes into reply
and watch-event bytes. Each op is one row of :data:`OPS` (handler, needs
privilege, uses the header's tx_id, modifies the store), as C's
``wire_funcs[]``; ``process_message``'s checks run in C's order (unknown type
ENOSYS, privilege EACCES, unknown tx_id ENOENT). Error codes follow C 4.17's
``do_*`` functions; quotas bind unprivileged connections only, and EQUOTA is
never sent.

Watch events are outputs: a change queues them on the watchers' connections
(``send_event``: an event identical to one still queued there is dropped, as
XSA-326 made C do; an unprivileged domain over its memory quota loses the
event) and the connection's ``notify`` is called once the request is
done. Each connection's queue is C's ``out_list``, the only one: a ring
or socket transport sets ``Connection.sink`` (a non-blocking writer), and at
the end of each request, still inside the store, every connection with new
output hands the sink what it takes, as C's main loop writes after each
request; the rest waits (``flush`` when the peer makes room), counted in
``outstanding`` and in the domain's memory. In-process callers have no sink
and take each frame as it is queued (``feed``'s result, ``take_output``).
Per-domain memory is counted as C 4.17 counts it: node records
(record plus path) for their owner, transaction-private records, watches and
queued output for the connection's domain.

Threads: none. The core is single-threaded, as C xenstored is one thread;
it holds no lock. Each public entry point (``Connection.feed``/``take_output``/
``flush``/``close``, ``XenStore.connection``, ``introduce_domain``,
``release_domain``) handles its request, hands new output to the sinks
(C's main loop writing after each request: a sink copies bytes and never
blocks), and then wakes the transports (``notify``, ``on_introduce``/
``on_release`` hooks). A program that calls one store from several threads
(the threaded machine) enters it through its :class:`~xenpci.xenstore.gate.Gate`,
which serializes the calls and runs those wake-ups only after the caller has
left. The executor and the ``xenpci xenstored`` daemon call it from one
thread and need no gate.

Deliberate differences: socket clients are dom0 unless a transport says
otherwise; there is no hypervisor, so INTRODUCE records the domain and tells
an attached ring transport, and a domain "exists" (for SET_PERMS) when
``domain_exists`` says so (every domid when none is given); at commit all
records are written before any event is fired (C interleaves them, which only
changes which parent ACL a watcher is checked against mid-commit).
Generations are stamped where C stamps them (``access_node``, ``manual_node``,
commit), so DIRECTORY_PART's generation equals C's in the differential tests.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice as _islice

from xenpci.abi import xs_wire as w
from xenpci.trace import Trace
from xenpci.xenstore.control import do_control
from xenpci.xenstore.domain import DEFAULT_QUOTAS, DOMID_SELF, Domain
from xenpci.xenstore.errors import ProtocolError, XsError
from xenpci.xenstore.perms import Perms
from xenpci.xenstore.transaction import Accessed, Transaction
from xenpci.xenstore.tree import (
    DEAD,
    NO_GENERATION,
    SPECIAL_NODES,
    Node,
    Tree,
    canonical,
    implicit_path,
    is_valid_nodename,
    parent_of,
    prefixes,
    walk,
    watch_path_for,
)
from xenpci.xenstore.wire import HEADER, Frame, FrameDecoder, encode, error_frame

OK = b"OK\0"
# C DEFAULT_BUFFER_SIZE: replies up to this size are queued without a quota check.
DEFAULT_BUFFER_SIZE = 16
_HDR = HEADER.size
# Validated absolute paths remembered (the table is emptied when full), and
# only short ones: a client's long paths cannot make the table big.
_PATH_CACHE = 4096
_PATH_CACHE_LEN = 128
# Bytes of queued frames handed to one sink call.
_PUSH_CHUNK = 64 * 1024
# perm_for_conn's bits (xenstore_lib.h).
P_READ = 1
P_WRITE = 2
P_OWNER = 8
P_ALL = P_READ | P_WRITE | P_OWNER


class _Lookup:
    """Type of LOOKUP: "find the live node yourself" for ``XenStore._read``."""


LOOKUP = _Lookup()
# Values up to this size are shared between nodes (a table of at most so many).
_INTERN_MAX = 32
_INTERN_ENTRIES = 1 << 16
# The value of a transaction record's child table: only the names are used.
_STUB = Node(b"", Perms.owner_only(0), 0)


@dataclass(frozen=True, slots=True)
class Watch:
    """One registered watch (``struct watch``)."""

    conn: Connection
    path: str  # canonical
    token: bytes
    relative_to: str | None  # the implicit path if registered relative
    seq: int  # registration order across the store


@dataclass(frozen=True, slots=True)
class Event:
    """One change that fires watches: path, exact-or-subtree, ACLs that let a watcher see it.

    ``perms`` are C's ``watch_permitted`` sources in order (old ACL, node ACL,
    parent ACL); empty when there is nothing to check against (a node created
    and removed in one transaction), so nobody gets the event.
    """

    path: str
    exact: bool
    perms: tuple[Perms, ...] | Callable[[], tuple[Perms, ...]]  # a callable: computed if needed


class Connection:
    """One client of the store: dom0 tool, guest ring, or in-process component.

    ``feed(data)`` consumes request bytes and returns every output byte string
    queued so far (replies in request order, watch events where C queues
    them). Events caused by *other* connections are queued here too and
    announced by calling ``notify`` (set by the transport); fetch them with
    :meth:`take_output`. After a framing violation ``closed`` is set and the
    transport must drop the connection.
    """

    def __init__(
        self, store: XenStore, domid: int, *, readonly: bool, privileged: bool, seq: int
    ) -> None:
        self.store = store
        self.domid = domid
        self.readonly = readonly
        self.privileged = privileged
        self.seq = seq
        self.closed = False
        self.close_reason = ""
        self.notify: Callable[[], None] | None = None
        #: Set by a ring or socket transport: hands bytes to the peer without
        #: blocking and returns how many it took. Output then stays queued here
        #: (C's ``out_list``) until the sink has taken it; without a sink the
        #: in-process caller takes each frame as it is queued (feed's result,
        #: take_output).
        self.sink: Callable[[bytes], int] | None = None
        self._decoder = FrameDecoder()
        self._out: deque[bytes] = deque()
        # Bytes of the head frame the sink already took (C writes frames in parts).
        self._sent = 0
        # Watch events still queued (C scans its out_list for duplicates).
        self._queued_events: dict[bytes, int] = {}
        self.out_bytes = 0
        #: Replies queued and not yet wholly handed to the peer (C ``nboutstanding``).
        self.outstanding = 0
        # Watch events send_event dropped for this connection: identical to one
        # still queued (XSA-326), or past the domain's memory quota.
        self.dropped_events = 0
        self.watches: dict[tuple[str, bytes], Watch] = {}
        self.transactions: dict[int, Transaction] = {}
        self._next_tx = 1

    # -- transport side -------------------------------------------------------
    def feed(self, data: bytes) -> list[bytes]:
        """Process request bytes; return queued output (replies and events)."""
        store = self.store
        store._depth += 1  # store._enter() inlined: once per request
        outer = store._feeding
        store._feeding = self
        try:
            if self.closed:
                return []
            sink = self.sink
            if sink is not None and store._depth == 1:
                frame = self._decoder.one(data)
                if frame is not None:
                    # The usual request: one whole frame from a transport. When
                    # it queued nothing else anywhere (no watch event, no other
                    # connection to wake), the reply goes straight to the sink:
                    # what _queue_reply and _push would do, without queueing a
                    # frame only to take it off again. Otherwise, or if the sink
                    # takes only part of it, the reply joins the queue as usual.
                    reply = store.handle(self, frame)
                    if reply is None:
                        return []
                    if not (
                        self._out
                        or self.closed
                        or store._to_push
                        or store._to_notify
                        or store._hooks
                    ):
                        n = sink(reply)
                        if n == len(reply):
                            return []
                        # The peer is full: the rest waits for the transport's
                        # next flush, as after a partial _push (no second try now).
                        self._queue_reply(reply)
                        self._sent = n
                        del store._to_push[self.seq]
                        return []
                    self._queue_reply(reply)
                    return []
            try:
                frames = self._decoder.feed(data)
            except ProtocolError as e:
                # C ignore_connection(XENSTORE_ERROR_PROTO): no reply, just drop.
                store._close(self, str(e))
                return self._take()
            handle = store.handle
            for frame in frames:
                reply = handle(self, frame)
                if reply is not None:
                    self._queue_reply(reply)
            if self._decoder.error is not None:
                # Frames before the bad header were answered; now drop the peer.
                store._close(self, str(self._decoder.error))
            return [] if self.sink is not None else self._take()
        finally:
            store._feeding = outer
            store._leave()

    def take_output(self) -> list[bytes]:
        """Everything queued for this connection (the caller now owns it)."""
        store = self.store
        store._enter()
        try:
            return self._take()
        finally:
            store._leave()

    def flush(self) -> bool:
        """Hand queued output to the sink as far as it takes it (C ``handle_output``).

        A transport calls this when its peer has made room; True if the sink
        took anything.
        """
        store = self.store
        store._enter()
        try:
            return self._push()
        finally:
            store._leave()

    def close(self, reason: str = "closed") -> None:
        """Drop the connection: its watches, open transactions and queued output go with it."""
        store = self.store
        store._enter()
        try:
            store._close(self, reason)
        finally:
            store._leave()

    def can_read(self) -> bool:
        """C ``domain_can_read``'s quota rules (unprivileged only).

        Not read while ``outstanding`` replies are unsent or the domain is at
        its hard memory quota. Deliberate difference: C counts outstanding
        requests per domain and also until the watch events a request caused
        are delivered; here per connection, until its own reply is sent.
        """
        if self.privileged:
            return True
        q = self.store.quotas
        if self.outstanding >= q["outstanding"]:
            return False
        hard = q["memory"]
        return not hard or self.store.memory_used(self.domid) < hard

    @property
    def head_sent(self) -> int:
        """Bytes of the oldest queued frame the sink already took."""
        return self._sent

    @property
    def queued(self) -> int:
        """Frames queued and not yet taken by the transport."""
        return len(self._out)

    @property
    def implicit(self) -> str:
        return implicit_path(self.domid)

    # -- store side (called inside a public entry point) ---------------------------
    def _take(self) -> list[bytes]:
        out = list(self._out)
        self._out.clear()
        self._queued_events.clear()
        self._sent = self.outstanding = 0
        if self.out_bytes:
            self.store._charge(self.domid, -self.out_bytes)
            self.out_bytes = 0
        return out

    def _queue_reply(self, data: bytes) -> None:
        self._out.append(data)
        n = len(data)
        self.out_bytes += n
        self.outstanding += 1  # send_reply: domain_outstanding_inc
        store = self.store
        mem = store.domain_memory
        mem[self.domid] = mem.get(self.domid, 0) + n
        if self.sink is not None:
            store._to_push[self.seq] = self

    def _push(self) -> bool:
        """Give the sink what it takes, oldest first; drop what it took from the queue."""
        sink, out = self.sink, self._out
        if sink is None or not out:
            return False
        if len(out) == 1 and not self._sent:
            # One whole frame (a reply): the common case, without the loop.
            head = out[0]
            n = sink(head)
            if n != len(head):
                self._sent = n
                return n > 0
            out.popleft()
            if head[0] == w.XS_WATCH_EVENT and head[1:4] == b"\0\0\0":
                self._queued_events.pop(head, None)
            else:
                self.outstanding -= 1
            self.out_bytes -= n
            mem = self.store.domain_memory
            mem[self.domid] -= n
            return True
        wrote = False
        while out:
            head = out[0]
            if len(out) == 1 or len(head) >= _PUSH_CHUNK:
                data = head[self._sent :] if self._sent else head
            else:
                # Several frames per call: a pipelining client gets its
                # replies without a system call each.
                parts = [head[self._sent :] if self._sent else head]
                size = len(parts[0])
                for frame in _islice(out, 1, None):
                    parts.append(frame)
                    size += len(frame)
                    if size >= _PUSH_CHUNK:
                        break
                data = b"".join(parts)
            n = sink(data)
            if not n:
                break
            wrote = True
            done = self._sent + n
            freed = 0
            events = self._queued_events
            while out and done >= len(out[0]):
                frame = out.popleft()
                done -= len(frame)
                freed += len(frame)
                if frame[0] == w.XS_WATCH_EVENT and frame[1:4] == b"\0\0\0":
                    left = events.get(frame, 0) - 1
                    if left > 0:
                        events[frame] = left
                    else:
                        events.pop(frame, None)
                else:
                    self.outstanding -= 1  # free_buffered_data: domain_outstanding_dec
            self._sent = done
            if freed:
                self.out_bytes -= freed
                self.store._charge(self.domid, -freed)
            if n < len(data):
                break  # the peer is full
        return wrote

    def queue(self, data: bytes) -> None:
        """Queue a reply frame built by a handler itself (WATCH's ack)."""
        self._queue_reply(data)


def _notifier(conn: Connection) -> Callable[[], None]:
    """The wake-up for a connection with output it did not ask for (checked when run:
    it may have closed meanwhile)."""

    def wake() -> None:
        if conn.notify is not None and not conn.closed:
            conn.notify()

    return wake


#: The trace's name of each request type (an enum lookup per request costs frames).
_OP_NAMES: dict[int, str] = {int(t): t.name for t in w.xsd_sockmsg_type}


# One row per op, as C's wire_funcs[]: handler, XS_FLAG_PRIV, looks up tx_id, writes.
Handler = Callable[["XenStore", Connection, Frame, "Transaction | None"], "bytes | None"]


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    handler: Handler
    priv: bool = False
    uses_tx: bool = True  # False: C's XS_FLAG_NOTID
    writes: bool = False  # refused with EROFS on a read-only connection


class XenStore:
    """The store: tree, domains, watches, quotas.

    ``connection(domid, readonly=False)`` makes a client; domid 0 is privileged.
    ``domain_exists(domid)`` answers what C asks the hypervisor (SET_PERMS);
    without it every domid exists.
    """

    def __init__(
        self,
        *,
        dom0_nodes: bool = True,
        quotas: dict[str, int] | None = None,
        trace: Trace | None = None,
        domain_exists: Callable[[int], bool] | None = None,
    ):
        # Nesting of public entry points: output is pushed and transports woken
        # when the outermost one returns.
        self._depth = 0
        # Set by a Gate (xenstore/gate.py) while a thread is inside the store:
        # wake-ups then wait there until the gate is left.
        self.deferred: list[Callable[[], None]] | None = None
        self._to_notify: dict[int, Connection] = {}
        # Connections with a sink and new output: pushed once the request is done.
        self._to_push: dict[int, Connection] = {}
        self._feeding: Connection | None = None
        self._hooks: list[Callable[[], None]] = []
        # Cross-domain record: one "xenstore_request" per request, on the control plane.
        self.trace = trace
        self.quotas = dict(DEFAULT_QUOTAS)
        if quotas:
            self.quotas.update(quotas)
        self.domain_exists = domain_exists
        self.generation = 0
        n0 = Perms.owner_only(0)
        self.tree = Tree(Node(b"", n0, 0))
        # setup_structure(): /tool/xenstored, all n0.
        tool = self._create_live("/tool", b"", n0)
        xsd = self._create_live("/tool/xenstored", b"", n0)
        # manual_node writes "/", "/tool", "/tool/xenstored" once each, in that
        # order: generations 1, 2, 3 (DIRECTORY_PART shows them).
        self.tree.root.gen, tool.gen, xsd.gen = 1, 2, 3
        self.generation = 3
        if dom0_nodes:
            # What xen-init-dom0 writes on a real host.
            for path, value in (
                ("/local", b""),
                ("/local/domain", b""),
                ("/local/domain/0", b""),
                ("/local/domain/0/domid", b"0"),
                ("/local/domain/0/name", b"Domain-0"),
            ):
                self._create_live(path, value, n0)
        self.domains: dict[int, Domain] = {0: Domain(0)}
        self.special_perms: dict[str, Perms] = {name: n0 for name in SPECIAL_NODES}
        self.connections: list[Connection] = []
        self._conn_seq = 0
        self._watch_seq = 0
        self._watches: dict[str, list[Watch]] = {}
        self.domain_watch_count: dict[int, int] = {}
        # Memory per domid besides node records: watches, transactions, queued output.
        self.domain_memory: dict[int, int] = {}
        self._values: dict[bytes, bytes] = {}
        # Absolute request paths already validated: raw bytes -> (path, path-max then).
        self._valid_paths: dict[bytes, tuple[str, int]] = {}
        # DIRECTORY_PART: the child blob of the node last listed, by (node, generation).
        self._dir_cache: tuple[Node | None, int, bytes] = (None, 0, b"")
        # Set by a ring transport: called with (domain) on INTRODUCE / RELEASE.
        self.on_introduce: Callable[[Domain], None] | None = None
        self.on_release: Callable[[Domain], None] | None = None
        self.log: list[str] = []

    # -- entry and exit ---------------------------------------------------------------
    def _enter(self) -> None:
        self._depth += 1

    def _leave(self) -> None:
        self._depth -= 1
        if self._depth:
            return
        to_push = self._to_push
        if not (self._to_notify or self._hooks):
            # The common case (a request that only answers its caller): no
            # transport to wake afterwards.
            if len(to_push) == 1:
                _, c = to_push.popitem()  # _push_all for one connection, inlined
                if not c.closed:
                    c._push()
            elif to_push:
                self._push_all()
            return
        if to_push:
            self._push_all()
        wake = [self._run_hooks(self._hooks)] if self._hooks else []
        self._hooks = []
        for c in self._to_notify.values():
            if c.notify is not None:
                wake.append(_notifier(c))
        self._to_notify.clear()
        if self.deferred is not None:
            self.deferred.extend(wake)  # run by the gate once the caller has left it
            return
        for fn in wake:
            fn()

    def _run_hooks(self, hooks: list[Callable[[], None]]) -> Callable[[], None]:
        def run() -> None:
            # A failing hook (a ring that cannot be mapped) must not take the
            # caller's thread down with it.
            for hook in hooks:
                try:
                    hook()
                except Exception as e:
                    self.log.append(f"transport hook failed: {e}")

        return run

    def _push_all(self) -> None:
        # As C's main loop writes each connection's output once the request
        # that queued it is handled: an event is a duplicate only of one the
        # peer could not take yet.
        to_push = self._to_push
        if len(to_push) == 1:
            # One connection (the requester's reply): no iterator over the dict.
            _, c = to_push.popitem()
            if not c.closed:
                c._push()
            return
        for c in to_push.values():
            if not c.closed:
                c._push()
        to_push.clear()

    # -- public API -------------------------------------------------------------
    def connection(
        self, domid: int, readonly: bool = False, *, privileged: bool | None = None
    ) -> Connection:
        """A new connection acting as ``domid`` (privileged iff dom0 unless overridden)."""
        self._enter()
        try:
            self._conn_seq += 1
            conn = Connection(
                self,
                domid,
                readonly=readonly,
                privileged=(domid == 0) if privileged is None else privileged,
                seq=self._conn_seq,
            )
            self.connections.append(conn)
            return conn
        finally:
            self._leave()

    def introduce_domain(self, domid: int, gfn: int = 0, evtchn: int = 1) -> None:
        """INTRODUCE from dom0's side: record the domain, fire ``@introduceDomain``."""
        self._enter()
        try:
            self._introduce(domid, gfn, evtchn)
        finally:
            self._leave()

    def release_domain(self, domid: int) -> None:
        """RELEASE: drop the domain, its connections and its nodes; fire ``@releaseDomain``."""
        self._enter()
        try:
            self._release(domid)
        finally:
            self._leave()

    def is_introduced(self, domid: int) -> bool:
        return domid in self.domains or domid == DOMID_SELF

    def memory_used(self, domid: int) -> int:
        """C ``domain->memory``: node records owned, plus watches, transactions, queued output."""
        return self.tree.memory.get(domid, 0) + self.domain_memory.get(domid, 0)

    # -- dispatch ------------------------------------------------------------------
    def handle(self, conn: Connection, req: Frame) -> bytes | None:
        """Process one request; return its reply (None: it was queued on ``conn``)."""
        try:
            # _dispatch inlined for its common case (a known op, no privilege or
            # read-only refusal): one Python call less on every request.
            row = OPS.get(req.type)
            if row is None or (row.priv and not conn.privileged) or (conn.readonly and row.writes):
                reply = self._dispatch(conn, req)
            else:
                tx: Transaction | None = None
                if row.uses_tx and req.tx_id != 0:
                    tx = conn.transactions.get(req.tx_id)
                    if tx is None:
                        raise XsError("ENOENT", f"no transaction {req.tx_id}")
                payload = row.handler(self, conn, req, tx)
                if payload is None:
                    reply = None
                elif (n := len(payload)) <= DEFAULT_BUFFER_SIZE:  # no quota or E2BIG to check
                    reply = HEADER.pack(req.type, req.req_id, req.tx_id, n) + payload
                else:
                    reply = self._reply(conn, req, payload)
            result = "OK"
        except XsError as e:
            reply = error_frame(req, e.code)
            result = e.code
        if self.trace is not None:
            self._trace(conn, req, result)
        return reply

    def _trace(self, conn: Connection, req: Frame, result: str) -> None:
        if self.trace is not None:
            op = _OP_NAMES.get(req.type) or str(req.type)
            arg = req.payload.split(b"\0", 1)[0][:80].decode("ascii", "replace")
            self.trace.record("xenstore_request", conn.domid, "dom0", op=op, arg=arg, result=result)

    def _dispatch(self, conn: Connection, req: Frame) -> bytes | None:
        row = OPS.get(req.type)
        if row is None:
            raise XsError("ENOSYS", f"type {req.type}")
        if row.priv and not conn.privileged:
            raise XsError("EACCES", "privileged operation")
        tx: Transaction | None = None
        if row.uses_tx and req.tx_id != 0:
            tx = conn.transactions.get(req.tx_id)
            if tx is None:
                raise XsError("ENOENT", f"no transaction {req.tx_id}")
        if conn.readonly and row.writes:
            raise XsError("EROFS", "read-only connection")
        payload = row.handler(self, conn, req, tx)
        if payload is None:
            return None
        return self._reply(conn, req, payload)

    def _reply(self, conn: Connection, req: Frame, payload: bytes) -> bytes:
        """The reply frame for ``payload`` (E2BIG / ENOMEM as C's send_reply)."""
        n = len(payload)
        if n > w.XENSTORE_PAYLOAD_MAX:
            return error_frame(req, "E2BIG")
        if n > DEFAULT_BUFFER_SIZE and self._over_quota(conn.domid, n + _HDR):
            return error_frame(req, "ENOMEM")  # send_reply's domain_memory_add_chk
        return HEADER.pack(req.type, req.req_id, req.tx_id, n) + payload

    # -- accounting ------------------------------------------------------------------
    def _charge(self, domid: int, nbytes: int) -> None:
        self.domain_memory[domid] = self.domain_memory.get(domid, 0) + nbytes

    def _over_quota(self, domid: int, add: int) -> bool:
        """C ``domain_chk_quota``: would ``add`` bytes reach an unprivileged domain's hard quota?"""
        if domid == 0:
            return False
        hard = self.quotas["memory"]
        return bool(hard) and self.memory_used(domid) + add >= hard

    def _exists(self, domid: int) -> bool:
        if self.domain_exists is None:
            return True
        return domid in self.domains or self.domain_exists(domid)

    # -- permissions -----------------------------------------------------------------
    def _perm(self, conn: Connection, perms: Perms) -> int:
        """C ``perm_for_conn``."""
        if conn.privileged:
            return P_ALL
        owner = perms.owner
        dom = self.domains.get(conn.domid)
        target = dom.target if dom is not None else None
        if owner == conn.domid or (target is not None and owner == target):
            return P_ALL
        for p in perms.entries[1:]:
            if not p.ignore and (
                p.domid == conn.domid or (target is not None and p.domid == target)
            ):
                return int(p.access)
        return int(perms.entries[0].access)

    # -- node access (C read_node / access_node / write_node) ------------------------
    def _read(
        self,
        conn: Connection,
        tx: Transaction | None,
        path: str,
        live: Node | _Lookup | None = LOOKUP,
    ) -> Node | None:
        """C ``read_node``: in a transaction the first access records the node as it is now.

        ``live`` is the live node when the caller already has it (None: known
        missing); LOOKUP means look it up.
        """
        if tx is None:
            return self.tree.get(path) if isinstance(live, _Lookup) else live
        e = tx.accessed.get(path)
        if e is not None:
            return e.node
        if not conn.privileged:  # the quota binds guests only
            self._tx_quota(conn, tx)
        if isinstance(live, _Lookup):
            live = self.tree.get(path)
        if live is None:
            e = Accessed(None, NO_GENERATION, True, None)
        else:
            copy = live.copy()
            e = Accessed(copy, live.gen, True, live.perms)
            e.live = live
            # The private record is charged to the connection's domain
            # (_tx_charge and _charge inlined: every transaction's first read).
            n = copy.record_size() + len(path) + len(str(tx.generation)) + 1
            tx.memory += n
            mem = self.domain_memory
            mem[conn.domid] = mem.get(conn.domid, 0) + n
        tx.accessed[path] = e
        return e.node

    def _tx_quota(self, conn: Connection, tx: Transaction) -> None:
        if not conn.privileged and len(tx.accessed) >= self.quotas["transaction-nodes"]:
            tx.fail = True
            raise XsError("ENOSPC", "transaction-nodes quota")

    def _tx_charge(self, conn: Connection, tx: Transaction, path: str, size: int) -> None:
        n = size + len(path) + len(str(tx.generation)) + 1
        tx.memory += n
        self._charge(conn.domid, n)

    def _tx_entry(
        self, conn: Connection, tx: Transaction, path: str, node: Node | None
    ) -> Accessed:
        """C ``access_node`` for a write or delete: the entry, created if the first access."""
        e = tx.accessed.get(path)
        if e is None:
            self._tx_quota(conn, tx)
            e = Accessed(None, 0, False, node.perms if node is not None else None)
            tx.accessed[path] = e
        e.modified = True
        return e

    def _next_gen(self) -> int:
        self.generation += 1
        return self.generation

    def _check_size(self, conn: Connection, size: int, tx: Transaction | None) -> None:
        """``write_node_raw``'s node-size quota (a failure inside a transaction fails it)."""
        if not conn.privileged and size >= self.quotas["node-size"]:
            if tx is not None:
                tx.fail = True
            raise XsError("ENOSPC", "node-size quota")

    def _check_mem(self, domid: int, add: int, tx: Transaction | None) -> None:
        if add > 0 and self._over_quota(domid, add):
            if tx is not None:
                tx.fail = True
            raise XsError("ENOMEM", "memory quota")

    def _get_node(self, conn: Connection, tx: Transaction | None, path: str, perm: int) -> Node:
        """C ``get_node``: the node if ``perm`` is granted, else the error the parents allow."""
        node = self.tree.get(path) if tx is None else self._read(conn, tx, path)
        if node is not None:
            if conn.privileged or self._perm(conn, node.perms) & perm == perm:
                return node
            raise self._errno_from_parents(conn, tx, path, "EACCES", perm)
        raise self._errno_from_parents(conn, tx, path, "ENOENT", perm)

    def _errno_from_parents(
        self, conn: Connection, tx: Transaction | None, path: str, code: str, perm: int
    ) -> XsError:
        """``errno_from_parents``: ``code`` only if the nearest ancestor grants part of ``perm``."""
        node, _, _ = self._nearest_parent(conn, tx, path)
        if node is not None and self._perm(conn, node.perms) & perm:
            return XsError(code, path)
        return XsError("EACCES", path)

    def _nearest_parent(
        self, conn: Connection, tx: Transaction | None, path: str
    ) -> tuple[Node | None, str, list[str]]:
        """C ``ask_parents``/``construct_node``'s walk up: the nearest existing ancestor.

        Returns it, its path, and the missing paths from ``path`` up (``path``
        first). In a transaction each level is a read (recorded); the live
        nodes come from one walk down, so a deep path costs O(depth).
        """
        levels = prefixes(path)
        chain = self.tree.chain(path)
        missing = [path]
        for d in range(len(levels) - 2, -1, -1):
            p = levels[d]
            node = self._read(conn, tx, p, chain[d] if d < len(chain) else None)
            if node is not None:
                return node, p, missing
            missing.append(p)
        return None, "/", missing

    def _path(self, conn: Connection, raw: bytes | None) -> str:
        """Canonicalize and validate (``get_node``'s ``is_valid_nodename``): EINVAL if bad."""
        if raw is None:
            raise XsError("EINVAL", "missing path")
        path_max = self.quotas["path-max"]
        cache = self._valid_paths
        # Absolute paths recur (a client reads the same nodes again and again);
        # their canonical form does not depend on the caller, only on path-max.
        hit = cache.get(raw)
        if hit is not None and hit[1] == path_max:
            return hit[0]
        path = canonical(raw, conn.domid)
        if not is_valid_nodename(path, path_max):
            raise XsError("EINVAL", "invalid path")
        if raw[:1] == b"/" and len(raw) <= _PATH_CACHE_LEN:
            if len(cache) >= _PATH_CACHE:
                cache.clear()
            cache[raw] = (path, path_max)
        return path

    # -- node creation (WRITE, MKDIR) --------------------------------------------
    def _create_live(self, path: str, value: bytes, perms: Perms) -> Node:
        """Create one node under an existing parent, without checks or events (setup)."""
        parent = self.tree.get(parent_of(path))
        assert parent is not None
        node = Node(value, perms, self._next_gen())
        self._attach(parent, path, node)
        self.tree.account(node, len(path), 1)
        return node

    def _attach(self, parent: Node, path: str, node: Node) -> None:
        # Interned: the same few names ("device", "state", "0") recur under
        # every domain; one string object each saves ~50 bytes per node.
        name = sys.intern(path[path.rfind("/") + 1 :])
        if parent.children is None:
            parent.children = {}
        parent.children[name] = node
        parent.gen = self._next_gen()
        self.tree.memory[parent.perms.owner] = (
            self.tree.memory.get(parent.perms.owner, 0) + len(name) + 1
        )

    def _create(self, conn: Connection, tx: Transaction | None, path: str, value: bytes) -> Node:
        """C ``create_node``: construct the missing levels, write them bottom up."""
        # construct_node: walk up to the nearest existing node (read in a tx).
        parent, parent_path, names = self._nearest_parent(conn, tx, path)
        if parent is None:
            raise XsError("ENOENT", path)
        perms = parent.perms if conn.privileged else parent.perms.with_owner(conn.domid)
        nperm = len(perms.entries)
        top_name = names[-1][len(parent_path) + (parent_path != "/") :]
        if tx is not None:
            tx.node_created = True
        # Checks in C's order: per new node (leaf first) the nodes quota, its
        # size, its memory; then the existing parent's size with the new child.
        owner = perms.owner
        base = self.tree.owned.get(conn.domid, 0) if not conn.privileged else 0
        mem_owner = conn.domid if tx is not None else owner
        mem = 0
        for k, p in enumerate(names):
            if not conn.privileged and base + k >= self.quotas["nodes"]:
                if tx is not None and k:
                    tx.fail = True  # destroy_node of what was written
                raise XsError("ENOSPC", "nodes quota")
            if k == 0:
                size = 24 + 8 * nperm + len(value)
            else:
                prev = names[k - 1]
                size = 24 + 8 * nperm + len(prev) - len(p)  # one child name + NUL
            self._check_size(conn, size, tx)
            key = len(p) + (len(str(tx.generation)) + 1 if tx is not None else 0)
            mem += size + key
            self._check_mem(mem_owner, mem, tx)
        grown = parent.record_size() + len(top_name) + 1
        self._check_size(conn, grown, tx)
        if tx is None:
            self._check_mem(parent.perms.owner, len(top_name) + 1, None)
            # Apply: new nodes get generations leaf first, as write_node stamps them.
            gens = [self._next_gen() for _ in names]
            child: Node | None = None
            child_name = ""
            for k, p in enumerate(names):
                node = Node(value if k == 0 else b"", perms, gens[k])
                if child is not None:
                    node.children = {child_name: child}
                self.tree.account(node, len(p), 1)
                child, child_name = node, sys.intern(p[p.rfind("/") + 1 :])
            assert child is not None
            self._attach(parent, names[-1], child)
            leaf = self.tree.get(path)
            assert leaf is not None
            return leaf
        # In a transaction: private records for each new node and the parent.
        leaf_node: Node | None = None
        below = ""
        for k, p in enumerate(names):
            node = Node(value if k == 0 else b"", perms, self._next_gen())
            if below:
                node.children = {below: _STUB}
            e = self._tx_entry(conn, tx, p, node)
            e.node = node
            e.kids = True
            self._tx_charge(conn, tx, p, node.record_size())
            tx.entry_delta(owner, 1)
            if k == 0:
                leaf_node = node
            below = p[p.rfind("/") + 1 :]
        kids = dict(parent.children or {})
        kids[top_name] = _STUB
        pcopy = Node(parent.value, parent.perms, self._next_gen(), kids)
        pe = self._tx_entry(conn, tx, parent_path, pcopy)
        pe.node = pcopy
        pe.kids = True
        assert leaf_node is not None
        return leaf_node

    def _intern(self, value: bytes) -> bytes:
        """One shared object per small value ("1", "4", "vif"): values repeat across nodes."""
        if len(value) > _INTERN_MAX:
            return value
        shared = self._values.get(value)
        if shared is None:
            if len(self._values) >= _INTERN_ENTRIES:
                self._values.clear()  # bounded: a guest cannot grow this table
            self._values[value] = shared = value
        return shared

    def _child_blob(self, node: Node) -> bytes:
        """The child-name blob, cached for the node listed last (DIRECTORY_PART's chunks).

        Valid while the node keeps its generation: every change to its child
        list stamps a new one.
        """
        cached, gen, blob = self._dir_cache
        if cached is not node or gen != node.gen:
            blob = node.child_names()
            self._dir_cache = (node, node.gen, blob)
        return blob

    # -- watches -------------------------------------------------------------------
    def _fire(self, ev: Event) -> None:
        """C ``fire_watches`` outside a transaction: per connection, in registration order."""
        watches = self._watches
        if not watches:
            return
        path = ev.path
        if ev.exact:
            found = list(watches.get(path, ()))
        else:
            found = []
            for p in prefixes(path):
                lst = watches.get(p)
                if lst:
                    found.extend(lst)
        if not found:
            return
        if len(found) > 1:
            found.sort(key=lambda wt: (wt.conn.seq, wt.seq))
        allowed: dict[int, bool] = {}
        perms = ev.perms
        for watch in found:
            conn = watch.conn
            ok = allowed.get(conn.seq)
            if ok is None:
                if callable(perms):
                    perms = perms()
                ok = self._watch_permitted(conn, perms)
                allowed[conn.seq] = ok
            if ok:
                self._send_event(conn, watch_path_for(path, watch.relative_to), watch.token)

    def _watch_permitted(self, conn: Connection, perms: tuple[Perms, ...]) -> bool:
        """C ``watch_permitted`` (XSA-115): the node (old or new ACL) or its parent readable."""
        if not perms:
            return False
        if conn.privileged:
            return True
        return any(self._perm(conn, p) & P_READ for p in perms)

    def _send_event(self, conn: Connection, path: str, token: bytes) -> None:
        """C ``send_event``: drop oversized, duplicate-while-queued, or over-quota events."""
        body = path.encode("latin-1") + b"\0" + token + b"\0"
        if len(body) > w.XENSTORE_PAYLOAD_MAX:
            return  # XSA-324
        data = HEADER.pack(w.XS_WATCH_EVENT, 0, 0, len(body)) + body
        special = path.startswith("@")
        if not special and data in conn._queued_events:
            conn.dropped_events += 1
            return  # XSA-326: identical event still queued
        if not conn.privileged and self._over_quota(conn.domid, len(data)):
            conn.dropped_events += 1
            return
        conn._out.append(data)
        conn.out_bytes += len(data)
        self._charge(conn.domid, len(data))
        if not special:
            conn._queued_events[data] = conn._queued_events.get(data, 0) + 1
        if conn.sink is not None:
            self._to_push[conn.seq] = conn
        if conn is not self._feeding:  # a feeding connection gets its output returned
            self._to_notify[conn.seq] = conn

    def _fire_special(self, name: str) -> None:
        found = sorted(self._watches.get(name, ()), key=lambda wt: (wt.conn.seq, wt.seq))
        for watch in found:
            conn = watch.conn
            if self._perm(conn, self.special_perms[name]) & P_READ:
                self._send_event(conn, name, watch.token)

    def _drop_watch(self, watch: Watch) -> None:
        lst = self._watches.get(watch.path)
        if lst is not None:
            lst.remove(watch)
            if not lst:
                del self._watches[watch.path]
        d = watch.conn.domid
        self.domain_watch_count[d] = self.domain_watch_count.get(d, 1) - 1
        self._charge(d, -(len(watch.path) + len(watch.token)))

    def _drop_transactions(self, conn: Connection) -> None:
        for tx in conn.transactions.values():
            self._charge(conn.domid, -tx.memory)
        conn.transactions.clear()

    def _reset(self, conn: Connection) -> None:
        for watch in list(conn.watches.values()):
            self._drop_watch(watch)
        conn.watches.clear()
        self._drop_transactions(conn)

    def _close(self, conn: Connection, reason: str) -> None:
        if conn.closed:
            return
        conn.closed = True
        conn.close_reason = reason
        self._reset(conn)
        # What was answered before the close may still be handed over; it no
        # longer counts against the domain.
        self._charge(conn.domid, -conn.out_bytes)
        conn.out_bytes = 0
        if conn.sink is not None:
            # Nothing more reaches the peer (C frees its out_list with it).
            conn.sink = None
            conn._out.clear()
            conn._queued_events.clear()
            conn._sent = conn.outstanding = 0
        if conn in self.connections:
            self.connections.remove(conn)

    # -- removal -------------------------------------------------------------------
    def _remove_live(self, path: str) -> None:
        """C ``rm_node`` outside a transaction: delete post-order, firing as it goes."""
        parent_path = parent_of(path)
        parent = self.tree.get(parent_path)
        node = self.tree.get(path)
        assert parent is not None and parent.children is not None and node is not None
        # Each node's parent ACL (watch_permitted reads it while it still exists).
        parents: dict[str, Perms] = {parent_path: parent.perms}
        for p, n in walk(path, node):
            if n.children:
                parents[p] = n.perms
        for p, n in walk(path, node, post_order=True):
            pp = parents[parent_of(p)]
            self.generation += 2  # access_node(DELETE) and the parent's rewrite
            self.tree.account(n, len(p), -1)
            n.gen = DEAD
            self._fire(Event(p, p != path, (n.perms, pp)))
        name = path[path.rfind("/") + 1 :]
        del parent.children[name]
        if not parent.children:
            parent.children = None
        parent.gen = self.generation
        owner = parent.perms.owner
        self.tree.memory[owner] = self.tree.memory.get(owner, 0) - len(name) - 1

    def _remove_tx(self, conn: Connection, tx: Transaction, path: str) -> None:
        """C ``rm_node`` in a transaction: read the subtree, mark each node deleted.

        Each node becomes one record, as in C. A node read here only to be
        deleted is not copied (C copies it and frees the copy at once).
        """
        parent_path = parent_of(path)
        # rm_node reads the parent first: missing in the transaction's view
        # (first looked at before someone created it) is EINVAL in C.
        if self._read(conn, tx, parent_path) is None:
            raise XsError("EINVAL", parent_path)
        root = self._read(conn, tx, path)
        if root is None:
            tx.fail = True
            raise XsError("EIO", path)
        accessed = tx.accessed
        shared: list[Accessed] = []
        # walk_node_tree through the transaction's view, children in list order;
        # each frame: path, view node, live node (or None), child names, next index.
        order: list[tuple[str, Node]] = []
        stack: list[tuple[str, Node, Node | None, list[str], int]] = [
            (path, root, accessed[path].live, root.names(), 0)
        ]
        try:
            while stack:
                p, n, live, kids, i = stack[-1]
                if i == len(kids):
                    stack.pop()
                    order.append((p, n))
                    continue
                stack[-1] = (p, n, live, kids, i + 1)
                cp = f"{p}/{kids[i]}" if p != "/" else f"/{kids[i]}"
                e = accessed.get(cp)
                if e is None:
                    self._tx_quota(conn, tx)
                    if live is not None and live.gen != DEAD and live.children is not None:
                        clive = live.children.get(kids[i])
                    else:
                        clive = self.tree.get(cp)
                    if clive is None:
                        e = Accessed(None, NO_GENERATION, True, None)
                    else:
                        e = Accessed(clive, clive.gen, True, clive.perms)
                        shared.append(e)
                    e.live = clive
                    accessed[cp] = e
                if e.node is None:
                    continue
                stack.append((cp, e.node, e.live, e.node.names(), 0))
        except XsError:
            # walk_node_tree: an unreadable child stops the walk, rm_node says EIO.
            for e in shared:
                if e.node is not None:
                    e.node = e.node.copy()  # the transaction's own view from now on
            tx.fail = True
            raise XsError("EIO", path) from None
        for p, n in order:
            e = accessed[p]
            e.modified = True
            e.node = None
            tx.queue_watch(p, p != path)
            tx.entry_delta(n.perms.owner, -1)
        self.generation += 2 * len(order)
        parent = self._read(conn, tx, parent_path)
        assert parent is not None
        pcopy = Node(parent.value, parent.perms, self._next_gen(), dict(parent.children or {}))
        if pcopy.children is not None:
            pcopy.children.pop(path[path.rfind("/") + 1 :], None)
        pe = self._tx_entry(conn, tx, parent_path, pcopy)
        pe.node = pcopy
        pe.kids = True

    # -- commit ----------------------------------------------------------------------
    def _commit(self, conn: Connection, tx: Transaction) -> None:
        """C ``do_transaction_end`` "T": quota fix-up, ``finalize_transaction``, events."""
        if tx.fail:
            raise XsError("ENOMEM", "transaction failed")
        if tx.node_created and not conn.privileged:
            for owner, delta in tx.nodes_delta.items():
                if owner != 0 and self.tree.owned.get(owner, 0) + delta >= self.quotas["nodes"]:
                    raise XsError("ENOSPC", "nodes quota")
        tree = self.tree
        # check_gen: the node read is still the same live node with the same
        # generation (removed live nodes are stamped DEAD), or still missing.
        for path, e in tx.accessed.items():
            if e.check_gen:
                if e.gen == NO_GENERATION:
                    if tree.get(path) is not None:
                        raise XsError("EAGAIN", "conflict")
                elif e.live is None or e.live.gen != e.gen:
                    raise XsError("EAGAIN", "conflict")
        written: list[tuple[str, Accessed]] = []
        gens: dict[str, int] = {}
        # Deleted records leave the accounting first (their parents drop them below).
        for p, e in tx.accessed.items():
            if not e.modified:
                continue
            if e.node is None:
                live = e.live
                if live is not None and live.gen != DEAD:
                    tree.account(live, len(p), -1)
                    live.gen = DEAD
            else:
                self.generation += 1  # _next_gen, inlined
                gens[p] = self.generation
                written.append((p, e))
        # Written records in path order: a parent's child table before its children.
        fresh: set[int] = set()
        if len(written) > 1:
            written.sort(key=lambda pe: pe[0])
        for p, e in written:
            rec = e.node
            assert rec is not None
            live = tree.get(p)
            if live is None:
                # A parent outside the transaction's records: attach (not reached in C terms).
                parent = tree.get(parent_of(p))
                assert parent is not None
                live = Node(b"", rec.perms, 0)
                name = p[p.rfind("/") + 1 :]
                if parent.children is None:
                    parent.children = {}
                parent.children[name] = live
                fresh.add(id(live))
            # A record replaced in place keeping its owner (the usual commit)
            # changes only that owner's byte count: its node count and the
            # path's bytes stay. Else out with the old record, in with the new.
            replaced = id(live) not in fresh
            if replaced:
                old_owner = live.perms.entries[0].domid
                old_size = live.record_size()
            live.value = rec.value
            live.perms = rec.perms
            live.gen = gens[p]
            if e.kids:
                old = live.children or {}
                new: dict[str, Node] = {}
                for name in rec.children or ():
                    child = old.get(name)
                    if child is None:
                        child = Node(b"", rec.perms, 0)
                        fresh.add(id(child))
                    new[sys.intern(name)] = child
                live.children = new or None
            if replaced and rec.perms.entries[0].domid == old_owner:
                memory = tree.memory
                memory[old_owner] = memory.get(old_owner, 0) + live.record_size() - old_size
                continue
            if replaced:
                tree.owned[old_owner] = tree.owned.get(old_owner, 0) - 1
                memory = tree.memory
                memory[old_owner] = memory.get(old_owner, 0) - old_size - len(p)
            tree.account(live, len(p), 1)
        # Events in first-access order, checked against the committed store.
        watches = self._watches
        if not watches:
            return  # nobody watches anything: no event to compute
        for p, e in tx.accessed.items():
            if not e.fire:
                continue
            if e.exact:
                if p not in watches:
                    continue  # the common case of a big removal: nobody watches it
            elif not any(a in watches for a in prefixes(p)):
                continue
            self._fire(Event(p, e.exact, self._commit_perms(p, e)))

    def _commit_perms(self, path: str, e: Accessed) -> tuple[Perms, ...]:
        out: list[Perms] = []
        if e.perms is not None:
            out.append(e.perms)
        if e.node is None:
            return tuple(out)  # deleted: only the old ACL can let a watcher see it
        node = self.tree.get(path)
        if node is None:
            return tuple(out)
        out.append(node.perms)
        if path != "/":
            parent = self.tree.get(parent_of(path))
            if parent is not None:
                out.append(parent.perms)
        return tuple(out)

    # -- domains ---------------------------------------------------------------------
    def _introduce(self, domid: int, gfn: int, evtchn: int) -> None:
        dom = self.domains.get(domid)
        if dom is None:
            dom = Domain(domid, gfn, evtchn)
            self.domains[domid] = dom
            if self.on_introduce is not None:
                hook = self.on_introduce
                new = dom
                self._hooks.append(lambda: hook(new))
            self._fire_special("@introduceDomain")
        else:
            # Re-introduce: rebind, reset that domain's connections.
            dom.gfn, dom.evtchn = gfn, evtchn
            for c in self.connections:
                if c.domid == domid and not c.privileged:
                    self._reset(c)

    def _release(self, domid: int) -> None:
        if domid == 0:
            raise XsError("EINVAL", "cannot release dom0")
        dom = self.domains.pop(domid, None)
        if dom is None:
            raise XsError("ENOENT", f"domain {domid}")
        for c in [c for c in self.connections if c.domid == domid and not c.privileged]:
            self._close(c, "domain released")
        # domain_tree_remove: delete what the domain owned, topmost first, in walk order.
        doomed: list[str] = []
        for p, n in walk("/", self.tree.root):
            if p != "/" and n.perms.owner == domid:
                if doomed and p.startswith(doomed[-1] + "/"):
                    continue
                doomed.append(p)
        for p in doomed:
            if self.tree.get(p) is not None:
                self._remove_live(p)
        if self.on_release is not None:
            hook = self.on_release
            self._hooks.append(lambda: hook(dom))
        self._fire_special("@releaseDomain")


# -- argument parsing -------------------------------------------------------------------
def _onearg(req: Frame) -> bytes | None:
    """C ``onearg``: exactly one string, its NUL the payload's last byte; else None."""
    p = req.payload
    if not p or p.find(b"\0") != len(p) - 1:
        return None
    return p[:-1]


def _onearg_or_einval(req: Frame) -> bytes:
    arg = _onearg(req)
    if arg is None:
        raise XsError("EINVAL", "expected one NUL-terminated argument")
    return arg


def _nargs(req: Frame, n: int) -> list[bytes]:
    args = req.args()
    if len(args) != n:
        raise XsError("EINVAL", f"expected {n} arguments")
    return args


def c_atoi(raw: bytes) -> int:
    """C ``atoi`` (glibc: ``(int)strtol(s, NULL, 10)``): whitespace, sign, digits; 0 if none."""
    s = raw.split(b"\0", 1)[0].lstrip(b" \t\n\v\f\r")
    neg = False
    if s[:1] in (b"+", b"-"):
        neg = s[:1] == b"-"
        s = s[1:]
    n = 0
    for b in s:
        if not 0x30 <= b <= 0x39:
            break
        n = n * 10 + (b - 0x30)
        if n > 1 << 63:
            break
    v = -n if neg else n
    v = max(-(1 << 63), min((1 << 63) - 1, v))  # strtol clamps to LONG_MIN/LONG_MAX
    v &= 0xFFFFFFFF  # then the cast to int keeps the low 32 bits
    return v - (1 << 32) if v >= 1 << 31 else v


def _u32(v: int) -> int:
    return v & 0xFFFFFFFF


# -- handlers: (store, conn, req, tx) -> reply payload -----------------------------------
def _do_read(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    p = req.payload  # _onearg inlined: the most frequent request of all
    path = s._path(c, p[:-1] if p and p.find(b"\0") == len(p) - 1 else None)
    return s._get_node(c, tx, path, P_READ).value


def _do_write(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    i = req.payload.find(b"\0")
    if i < 0:
        raise XsError("EINVAL", "WRITE without a NUL after the path")
    path = s._path(c, req.payload[:i])
    value = s._intern(req.payload[i + 1 :])
    try:
        node = s._get_node(c, tx, path, P_WRITE)
    except XsError as e:
        if e.code != "ENOENT":
            raise
        node = s._create(c, tx, path, value)
    else:
        # The node-size quota binds unprivileged writers only: skip the sum of
        # a big node's child names for dom0.
        size = 0 if c.privileged else node.record_size() - len(node.value) + len(value)
        if tx is None:
            owner = node.perms.owner
            delta = len(value) - len(node.value)
            if not c.privileged:
                s._check_size(c, size, None)
            if delta > 0:
                s._check_mem(owner, delta, None)
            s.tree.memory[owner] = s.tree.memory.get(owner, 0) + delta
            node.value = value
            s.generation += 1  # _next_gen, inlined (every plain WRITE)
            node.gen = s.generation
        else:
            entry = s._tx_entry(c, tx, path, node)
            s.generation += 1  # _next_gen, inlined (a transaction's every write)
            delta = len(value) - len(node.value)
            if not c.privileged:
                s._check_size(c, size, tx)
            if delta > 0:
                s._check_mem(c.domid, delta, tx)
            # _tx_charge and _charge inlined: the same sum, two Python calls less.
            n = delta + len(path) + len(str(tx.generation)) + 1
            tx.memory += n
            mem = s.domain_memory
            mem[c.domid] = mem.get(c.domid, 0) + n
            entry.node = Node(value, node.perms, s.generation, node.children)
    if tx is not None:
        tx.queue_watch(path, False)
    elif s._watches:
        s._fire(Event(path, False, lambda: _perms_with_parent(s, path, node)))
    return OK


def _perms_with_parent(s: XenStore, path: str, node: Node) -> tuple[Perms, ...]:
    """watch_permitted's sources for a live change: the node's ACL, then its parent's."""
    if path == "/":
        return (node.perms,)
    parent = s.tree.get(parent_of(path))
    return (node.perms,) if parent is None else (node.perms, parent.perms)


def _do_mkdir(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    path = s._path(c, _onearg(req))
    try:
        s._get_node(c, tx, path, P_WRITE)
        return OK  # it exists: nothing changes, nothing fires
    except XsError as e:
        if e.code != "ENOENT":
            raise
    node = s._create(c, tx, path, b"")
    if tx is not None:
        tx.queue_watch(path, False)
    else:
        s._fire(Event(path, False, _perms_with_parent(s, path, node)))
    return OK


def _do_rm(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    path = s._path(c, _onearg(req))
    try:
        s._get_node(c, tx, path, P_WRITE)
    except XsError as e:
        if e.code != "ENOENT":
            raise
        if s._read(c, tx, parent_of(path)) is not None:
            return OK  # absent, but the parent exists: fine
        raise
    if path == "/":
        raise XsError("EINVAL", "cannot remove /")
    if tx is None:
        s._remove_live(path)
    else:
        s._remove_tx(c, tx, path)
    return OK


def _do_directory(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    path = s._path(c, _onearg(req))
    return s._child_blob(s._get_node(c, tx, path, P_READ))


def _do_directory_part(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    if req.payload.count(b"\0") != 2:
        raise XsError("EINVAL", "DIRECTORY_PART takes a path and an offset")
    raw_path, raw_off, _ = req.payload.split(b"\0", 2)
    path = s._path(c, raw_path)
    node = s._get_node(c, tx, path, P_READ)
    off = _u32(c_atoi(raw_off))  # C: unsigned off = atoi(...)
    gen = str(node.gen).encode() + b"\0"
    blob = s._child_blob(node)
    total = len(blob)
    if off >= total:
        return gen + b"\0"
    maxlen = w.XENSTORE_PAYLOAD_MAX - len(gen) - 1
    length = 0
    while True:
        nul = blob.find(b"\0", off + length)
        if nul < 0:
            nul = total
        name_len = nul - (off + length)
        if length + name_len >= maxlen:
            break
        length += name_len + 1
        if off + length >= total:
            break
    out = gen + blob[off : off + length]
    if off + length >= total:
        out += b"\0"  # the final chunk ends in a double NUL
    return out


def _do_get_perms(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    path = s._path(c, _onearg(req))
    return s._get_node(c, tx, path, P_READ).perms.to_wire()


def _do_set_perms(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    payload = req.payload
    num = payload.count(b"\0")
    if num < 2:
        raise XsError("EINVAL", "SET_PERMS needs a path and at least one permission")
    num -= 1
    if not c.privileged and num > s.quotas["permissions"]:
        raise XsError("ENOSPC", "permissions quota")
    raw_path, rest = payload.split(b"\0", 1)
    parts = rest.split(b"\0")[:num]
    perms = Perms.from_wire(b"".join(p + b"\0" for p in parts))
    # domain_alloc_permrefs: entries naming no existing domain are ignored;
    # an owner that does not exist is ENOENT.
    perms = perms.with_ignored(s._exists)
    if perms.entries[0].ignore:
        raise XsError("ENOENT", "owner domain does not exist")
    if raw_path.startswith(b"@"):
        name = raw_path.decode("latin-1")
        if name not in SPECIAL_NODES:
            raise XsError("EINVAL", "unknown special node")
        if s._perm(c, s.special_perms[name]) & (P_WRITE | P_OWNER) != P_WRITE | P_OWNER:
            raise XsError("EACCES", name)
        s.special_perms[name] = perms
        return OK
    path = s._path(c, raw_path)
    node = s._get_node(c, tx, path, P_WRITE | P_OWNER)
    if not c.privileged and perms.owner != node.perms.owner:
        raise XsError("EPERM", "unprivileged domains may not change the owner")
    old = node.perms
    size = node.record_size() + 8 * (len(perms.entries) - len(old.entries))
    if tx is None:
        s._check_size(c, size, None)
        s.tree.account(node, len(path), -1)
        node.perms = perms
        node.gen = s._next_gen()
        try:
            s._check_mem(perms.owner, size + len(path), None)
        except XsError:
            node.perms = old
            s.tree.account(node, len(path), 1)
            raise
        s.tree.account(node, len(path), 1)
        parent = s.tree.get(parent_of(path)) if path != "/" else None
        ev = (old, perms) if parent is None else (old, perms, parent.perms)
        s._fire(Event(path, False, ev))
        return OK
    e = s._tx_entry(c, tx, path, node)
    s._next_gen()
    s._check_size(c, size, tx)
    tx.entry_delta(old.owner, -1)
    tx.entry_delta(perms.owner, 1)
    e.node = Node(node.value, perms, s.generation, node.children)
    tx.queue_watch(path, False)
    return OK


def _do_watch(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes | None:
    raw_path, token = _nargs(req, 2)
    if raw_path.startswith(b"@"):
        path = raw_path.decode("latin-1")
        if len(path) > w.XENSTORE_REL_PATH_MAX:
            raise XsError("EINVAL", "special path too long")
        relative = False
    else:
        relative = not raw_path.startswith(b"/")
        path = s._path(c, raw_path)
    if (path, token) in c.watches:
        raise XsError("EEXIST", "watch already registered")
    if not c.privileged and s.domain_watch_count.get(c.domid, 0) > s.quotas["watches"]:
        raise XsError("E2BIG", "watches quota")  # 4.17's error for this quota
    if not c.privileged:
        s._check_mem(c.domid, len(path) + len(token), None)
    s._watch_seq += 1
    watch = Watch(c, path, token, c.implicit if relative else None, s._watch_seq)
    c.watches[(path, token)] = watch
    s._watches.setdefault(path, []).append(watch)
    s.domain_watch_count[c.domid] = s.domain_watch_count.get(c.domid, 0) + 1
    s._charge(c.domid, len(path) + len(token))
    # do_watch: the ack first, then at once one event with the watch's own path.
    c.queue(encode(w.XS_WATCH, req.req_id, req.tx_id, OK))
    s._send_event(c, watch_path_for(path, watch.relative_to), token)
    return None


def _do_unwatch(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    raw_path, token = _nargs(req, 2)
    # C canonicalizes without validating: an invalid path simply matches no watch.
    path = canonical(raw_path, c.domid)
    watch = c.watches.pop((path, token), None)
    if watch is None:
        raise XsError("ENOENT", "no such watch")
    s._drop_watch(watch)
    return OK


def _do_transaction_start(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    if tx is not None:
        raise XsError("EBUSY", "transactions do not nest")
    if not c.privileged and len(c.transactions) > s.quotas["transactions"]:
        raise XsError("ENOSPC", "transactions quota")
    tid = c._next_tx
    while tid == 0 or tid in c.transactions:
        tid = (tid + 1) & 0xFFFFFFFF
    c._next_tx = (tid + 1) & 0xFFFFFFFF
    s.generation += 1  # _next_gen, inlined
    c.transactions[tid] = Transaction(tid, s.generation)
    return str(tid).encode() + b"\0"


def _do_transaction_end(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    arg = _onearg(req)
    if arg not in (b"T", b"F"):
        raise XsError("EINVAL", "TRANSACTION_END takes T or F")
    if tx is None:
        raise XsError("ENOENT", "not in a transaction")
    del c.transactions[tx.id]
    mem = s.domain_memory  # _charge inlined
    mem[c.domid] = mem.get(c.domid, 0) - tx.memory
    if arg == b"T":
        s._commit(c, tx)
    return OK


def _do_get_domain_path(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    domid = _u32(c_atoi(_onearg_or_einval(req)))
    return implicit_path(domid).encode() + b"\0"


def _do_is_domain_introduced(
    s: XenStore, c: Connection, req: Frame, tx: Transaction | None
) -> bytes:
    domid = _u32(c_atoi(_onearg_or_einval(req)))
    return b"T\0" if s.is_introduced(domid) else b"F\0"


def _do_introduce(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    args = req.args()
    if len(args) < 3:
        raise XsError("EINVAL", "INTRODUCE needs domid, gfn, evtchn")
    # C: the gfn is ignored; the port is an unsigned evtchn_port_t, so only 0 fails.
    domid, gfn, evtchn = _u32(c_atoi(args[0])), _u32(c_atoi(args[1])), _u32(c_atoi(args[2]))
    if evtchn == 0:
        raise XsError("EINVAL", "bad event channel")
    if domid > 0x7FEF:
        raise XsError("EINVAL", "bad domid")
    s._introduce(domid, gfn, evtchn)
    return OK


def _onearg_domid(req: Frame) -> int:
    domid = _u32(c_atoi(_onearg_or_einval(req)))
    if domid == 0:
        raise XsError("EINVAL", "domain 0")
    return domid


def _do_release(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    s._release(_onearg_domid(req))
    return OK


def _do_resume(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    dom = s.domains.get(_onearg_domid(req))
    if dom is None:
        raise XsError("ENOENT", "unknown domain")
    dom.shutdown_reported = False
    return OK


def _do_set_target(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    args = req.args()
    if len(args) < 2:
        raise XsError("EINVAL", "SET_TARGET needs domid, target")
    domid, target = _u32(c_atoi(args[0])), _u32(c_atoi(args[1]))
    dom = s.domains.get(domid)
    if dom is None or target not in s.domains:
        raise XsError("ENOENT", "unknown domain")
    dom.target = target
    return OK


def _do_reset_watches(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    s._reset(c)
    return OK


def _do_control(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    return do_control(s, req.args(), c)


OPS: dict[int, Op] = {
    w.XS_CONTROL: Op("CONTROL", _do_control, priv=True),
    w.XS_DIRECTORY: Op("DIRECTORY", _do_directory),
    w.XS_READ: Op("READ", _do_read),
    w.XS_GET_PERMS: Op("GET_PERMS", _do_get_perms),
    w.XS_WATCH: Op("WATCH", _do_watch, uses_tx=False),
    w.XS_UNWATCH: Op("UNWATCH", _do_unwatch, uses_tx=False),
    w.XS_TRANSACTION_START: Op("TRANSACTION_START", _do_transaction_start),
    w.XS_TRANSACTION_END: Op("TRANSACTION_END", _do_transaction_end),
    w.XS_INTRODUCE: Op("INTRODUCE", _do_introduce, priv=True),
    w.XS_RELEASE: Op("RELEASE", _do_release, priv=True),
    w.XS_GET_DOMAIN_PATH: Op("GET_DOMAIN_PATH", _do_get_domain_path),
    w.XS_WRITE: Op("WRITE", _do_write, writes=True),
    w.XS_MKDIR: Op("MKDIR", _do_mkdir, writes=True),
    w.XS_RM: Op("RM", _do_rm, writes=True),
    w.XS_SET_PERMS: Op("SET_PERMS", _do_set_perms, writes=True),
    w.XS_IS_DOMAIN_INTRODUCED: Op("IS_DOMAIN_INTRODUCED", _do_is_domain_introduced, priv=True),
    w.XS_RESUME: Op("RESUME", _do_resume, priv=True),
    w.XS_SET_TARGET: Op("SET_TARGET", _do_set_target, priv=True),
    w.XS_RESET_WATCHES: Op("RESET_WATCHES", _do_reset_watches),
    w.XS_DIRECTORY_PART: Op("DIRECTORY_PART", _do_directory_part),
}
