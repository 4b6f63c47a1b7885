"""The xenstored Unix-socket transport: a thin shell around :class:`XenStore`.

Models the socket side of C xenstored (``init_sockets``, ``handle_input``,
``handle_output``): it listens on ``XENSTORED_PATH``-style sockets, treats each
peer as dom0 (privileged), and serves many clients from one thread with a
selector. A frame with ``len`` > 4096 closes that connection alone. Deliberate
differences: an optional read-only socket (writes get EROFS, as 4.15+ would
if it still had one) and "domain sockets" whose peers act as an unprivileged
domain, a test hook so permissions and quotas can be driven by the stock CLI.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from xenpci.xenstore.core import Connection, XenStore


@dataclass(slots=True)
class _Client:
    sock: socket.socket
    conn: Connection
    out: bytearray = field(default_factory=bytearray)
    writing: bool = False  # registered for EVENT_WRITE (only while output is stuck)


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
    ) -> None:
        self.store = store
        self.socket_path = socket_path
        self.ro_socket_path = ro_socket_path
        self.domain_sockets = dict(domain_sockets or {})
        self._sel = selectors.DefaultSelector()
        self._listeners: list[_Listener] = []
        self._clients: dict[int, _Client] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._dirty: set[int] = set()
        self._dirty_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Bind every socket and serve from a daemon thread."""
        self._bind(self.socket_path, 0, False)
        if self.ro_socket_path:
            self._bind(self.ro_socket_path, 0, True)
        for domid, path in self.domain_sockets.items():
            if not self.store.is_introduced(domid):
                self.store.introduce_domain(domid)
            self._bind(path, domid, False)
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
        for lst in self._listeners:
            lst.sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lst.path)
        self._listeners.clear()
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(self._wake_r)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

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

    # -- internals ---------------------------------------------------------------
    def _bind(self, path: str, domid: int, readonly: bool) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket from an earlier run, as C does
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(64)
        sock.setblocking(False)
        lst = _Listener(sock, path, domid, readonly)
        self._listeners.append(lst)
        self._sel.register(sock, selectors.EVENT_READ, lst)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, mask in self._sel.select(timeout=1.0):
                data = key.data
                if data is None:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
                elif isinstance(data, _Listener):
                    self._accept(data)
                else:
                    assert isinstance(data, _Client)
                    if mask & selectors.EVENT_READ:
                        self._read(data)
                    if mask & selectors.EVENT_WRITE and data.sock.fileno() >= 0:
                        self._flush(data)
            with self._dirty_lock:
                dirty, self._dirty = self._dirty, set()
            for fd in dirty:
                client = self._clients.get(fd)
                if client is not None:
                    client.out += b"".join(client.conn.take_output())
                    self._flush(client)

    def _accept(self, lst: _Listener) -> None:
        try:
            sock, _ = lst.sock.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        conn = self.store.connection(lst.domid, lst.readonly)
        client = _Client(sock, conn)
        fd = sock.fileno()

        def notify() -> None:
            # Called under the store lock by whichever thread caused an event.
            with self._dirty_lock:
                self._dirty.add(fd)
            if threading.current_thread() is not self._thread:
                self._wake()

        conn.notify = notify
        self._clients[fd] = client
        self._sel.register(sock, selectors.EVENT_READ, client)

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
        out = client.conn.feed(data)
        client.out += b"".join(out)
        if client.conn.closed:
            # Framing violation: C drops the connection without a reply.
            self._drop(client)
            return
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        if not client.conn.privileged and len(client.out) > self.store.quotas["memory"]:
            # A domain that never reads its events would grow our memory without
            # bound; C xenstored caps it with the per-domain memory quota
            # (XSA-326). We drop that peer alone.
            self._drop(client)
            return
        if client.out:
            try:
                n = client.sock.send(client.out)
                del client.out[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop(client)
                return
        # Change the selector registration only when it must change: an
        # epoll_ctl per request would cost as much as the request itself.
        if bool(client.out) != client.writing:
            client.writing = bool(client.out)
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.writing else 0)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.modify(client.sock, want, client)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        self._clients.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(client.sock)
        client.sock.close()
        client.conn.close("peer gone")
