"""The xenstored request handler, sans-IO (``xenstored_core.c``, ``_watch.c``).

:class:`XenStore` holds the tree, the domain table, every connection's
watches and transactions; :class:`Connection` turns request bytes into reply
and watch-event bytes. Error codes and where they are raised follow C
xenstored 4.17 (see ``process_message`` and the ``do_*`` functions); quotas
bind unprivileged connections only, and EQUOTA is never sent. Transports
(Unix socket, ring page, in-process) are thin shells around ``feed``.

Deliberate differences: transactions are snapshots (see
:mod:`xenpci.xenstore.transaction`); socket clients are dom0 unless a
transport says otherwise; there is no hypervisor to map rings, so INTRODUCE
only records the domain and tells an attached ring transport.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from xenpci.abi import xs_wire as w
from xenpci.trace import Trace
from xenpci.xenstore.control import do_control
from xenpci.xenstore.domain import DEFAULT_QUOTAS, DOMID_SELF, Domain
from xenpci.xenstore.errors import ProtocolError, XsError
from xenpci.xenstore.perms import Access, Perms
from xenpci.xenstore.transaction import Event, Op, Transaction
from xenpci.xenstore.tree import (
    SPECIAL_NODES,
    Node,
    Tree,
    ancestors,
    canonicalize,
    implicit_path,
    parent_of,
    walk,
    watch_path_for,
)
from xenpci.xenstore.wire import Frame, FrameDecoder, encode, error_frame, watch_event

OK = b"OK\0"
# Requests that modify the store: refused with EROFS on a read-only connection.
_WRITE_OPS = frozenset({w.XS_WRITE, w.XS_MKDIR, w.XS_RM, w.XS_SET_PERMS})
# XS_FLAG_PRIV in C: only privileged connections may send these.
_PRIV_OPS = frozenset(
    {
        w.XS_CONTROL,
        w.XS_INTRODUCE,
        w.XS_RELEASE,
        w.XS_IS_DOMAIN_INTRODUCED,
        w.XS_RESUME,
        w.XS_SET_TARGET,
    }
)
# Ops that look up the header's tx_id (ENOENT if unknown); the others ignore it.
_TX_OPS = frozenset(
    {
        w.XS_DIRECTORY,
        w.XS_DIRECTORY_PART,
        w.XS_READ,
        w.XS_GET_PERMS,
        w.XS_WRITE,
        w.XS_MKDIR,
        w.XS_RM,
        w.XS_SET_PERMS,
        w.XS_TRANSACTION_END,
    }
)


@dataclass(frozen=True, slots=True)
class Watch:
    """One registered watch (``struct watch``)."""

    conn: Connection
    path: str  # canonical
    token: bytes
    relative_to: str | None  # the implicit path if registered relative


class Connection:
    """One client of the store: dom0 tool, guest ring, or in-process component.

    ``feed(data)`` consumes request bytes and returns every output byte string
    queued so far (replies in request order, watch events where C queues
    them). Events caused by *other* connections are queued here too and
    announced by calling ``notify`` (set by the transport); fetch them with
    :meth:`take_output`. After a framing violation ``closed`` is set and the
    transport must drop the connection.
    """

    def __init__(self, store: XenStore, domid: int, *, readonly: bool, privileged: bool):
        self.store = store
        self.domid = domid
        self.readonly = readonly
        self.privileged = privileged
        self.closed = False
        self.close_reason = ""
        self.notify: Callable[[], None] | None = None
        self._decoder = FrameDecoder()
        self._out: deque[bytes] = deque()
        self.watches: dict[tuple[str, bytes], Watch] = {}
        self.transactions: dict[int, Transaction] = {}
        self._next_tx = 1

    # -- transport side -------------------------------------------------------
    def feed(self, data: bytes) -> list[bytes]:
        """Process request bytes; return queued output (replies and events)."""
        with self.store.lock:
            if self.closed:
                return []
            try:
                frames = self._decoder.feed(data)
            except ProtocolError as e:
                # C ignore_connection(XENSTORE_ERROR_PROTO): no reply, just drop.
                self.close(str(e))
                return self.take_output()
            for frame in frames:
                reply = self.store.handle(self, frame)
                if reply is not None:
                    self._out.append(reply)
            if self._decoder.error is not None:
                # Frames before the bad header were answered; now drop the peer.
                self.close(str(self._decoder.error))
            return self.take_output()

    def take_output(self) -> list[bytes]:
        out = list(self._out)
        self._out.clear()
        return out

    def queue(self, data: bytes) -> None:
        self._out.append(data)

    def close(self, reason: str = "closed") -> None:
        """Drop the connection: its watches and open transactions go with it."""
        with self.store.lock:
            if self.closed:
                return
            self.closed = True
            self.close_reason = reason
            self.store._forget(self)

    @property
    def implicit(self) -> str:
        return implicit_path(self.domid)


class XenStore:
    """The store: tree, domains, watches, quotas. Thread-safe via ``lock``.

    ``connection(domid, readonly=False)`` makes a client; domid 0 is privileged.
    """

    def __init__(
        self,
        *,
        dom0_nodes: bool = True,
        quotas: dict[str, int] | None = None,
        trace: Trace | None = None,
    ):
        self.lock = threading.RLock()
        # Cross-domain record: one "xenstore_request" per request, on the control plane.
        self.trace = trace
        self.quotas = dict(DEFAULT_QUOTAS)
        if quotas:
            self.quotas.update(quotas)
        self._gen = [0]
        n0 = Perms.owner_only(0)
        self.tree = Tree(Node(b"", n0, 0), self._gen)
        self.tree.owned[0] = 1
        # setup_structure(): /tool/xenstored, all n0.
        self.tree.create("/tool", b"", n0)
        self.tree.create("/tool/xenstored", b"", n0)
        if dom0_nodes:
            # What xen-init-dom0 writes on a real host.
            for path, value in (
                ("/local", b""),
                ("/local/domain", b""),
                ("/local/domain/0", b""),
                ("/local/domain/0/domid", b"0"),
                ("/local/domain/0/name", b"Domain-0"),
            ):
                self.tree.create(path, value, n0)
        self.domains: dict[int, Domain] = {0: Domain(0)}
        self.special_perms: dict[str, Perms] = {name: n0 for name in SPECIAL_NODES}
        self.connections: list[Connection] = []
        self._watches: dict[str, list[Watch]] = {}
        self.domain_watch_count: dict[int, int] = {}
        # Set by a ring transport: called with (domain) on INTRODUCE / RELEASE.
        self.on_introduce: Callable[[Domain], None] | None = None
        self.on_release: Callable[[Domain], None] | None = None
        self.log: list[str] = []

    # -- public API -------------------------------------------------------------
    def connection(
        self, domid: int, readonly: bool = False, *, privileged: bool | None = None
    ) -> Connection:
        """A new connection acting as ``domid`` (privileged iff dom0 unless overridden)."""
        with self.lock:
            conn = Connection(
                self,
                domid,
                readonly=readonly,
                privileged=(domid == 0) if privileged is None else privileged,
            )
            self.connections.append(conn)
            return conn

    def introduce_domain(self, domid: int, gfn: int = 0, evtchn: int = 1) -> None:
        """INTRODUCE from dom0's side: record the domain, fire ``@introduceDomain``."""
        with self.lock:
            self._introduce(domid, gfn, evtchn)

    def release_domain(self, domid: int) -> None:
        """RELEASE: drop the domain, its connections and its nodes; fire ``@releaseDomain``."""
        with self.lock:
            self._release(domid)

    def is_introduced(self, domid: int) -> bool:
        with self.lock:
            return domid in self.domains or domid == DOMID_SELF

    # -- dispatch ------------------------------------------------------------------
    def handle(self, conn: Connection, req: Frame) -> bytes | None:
        """Process one request; return its reply (None: it was queued on ``conn``)."""
        try:
            reply = self._dispatch(conn, req)
            result = "OK"
        except XsError as e:
            reply = error_frame(req, e.code)
            result = e.code
        if self.trace is not None:
            try:
                op = w.xsd_sockmsg_type(req.type).name
            except ValueError:
                op = str(req.type)
            arg = req.payload.split(b"\0", 1)[0][:80].decode("ascii", "replace")
            self.trace.record("xenstore_request", conn.domid, "dom0", op=op, arg=arg, result=result)
        return reply

    def _dispatch(self, conn: Connection, req: Frame) -> bytes | None:
        t = req.type
        handler = _HANDLERS.get(t)
        if handler is None:
            raise XsError("ENOSYS", f"type {t}")
        if t in _PRIV_OPS and not conn.privileged:
            raise XsError("EACCES", "privileged operation")
        tx: Transaction | None = None
        if t in _TX_OPS and req.tx_id != 0:
            tx = conn.transactions.get(req.tx_id)
            if tx is None:
                raise XsError("ENOENT", f"no transaction {req.tx_id}")
        if conn.readonly and t in _WRITE_OPS:
            raise XsError("EROFS", "read-only connection")
        payload = handler(self, conn, req, tx)
        if payload is None:
            return None
        if len(payload) > w.XENSTORE_PAYLOAD_MAX:
            return error_frame(req, "E2BIG")
        return encode(t, req.req_id, req.tx_id, payload)

    # -- helpers -------------------------------------------------------------------
    def _tree(self, tx: Transaction | None) -> Tree:
        return self.tree if tx is None else tx.tree

    def _access(self, conn: Connection, perms: Perms) -> Access:
        if conn.privileged:
            return Access.BOTH
        acc = perms.access_for(conn.domid)
        dom = self.domains.get(conn.domid)
        if dom is not None and dom.target is not None:
            acc |= perms.access_for(dom.target)
        return acc

    def _is_owner(self, conn: Connection, perms: Perms) -> bool:
        if conn.privileged or perms.owner == conn.domid:
            return True
        dom = self.domains.get(conn.domid)
        return dom is not None and dom.target == perms.owner

    def _missing(self, conn: Connection, tree: Tree, path: str) -> XsError:
        """``errno_from_parents``: ENOENT only if the nearest ancestor is readable."""
        _, node = tree.nearest(path)
        if Access.READ in self._access(conn, node.perms):
            return XsError("ENOENT", path)
        return XsError("EACCES", path)

    def _get(
        self, conn: Connection, tree: Tree, tx: Transaction | None, path: str, need: Access
    ) -> Node:
        if tx is not None:
            tx.touch(path)
            self._check_tx_size(conn, tx)
        node = tree.get(path)
        if node is None:
            raise self._missing(conn, tree, path)
        if need not in self._access(conn, node.perms):
            raise XsError("EACCES", path)
        return node

    def _check_tx_size(self, conn: Connection, tx: Transaction) -> None:
        if not conn.privileged and len(tx.touched) > self.quotas["transaction-nodes"]:
            raise XsError("ENOSPC", "transaction-nodes quota")

    def _check_node_size(self, conn: Connection, node: Node) -> None:
        if not conn.privileged and node.record_size() >= self.quotas["node-size"]:
            raise XsError("ENOSPC", "node-size quota")

    def _owned(self, tx: Transaction | None, domid: int) -> int:
        n = self.tree.owned.get(domid, 0)
        return n + (tx.tree.owned.get(domid, 0) if tx is not None else 0)

    def _modify(self, conn: Connection, tx: Transaction | None, op: Op) -> None:
        """Apply ``op`` now (no transaction) or to the transaction's view."""
        if tx is None:
            self._fire(op(self.tree))
        else:
            op(tx.tree)
            tx.ops.append(op)

    # -- node creation (WRITE, MKDIR) --------------------------------------------
    def _write(
        self, conn: Connection, tx: Transaction | None, path: str, value: bytes | None
    ) -> None:
        """WRITE (``value``) or MKDIR (``None``): replace, or create with parents."""
        tree = self._tree(tx)
        if tx is not None:
            tx.touch(path)
        node = tree.get(path)
        if node is not None:
            if Access.WRITE not in self._access(conn, node.perms):
                raise XsError("EACCES", path)
            if value is None:
                return  # MKDIR of an existing node: nothing changes, nothing fires
            self._check_node_size(conn, Node(value, node.perms, 0, node.children))
            new_value = value

            def replace(t: Tree) -> list[Event]:
                t.set_value(path, new_value)
                n = t.get(path)
                assert n is not None
                return [Event(path, False, (n.perms,))]

            self._modify(conn, tx, replace)
            return
        anc_path, anc = tree.nearest(path)
        if tx is not None:
            tx.touch(anc_path)
            missing = path[len(anc_path) :].lstrip("/").split("/")
            p = anc_path
            for name in missing:
                p = f"/{name}" if p == "/" else f"{p}/{name}"
                tx.touch(p)
            self._check_tx_size(conn, tx)
        acc = self._access(conn, anc.perms)
        if Access.READ not in acc and Access.WRITE not in acc:
            raise XsError("EACCES", path)
        if Access.WRITE not in acc:
            raise XsError("EACCES", path)
        perms = anc.perms if conn.privileged else anc.perms.with_owner(conn.domid)
        names = path[len(anc_path) :].lstrip("/").split("/")
        if not conn.privileged:
            if self._owned(tx, perms.owner) + len(names) > self.quotas["nodes"]:
                raise XsError("ENOSPC", "nodes quota")
            grown = Node(anc.value, anc.perms, 0, {**anc.children, names[0]: anc})
            self._check_node_size(conn, grown)
            self._check_node_size(conn, Node(value or b"", perms, 0))
        leaf_value = value or b""

        def create(t: Tree) -> list[Event]:
            p = anc_path
            for i, name in enumerate(names):
                p = f"/{name}" if p == "/" else f"{p}/{name}"
                t.create(p, leaf_value if i == len(names) - 1 else b"", perms)
            return [Event(path, False, (perms,))]

        self._modify(conn, tx, create)

    # -- watches -------------------------------------------------------------------
    def _fire(self, events: list[Event]) -> None:
        for ev in events:
            paths = (ev.path,) if ev.exact else tuple(ancestors(ev.path))
            for wp in paths:
                for watch in self._watches.get(wp, ()):
                    self._deliver(watch, ev.path, ev.perms)

    def _deliver(self, watch: Watch, path: str, perms: tuple[Perms, ...]) -> None:
        conn = watch.conn
        # XSA-115: an unprivileged watcher sees only what it could read.
        if not conn.privileged and not any(Access.READ in self._access(conn, p) for p in perms):
            return
        data = watch_event(watch_path_for(path, watch.relative_to), watch.token)
        if len(data) - 16 > w.XENSTORE_PAYLOAD_MAX:
            return  # XSA-324: oversized events are dropped
        conn.queue(data)
        if conn.notify is not None:
            conn.notify()

    def _fire_special(self, name: str) -> None:
        for watch in self._watches.get(name, ()):
            conn = watch.conn
            if conn.privileged or Access.READ in self._access(conn, self.special_perms[name]):
                conn.queue(watch_event(watch.path, watch.token))
                if conn.notify is not None:
                    conn.notify()

    def _drop_watch(self, watch: Watch) -> None:
        lst = self._watches.get(watch.path)
        if lst is not None:
            lst.remove(watch)
            if not lst:
                del self._watches[watch.path]
        d = watch.conn.domid
        self.domain_watch_count[d] = self.domain_watch_count.get(d, 1) - 1

    def _reset(self, conn: Connection) -> None:
        for watch in list(conn.watches.values()):
            self._drop_watch(watch)
        conn.watches.clear()
        conn.transactions.clear()

    def _forget(self, conn: Connection) -> None:
        self._reset(conn)
        if conn in self.connections:
            self.connections.remove(conn)

    # -- domains ---------------------------------------------------------------------
    def _introduce(self, domid: int, gfn: int, evtchn: int) -> None:
        dom = self.domains.get(domid)
        if dom is None:
            dom = Domain(domid, gfn, evtchn)
            self.domains[domid] = dom
            if self.on_introduce is not None:
                self.on_introduce(dom)
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
            c.close("domain released")
        # domain_tree_remove: delete what the domain owned (topmost nodes).
        doomed = [p for p, n in walk("/", self.tree.root) if n.perms.owner == domid and p != "/"]
        done: list[str] = []
        for p in doomed:
            if any(p.startswith(d + "/") for d in done):
                continue
            self._fire(_remove_op(p)(self.tree))
            done.append(p)
        if self.on_release is not None:
            self.on_release(dom)
        self._fire_special("@releaseDomain")


