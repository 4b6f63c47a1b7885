"""The xenstored Unix-socket transport: a thin shell around :class:`XenStore`.

Models the socket side of C xenstored (``init_sockets``,
``accept_connection``, ``handle_input``, ``handle_output``): it listens on
``XENSTORED_PATH``-style sockets, treats each peer as dom0 (privileged), and
serves many clients from one thread with a selector. A frame with ``len`` >
4096 closes that connection alone. A failed ``accept()`` (EMFILE, ENFILE...)
ends nothing: the listeners rest until a client goes away or ``ACCEPT_RETRY``
seconds pass (C simply returns to its poll loop, and spins while the fds stay
exhausted).

Output to each client waits in its store connection's queue (C's ``out_list``,
where identical events are dropped, XSA-326); the client's socket is that
connection's sink (a non-blocking ``send``). Unprivileged peers are bounded as
C bounds a domain: their requests are not read while ``Connection.can_read``
says no (``domain_can_read``). Deliberate differences: C sets no bound at all
for a dom0 client; here a privileged client whose queue exceeds
``backlog_max`` bytes (it does not read while events keep coming) is
disconnected, so it cannot grow the daemon without bound. Also an optional
read-only socket (writes get EROFS, as 4.15+ would if it still had one) and
"domain sockets" whose peers act as an unprivileged domain, a test hook so
permissions and quotas can be driven by the stock CLI.

Executors: without one (``xenpci xenstored``) this server's one thread IS the
executor: it handles each request itself, in its epoll loop, as C xenstored
does. Given a machine's real-time executor (``executor=``, the machine
daemon's), the server thread only moves bytes: what it reads is handled as one
executor task (:meth:`xenpci.hv.scheduler.Scheduler.submit`, in order, on
the executor's ``xenstored`` lane), and that client is not read again until
the task has run (or a watch event for it is flushed meanwhile), so a flooding
client cannot pile up tasks; replies still go out through the connection's
non-blocking sink, and what stays queued is flushed by the server thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import selectors
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenpci.xenstore.core import Connection, XenStore
from xenpci.xenstore.gate import Gate, gate_of

if TYPE_CHECKING:
    from xenpci.hv.scheduler import Scheduler

_log = logging.getLogger("xenpci.xenstored")
_READ = selectors.EVENT_READ
#: Default bound on what a privileged client may leave unread (see the docstring).
BACKLOG_MAX = 16 * 1024 * 1024
#: How long listeners rest after accept() ran out of fds, if no client goes first.
ACCEPT_RETRY = 0.5
#: sizeof(struct sockaddr_un.sun_path) on Linux, the terminating NUL included.
SUN_PATH_MAX = 108
#: accept() errors that mean "no fd for now": the listener rests, the server goes on.
_ACCEPT_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class _Poller:
    """``selectors.EpollSelector`` cut to what the serving loop needs.

    ``poll`` returns (data, EVENT_* mask) pairs straight from epoll, without
    the per-event key objects of :mod:`selectors` (its select() cost as much
    as the rest of a READ's handling).
    """

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._data: dict[int, object] = {}

    @staticmethod
    def _events(mask: int) -> int:
        ev = 0
        if mask & selectors.EVENT_READ:
            ev |= select.EPOLLIN
        if mask & selectors.EVENT_WRITE:
            ev |= select.EPOLLOUT
        return ev

    def register(self, sock: socket.socket, mask: int, data: object) -> None:
        fd = sock.fileno()
        if fd < 0 or fd in self._data:
            raise KeyError(fd)
        self._ep.register(fd, self._events(mask))
        self._data[fd] = data

    def modify(self, sock: socket.socket, mask: int, data: object) -> None:
        fd = sock.fileno()
        if fd not in self._data:
            raise KeyError(fd)
        self._ep.modify(fd, self._events(mask))
        self._data[fd] = data

    def unregister(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        del self._data[fd]  # KeyError if unknown, as selectors
        with contextlib.suppress(OSError):
            self._ep.unregister(fd)

    def poll(self, timeout: float) -> list[tuple[object, int]]:
        return self.masks(self._ep.poll(timeout))

    def masks(self, events: list[tuple[int, int]]) -> list[tuple[object, int]]:
        """epoll's (fd, events) pairs as (data, EVENT_* mask), unregistered fds left out."""
        data = self._data
        out = []
        for fd, ev in events:
            if fd not in data:
                continue  # no longer registered
            # As EpollSelector: anything but EPOLLOUT reads, anything but EPOLLIN writes.
            if ev == select.EPOLLIN:
                out.append((data[fd], selectors.EVENT_READ))
                continue
            mask = (selectors.EVENT_READ if ev & ~select.EPOLLOUT else 0) | (
                selectors.EVENT_WRITE if ev & ~select.EPOLLIN else 0
            )
            out.append((data[fd], mask))
        return out

    def close(self) -> None:
        self._ep.close()
        self._data.clear()


@dataclass(slots=True)
class _Client:
    sock: socket.socket
    conn: Connection
    mask: int = selectors.EVENT_READ  # what the selector watches for this client
    #: send() failed (the peer is gone): dropped by the serving thread.
    broken: bool = False

    def sink(self, data: bytes) -> int:
        """The connection's sink (called inside the store, from whichever thread entered it)."""
        if self.broken:
            return 0
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            self.broken = True
            return 0


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of one client's output queue (for CONTROL ``quota`` and tests)."""

    domid: int
    queued: int
    outstanding: int
    dropped_events: int


@dataclass(frozen=True, slots=True)
class _Listener:
    sock: socket.socket
    path: str
    domid: int
    readonly: bool


class XenstoredServer:
    """Serve ``store`` on Unix sockets from a background thread.

    ``domain_sockets`` maps a domid to a socket path whose peers act as that
    (unprivileged) domain; the domain is introduced in the store if needed.
    """

    def __init__(
        self,
        store: XenStore,
        socket_path: str,
        ro_socket_path: str | None = None,
        domain_sockets: Mapping[int, str] | None = None,
        *,
        backlog_max: int = BACKLOG_MAX,
        sole_user: bool = False,
        executor: Scheduler | None = None,
    ) -> None:
        self.store = store
        # Other threads call the same store (the threaded machine): enter it
        # through its gate. ``sole_user``: this server's thread is the only
        # caller (the ``xenpci xenstored`` daemon), so it calls straight in.
        self._gate: Gate | contextlib.nullcontext[XenStore] = (
            contextlib.nullcontext(store) if sole_user else gate_of(store)
        )
        self._shared = not sole_user
        self.executor = executor
        #: requests run on a lane of their own: a toolstack step waiting on the
        #: executor (its lane busy) still gets the XenStore writes it waits for
        self._lane = executor.lane("xenstored") if executor is not None else None
        self.backlog_max = backlog_max
        self.socket_path = socket_path
        self.ro_socket_path = ro_socket_path
        self.domain_sockets = dict(domain_sockets or {})
        self._sel = _Poller()
        self._listeners: list[_Listener] = []
        self._clients: dict[int, _Client] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._dirty: set[int] = set()
        self._dirty_lock = threading.Lock()
        #: When listeners rest after accept() ran out of fds: resume at this time.
        self._resume_at: float | None = None
        #: accept() failures survived, and clients dropped for an unread backlog.
        self.accept_failures = 0
        self._told_exhausted = False
        self.overflow_drops = 0

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Bind every socket and serve from a daemon thread.

        Raises OSError (nothing left bound) if a socket cannot be made: a
        missing directory, a path longer than ``sun_path`` allows...
        """
        try:
            self._bind(self.socket_path, 0, False)
            if self.ro_socket_path:
                self._bind(self.ro_socket_path, 0, True)
            for domid, path in self.domain_sockets.items():
                with self._gate:
                    if not self.store.is_introduced(domid):
                        self.store.introduce_domain(domid)
                self._bind(path, domid, False)
        except BaseException:
            self._close_listeners()
            raise
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="xenstored", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close every connection and unlink the sockets."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for client in list(self._clients.values()):
            self._drop(client)
        self._close_listeners()
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(self._wake_r)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _close_listeners(self) -> None:
        for lst in self._listeners:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(lst.sock)
            lst.sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lst.path)
        self._listeners.clear()

    def __enter__(self) -> XenstoredServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def request_stop(self) -> None:
        """Ask :meth:`serve_forever` to return (safe from a signal handler)."""
        self._stop.set()

    def serve_forever(self) -> None:
        """Block until :meth:`stop` (from a signal handler, say)."""
        while not self._stop.wait(0.2):
            pass

    def stats(self) -> list[ClientStats]:
        """Every connected client's queue, in accept order."""
        # Inside the store: a send and the count of what it took are one step.
        with self._gate:
            return [
                ClientStats(
                    c.conn.domid, c.conn.out_bytes, c.conn.outstanding, c.conn.dropped_events
                )
                for c in list(self._clients.values())
            ]

    # -- internals ---------------------------------------------------------------
    def _bind(self, path: str, domid: int, readonly: bool) -> None:
        if len(os.fsencode(path)) >= SUN_PATH_MAX:
            # Python would say only "AF_UNIX path too long".
            raise OSError(
                errno.ENAMETOOLONG,
                f"longer than a Unix socket path allows ({SUN_PATH_MAX - 1} bytes)",
                path,
            )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket from an earlier run, as C does
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(64)
        except OSError as e:
            sock.close()
            if e.filename is None:  # bind() names no path in its error
                e.filename = path
            raise
        sock.setblocking(False)
        lst = _Listener(sock, path, domid, readonly)
        self._listeners.append(lst)
        self._sel.register(sock, selectors.EVENT_READ, lst)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    def _run(self) -> None:
        sel = self._sel
        epoll_wait, registered = sel._ep.poll, sel._data
        read, epollin = self._read, select.EPOLLIN
        stop = self._stop
        while not stop.is_set():
            timeout = 1.0
            if self._resume_at is not None:
                timeout = max(0.0, self._resume_at - time.monotonic())
                if timeout == 0.0:
                    self._resume_listeners()
                    timeout = 1.0
            events = epoll_wait(timeout)
            while len(events) == 1 and self._resume_at is None:
                # The hot path: one client's request, nothing else ready. Straight
                # from epoll, without building _Poller.poll's list or checking the
                # stop flag (a READ's Python work is a few microseconds; every call
                # shows). stop() wakes the loop through the wake fd, which leaves it.
                fd, ev = events[0]
                data = registered.get(fd)
                if ev != epollin or type(data) is not _Client:
                    break
                try:
                    read(data)
                except Exception as e:  # a bug must cost one client, not the daemon
                    _log.error("xenstored: dropped a client after %r", e)
                    self._drop(data)
                if self._dirty:
                    self._flush_dirty()
                events = epoll_wait(1.0)
            for data, mask in sel.masks(events):
                if type(data) is _Client:  # the common case first
                    try:
                        if mask & selectors.EVENT_READ:
                            read(data)
                        if mask & selectors.EVENT_WRITE and data.sock.fileno() >= 0:
                            self._flush(data)
                    except Exception as e:  # a bug must cost one client, not the daemon
                        _log.error("xenstored: dropped a client after %r", e)
                        self._drop(data)
                elif data is None:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
                else:
                    assert isinstance(data, _Listener)
                    self._accept(data)
            if self._dirty:
                self._flush_dirty()

    def _flush_dirty(self) -> None:
        """Send what other connections' requests queued for our clients (watch events)."""
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
        for fd in dirty:
            client = self._clients.get(fd)
            if client is not None:
                try:
                    self._flush(client)
                except Exception as e:  # as above
                    _log.error("xenstored: dropped a client after %r", e)
                    self._drop(client)

    # -- accepting ---------------------------------------------------------------
    def _accept(self, lst: _Listener) -> None:
        try:
            sock, _ = lst.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as e:
            self.accept_failures += 1
            if e.errno in _ACCEPT_EXHAUSTED:
                # The peer stays in the listen backlog; try again once an fd
                # is free. Polling the listener meanwhile would only spin.
                if not self._told_exhausted:  # once: it may recur at every free fd
                    self._told_exhausted = True
                    _log.warning("xenstored: accept on %s: %s; still serving", lst.path, e.strerror)
                self._rest_listeners()
            return
        sock.setblocking(False)
        with self._gate:
            conn = self.store.connection(lst.domid, lst.readonly)
        client = _Client(sock, conn)
        fd = sock.fileno()

        def notify() -> None:
            # Called by whichever thread caused an event, once it left the store.
            with self._dirty_lock:
                self._dirty.add(fd)
            if threading.current_thread() is not self._thread:
                self._wake()

        conn.notify = notify
        conn.sink = client.sink
        self._clients[fd] = client
        self._sel.register(sock, selectors.EVENT_READ, client)

    def _rest_listeners(self) -> None:
        if self._resume_at is not None:
            return
        self._resume_at = time.monotonic() + ACCEPT_RETRY
        for lst in self._listeners:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(lst.sock)

    def _resume_listeners(self) -> None:
        if self._resume_at is None:
            return
        self._resume_at = None
        for lst in self._listeners:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.register(lst.sock, selectors.EVENT_READ, lst)

    # -- per client ----------------------------------------------------------------
    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        if self.executor is not None:
            self._submit(client, data)
            return
        conn = client.conn
        if self._shared:
            with self._gate:
                conn.feed(data)  # replies go to the sink, or wait in the queue
        else:
            conn.feed(data)
        if conn.closed:
            # Framing violation: C drops the connection without a reply.
            self._drop(client)
            return
        if conn.out_bytes or client.broken or not conn.privileged or client.mask != _READ:
            self._flush(client)
        # else: all sent, still read, nothing for the selector to change

    def _submit(self, client: _Client, data: bytes) -> None:
        """Executor mode: hand ``data`` to the executor; stop reading until it ran."""
        executor = self.executor
        assert executor is not None
        if client.mask:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(client.sock)
            client.mask = 0
        conn, fd = client.conn, client.sock.fileno()

        def handle() -> None:  # on the executor's thread
            try:
                # In the gate: this thread's flushes and accepts touch the store too.
                with self._gate:
                    conn.feed(data)
            except Exception as e:  # a bug must cost one client, not the machine
                _log.error("xenstored: dropped a client after %r", e)
                client.broken = True
            if conn.closed:
                client.broken = True  # a framing violation: dropped, no reply (as C)
            # The server thread flushes and reads this client again (_flush_dirty).
            with self._dirty_lock:
                self._dirty.add(fd)
            self._wake()

        executor.submit(handle, self._lane)

    def _flush(self, client: _Client) -> None:
        """Send what is queued, then watch the socket for what must happen next."""
        conn = client.conn
        if conn.out_bytes:
            with self._gate:
                conn.flush()
        if client.broken:
            self._drop(client)
            return
        if conn.privileged and conn.out_bytes > self.backlog_max:
            # It does not read while events keep coming: C would hold them all.
            self.overflow_drops += 1
            self._drop(client)
            return
        # Change the selector registration only when it must change: an
        # epoll_ctl per request would cost as much as the request itself.
        # A client whose input is not read is still watched for writability,
        # which also reports its hang-up.
        mask = (selectors.EVENT_READ if conn.can_read() else 0) | (
            selectors.EVENT_WRITE if conn.out_bytes else 0
        )
        if mask != client.mask:
            old, client.mask = client.mask, mask
            with contextlib.suppress(KeyError, ValueError):
                if not mask:
                    self._sel.unregister(client.sock)
                elif not old:
                    self._sel.register(client.sock, mask, client)
                else:
                    self._sel.modify(client.sock, mask, client)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        self._clients.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(client.sock)
        with self._gate:
            client.conn.close("peer gone")  # first: no thread sends on the closed socket
        client.sock.close()
        self._resume_listeners()  # an fd is free again