def _remove_op(path: str) -> Op:
    def remove(t: Tree) -> list[Event]:
        parent = t.get(parent_of(path))
        assert parent is not None
        removed = t.remove(path)
        events = [Event(p, True, (n.perms, parent.perms)) for p, n in removed[:-1]]
        events.append(Event(path, False, (removed[-1][1].perms, parent.perms)))
        return events

    return remove


# -- argument parsing -------------------------------------------------------------------
def _onearg(req: Frame) -> bytes:
    """C ``onearg``: exactly one string, its NUL the payload's last byte."""
    p = req.payload
    if not p or p.find(b"\0") != len(p) - 1:
        raise XsError("EINVAL", "expected one NUL-terminated argument")
    return p[:-1]


def _nargs(req: Frame, n: int) -> list[bytes]:
    args = req.args()
    if len(args) != n:
        raise XsError("EINVAL", f"expected {n} arguments")
    return args


def _atoi(raw: bytes) -> int:
    """C ``atoi``: leading decimal digits, 0 if none."""
    digits = b""
    for b in raw.lstrip(b" "):
        if not 0x30 <= b <= 0x39:
            break
        digits += bytes([b])
    return int(digits) if digits else 0


# -- handlers: (store, conn, req, tx) -> reply payload -----------------------------------
# A handler returns the reply payload, or None when it queued its own reply.
Handler = Callable[[XenStore, Connection, Frame, "Transaction | None"], bytes | None]


def _canon(s: XenStore, c: Connection, raw: bytes, *, special: bool = False) -> str:
    """``canonicalize`` for connection ``c`` under the store's current ``path-max`` quota."""
    return canonicalize(raw, c.domid, allow_special=special, path_max=s.quotas["path-max"])


def _do_read(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    path = _canon(s, c, _onearg(req))
    return s._get(c, s._tree(tx), tx, path, Access.READ).value


def _do_write(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    i = req.payload.find(b"\0")
    if i < 0:
        raise XsError("EINVAL", "WRITE without a NUL after the path")
    path = _canon(s, c, req.payload[:i])
    s._write(c, tx, path, req.payload[i + 1 :])
    return OK


def _do_mkdir(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    s._write(c, tx, _canon(s, c, _onearg(req)), None)
    return OK


def _do_rm(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    path = _canon(s, c, _onearg(req))
    if path == "/":
        raise XsError("EINVAL", "cannot remove /")
    tree = s._tree(tx)
    if tx is not None:
        tx.touch(path, subtree=True)
        tx.touch(parent_of(path))
        s._check_tx_size(c, tx)
    node = tree.get(path)
    if node is None:
        err = s._missing(c, tree, path)
        if err.code == "ENOENT" and tree.get(parent_of(path)) is not None:
            return OK  # absent, but the parent exists: fine
        raise err
    if Access.WRITE not in s._access(c, node.perms):
        raise XsError("EACCES", path)
    s._modify(c, tx, _remove_op(path))
    return OK


def _do_directory(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    path = _canon(s, c, _onearg(req))
    return s._get(c, s._tree(tx), tx, path, Access.READ).child_names()


def _do_directory_part(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    raw_path, raw_off = _nargs(req, 2)
    path = _canon(s, c, raw_path)
    node = s._get(c, s._tree(tx), tx, path, Access.READ)
    if not raw_off.isdigit():
        raise XsError("EINVAL", "bad offset")
    offset = int(raw_off)
    gen = str(node.gen).encode() + b"\0"
    blob = node.child_names()
    if offset >= len(blob):
        return gen + b"\0"
    out = bytearray(gen)
    limit = w.XENSTORE_PAYLOAD_MAX - len(gen) - 1
    pos = offset
    body = 0
    while pos < len(blob):
        end = blob.index(b"\0", pos) + 1
        if body + (end - pos - 1) >= limit:
            break
        out += blob[pos:end]
        body += end - pos
        pos = end
    if pos >= len(blob):
        out += b"\0"  # the final chunk ends in a double NUL
    return bytes(out)


def _do_get_perms(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    path = _canon(s, c, _onearg(req))
    return s._get(c, s._tree(tx), tx, path, Access.READ).perms.to_wire()


def _do_set_perms(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    i = req.payload.find(b"\0")
    if i < 0:
        raise XsError("EINVAL", "SET_PERMS without a path")
    rest = req.payload[i + 1 :]
    if not rest:
        raise XsError("EINVAL", "SET_PERMS needs at least one permission")
    perms = Perms.from_wire(rest)
    if not c.privileged and len(perms.entries) > s.quotas["permissions"]:
        raise XsError("ENOSPC", "permissions quota")
    path = _canon(s, c, req.payload[:i], special=True)
    if path.startswith("@"):
        if path not in SPECIAL_NODES:
            raise XsError("EINVAL", f"unknown special node {path}")
        if not s._is_owner(c, s.special_perms[path]):
            raise XsError("EACCES", path)
        s.special_perms[path] = perms
        return OK
    tree = s._tree(tx)
    node = s._get(c, tree, tx, path, Access.WRITE)
    if not s._is_owner(c, node.perms):
        raise XsError("EACCES", path)
    if not c.privileged and perms.owner != node.perms.owner:
        raise XsError("EPERM", "unprivileged domains may not change the owner")
    old = node.perms
    s._check_node_size(c, Node(node.value, perms, 0, node.children))

    def set_perms(t: Tree) -> list[Event]:
        t.set_perms(path, perms)
        return [Event(path, False, (old, perms))]

    s._modify(c, tx, set_perms)
    return OK


def _do_watch(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes | None:
    raw_path, token = _nargs(req, 2)
    path = _canon(s, c, raw_path, special=True)
    key = (path, token)
    if key in c.watches:
        raise XsError("EEXIST", "watch already registered")
    if not c.privileged and s.domain_watch_count.get(c.domid, 0) > s.quotas["watches"]:
        raise XsError("E2BIG", "watches quota")  # 4.17's error for this quota
    relative = not raw_path.startswith((b"/", b"@"))
    watch = Watch(c, path, token, c.implicit if relative else None)
    c.watches[key] = watch
    s._watches.setdefault(path, []).append(watch)
    s.domain_watch_count[c.domid] = s.domain_watch_count.get(c.domid, 0) + 1
    # do_watch: the ack first, then at once one event with the path as given.
    c.queue(encode(w.XS_WATCH, req.req_id, req.tx_id, OK))
    c.queue(watch_event(raw_path.decode("ascii"), token))
    return None


def _do_unwatch(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    raw_path, token = _nargs(req, 2)
    path = _canon(s, c, raw_path, special=True)
    watch = c.watches.pop((path, token), None)
    if watch is None:
        raise XsError("ENOENT", "no such watch")
    s._drop_watch(watch)
    return OK


def _do_transaction_start(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    if req.tx_id != 0:
        if req.tx_id in c.transactions:
            raise XsError("EBUSY", "transactions do not nest")
        raise XsError("ENOENT", f"no transaction {req.tx_id}")
    if not c.privileged and len(c.transactions) > s.quotas["transactions"]:
        raise XsError("ENOSPC", "transactions quota")
    tid = c._next_tx
    while tid == 0 or tid in c.transactions:
        tid = (tid + 1) & 0xFFFFFFFF
    c._next_tx = (tid + 1) & 0xFFFFFFFF
    c.transactions[tid] = Transaction(tid, s.tree.root, Tree(s.tree.root, s._gen))
    return str(tid).encode() + b"\0"


def _do_transaction_end(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    arg = _onearg(req)
    if arg not in (b"T", b"F"):
        raise XsError("EINVAL", "TRANSACTION_END takes T or F")
    if tx is None:
        raise XsError("ENOENT", "not in a transaction")
    del c.transactions[tx.id]
    if arg == b"F":
        return OK
    if tx.conflicts(s.tree):
        raise XsError("EAGAIN", "conflict")
    # Replay on the live tree: every touched path is as the transaction saw
    # it, so each op does exactly what it did there; its watches fire now.
    for op in tx.ops:
        s._fire(op(s.tree))
    return OK


def _do_get_domain_path(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    return implicit_path(_atoi(_onearg(req))).encode() + b"\0"


def _do_is_domain_introduced(
    s: XenStore, c: Connection, req: Frame, tx: Transaction | None
) -> bytes:
    return b"T\0" if s.is_introduced(_atoi(_onearg(req))) else b"F\0"


def _do_introduce(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    args = req.args()
    if len(args) < 3:
        raise XsError("EINVAL", "INTRODUCE needs domid, gfn, evtchn")
    domid, evtchn = _atoi(args[0]), _atoi(args[2])
    gfn = _atoi(args[1])
    if evtchn <= 0:
        raise XsError("EINVAL", "bad event channel")
    if domid > 0x7FEF:
        raise XsError("EINVAL", "bad domid")
    s._introduce(domid, gfn, evtchn)
    return OK


def _do_release(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    s._release(_atoi(_onearg(req)))
    return OK


def _do_resume(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    domid = _atoi(_onearg(req))
    if domid == 0:
        raise XsError("EINVAL", "cannot resume dom0")
    dom = s.domains.get(domid)
    if dom is None:
        raise XsError("ENOENT", f"domain {domid}")
    dom.shutdown_reported = False
    return OK


def _do_set_target(s: XenStore, c: Connection, req: Frame, tx: Transaction | None) -> bytes:
    a, b = _nargs(req, 2)
    domid, target = _atoi(a), _atoi(b)
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


_HANDLERS: dict[int, Handler] = {
    w.XS_CONTROL: _do_control,
    w.XS_DIRECTORY: _do_directory,
    w.XS_READ: _do_read,
    w.XS_GET_PERMS: _do_get_perms,
    w.XS_WATCH: _do_watch,
    w.XS_UNWATCH: _do_unwatch,
    w.XS_TRANSACTION_START: _do_transaction_start,
    w.XS_TRANSACTION_END: _do_transaction_end,
    w.XS_INTRODUCE: _do_introduce,
    w.XS_RELEASE: _do_release,
    w.XS_GET_DOMAIN_PATH: _do_get_domain_path,
    w.XS_WRITE: _do_write,
    w.XS_MKDIR: _do_mkdir,
    w.XS_RM: _do_rm,
    w.XS_SET_PERMS: _do_set_perms,
    w.XS_IS_DOMAIN_INTRODUCED: _do_is_domain_introduced,
    w.XS_RESUME: _do_resume,
    w.XS_SET_TARGET: _do_set_target,
    w.XS_RESET_WATCHES: _do_reset_watches,
    w.XS_DIRECTORY_PART: _do_directory_part,
}
