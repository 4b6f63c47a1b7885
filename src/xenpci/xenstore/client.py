"""A XenStore client (``tools/libs/store/xs.c`` in spirit), over socket, ring or in-process.

The request/reply logic is the sans-IO codec of :mod:`xenpci.xenstore.wire`,
the same one xenstored uses; a transport only moves frames. Like libxenstore
it keeps one request in flight per client, refuses a request too large for
one frame with E2BIG before sending it, and files watch events aside as
they arrive (on a reader thread for sockets and rings). Events reach the
caller either as an iterator (:meth:`XsClient.events`) or through a callback
registered with :meth:`XsClient.watch`. Where that callback runs: on the
``lane`` the client was given, a lane of the machine's deterministic executor
(``xenpci.hv.scheduler``: the owning domain's vCPU for a kernel's client, so
watch delivery is ordered with everything else the machine does and no thread
exists); or, for a client no machine gave a lane (a tool on the Unix socket:
the OS edge), on a xenwatch worker of its own, the vCPU worker class of
:mod:`xenpci.hv.domain`, as Linux runs callbacks on its xenwatch kthread.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import queue
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from xenpci.abi import xs_wire as w
from xenpci.errors import XenpciError
from xenpci.xenstore.errors import ConnectionClosed, ProtocolError, XsError
from xenpci.xenstore.gate import gate_of
from xenpci.xenstore.perms import Perms
from xenpci.xenstore.wire import HEADER, Frame, FrameDecoder, check_reply, strings

if TYPE_CHECKING:
    from xenpci.hv.domain import Vcpu
    from xenpci.hv.scheduler import Scheduler
    from xenpci.xenstore.core import Connection, XenStore

T = TypeVar("T")
REPLY_TIMEOUT = 60.0  # seconds; xenstored answers every request, so silence means it is gone
WatchCallback = Callable[["WatchEvent"], None]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One XS_WATCH_EVENT: the changed path (as the watch reports it) and the token."""

    path: str
    token: str


class Lane(Protocol):
    """Where a client's watch callbacks run: an executor lane
    (:class:`~xenpci.hv.scheduler.SteppedVcpu`) or a vCPU worker
    (:class:`~xenpci.hv.domain.Vcpu`)."""

    def post(self, item: Callable[[], None]) -> None: ...


class Transport(Protocol):
    """Moves one request frame and returns its reply; events go to ``on_event``."""

    on_event: Callable[[Frame], None]

    def request(self, data: bytes) -> Frame: ...

    def close(self) -> None: ...


class _StreamTransport:
    """A byte stream (Unix socket, ring) with a reader thread splitting replies from events."""

    def __init__(self, recv: Callable[[], bytes], send: Callable[[bytes], None]) -> None:
        self._recv = recv
        self._send = send
        self._replies: queue.Queue[Frame | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self.on_event: Callable[[Frame], None] = lambda f: None
        self._reader = threading.Thread(target=self._read_loop, name="xs-reader", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        decoder = FrameDecoder()
        while True:
            try:
                data = self._recv()
            except OSError:
                data = b""
            if not data:
                self._replies.put(None)
                return
            try:
                frames = decoder.feed(data)
            except ProtocolError:
                self._replies.put(None)
                return
            for f in frames:
                if f.type == w.XS_WATCH_EVENT:
                    self.on_event(f)
                else:
                    self._replies.put(f)

    def request(self, data: bytes) -> Frame:
        with self._lock:
            if self._closed:
                raise ConnectionClosed("transport closed")
            try:
                self._send(data)
            except OSError as e:
                raise ConnectionClosed(str(e)) from e
            try:
                reply = self._replies.get(timeout=REPLY_TIMEOUT)
            except queue.Empty:
                self._closed = True
                raise ConnectionClosed("xenstored did not reply") from None
            if reply is None:
                self._closed = True
                raise ConnectionClosed("xenstored closed the connection")
            return reply

    def join(self) -> None:
        self._reader.join(timeout=5)


class _SocketTransport(_StreamTransport):
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        super().__init__(lambda: self.sock.recv(65536), self.sock.sendall)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.join()
        self.sock.close()


class _InProcessTransport:
    """A direct :class:`Connection`: no bytes leave the process, but they are real frames."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.on_event: Callable[[Frame], None] = lambda f: None
        self._lock = threading.Lock()
        self._gate = gate_of(conn.store)
        self._decoder = FrameDecoder()
        conn.notify = self._drain

    def _drain(self) -> None:
        # Called once another connection that fired our watch has left the store.
        with self._gate:
            outs = self.conn.take_output()
        for data in outs:
            for f in FrameDecoder().feed(data):
                self.on_event(f)

    def request(self, data: bytes) -> Frame:
        with self._lock:
            with self._gate:
                if self.conn.closed:
                    raise ConnectionClosed(self.conn.close_reason)
                outs = self.conn.feed(data)
            reply: Frame | None = None
            for out in outs:
                for f in self._decoder.feed(out):
                    if f.type == w.XS_WATCH_EVENT:
                        self.on_event(f)
                    else:
                        reply = f
            if reply is None:
                raise ConnectionClosed(self.conn.close_reason or "no reply")
            return reply

    def close(self) -> None:
        with self._gate:
            self.conn.close()


class XsTransaction:
    """An open transaction: the client's tree operations bound to its id."""

    def __init__(self, client: XsClient, tx_id: int) -> None:
        self.client = client
        self.id = tx_id
        self.done = False

    def read(self, path: str) -> bytes:
        return self.client.read(path, tx=self.id)

    def write(self, path: str, value: bytes | str) -> None:
        self.client.write(path, value, tx=self.id)

    def ls(self, path: str) -> list[str]:
        return self.client.ls(path, tx=self.id)

    def rm(self, path: str) -> None:
        self.client.rm(path, tx=self.id)

    def mkdir(self, path: str) -> None:
        self.client.mkdir(path, tx=self.id)

    def exists(self, path: str) -> bool:
        return self.client.exists(path, tx=self.id)

    def get_perms(self, path: str) -> Perms:
        return self.client.get_perms(path, tx=self.id)

    def set_perms(self, path: str, perms: Perms) -> None:
        self.client.set_perms(path, perms, tx=self.id)

    def commit(self) -> None:
        """TRANSACTION_END "T"; raises XsError("EAGAIN") on conflict."""
        self.done = True
        self.client._call(w.XS_TRANSACTION_END, strings("T"), tx=self.id)

    def abort(self) -> None:
        self.done = True
        self.client._call(w.XS_TRANSACTION_END, strings("F"), tx=self.id)

    def __enter__(self) -> XsTransaction:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.done:
            return
        if exc_type is None:
            self.commit()
        else:
            with contextlib.suppress(XsError, ConnectionClosed):
                self.abort()


class XsClient:
    """XenStore client. Build with :meth:`unix`, :meth:`in_process` or :meth:`ring`."""

    def __init__(self, transport: Transport, *, lane: Lane | None = None) -> None:
        self._t = transport
        #: Where watch callbacks run: a lane of the machine's executor, or a vCPU-style
        #: worker; None until a callback needs one (then the client's own xenwatch).
        self.lane = lane
        self._xenwatch: Vcpu | None = None
        self._lane_lock = threading.Lock()
        self._req_ids = itertools.count()
        self._events: queue.Queue[WatchEvent] = queue.Queue()
        self._callbacks: dict[str, WatchCallback] = {}
        #: Exceptions raised by watch callbacks on the client's own xenwatch worker.
        self.callback_errors: list[Exception] = []
        transport.on_event = self._on_event

    # -- constructors ------------------------------------------------------------
    @classmethod
    def unix(cls, path: str) -> XsClient:
        """Connect to xenstored's Unix socket (what ``XENSTORED_PATH`` names)."""
        return cls(_SocketTransport(path))

    @classmethod
    def in_process(
        cls,
        store: XenStore,
        domid: int = 0,
        readonly: bool = False,
        *,
        lane: Lane | None = None,
    ) -> XsClient:
        """A connection inside this process acting as ``domid`` (dom0 is privileged)."""
        with gate_of(store):
            conn = store.connection(domid, readonly)
        return cls(_InProcessTransport(conn), lane=lane)

    @property
    def executor(self) -> Scheduler | None:
        """The deterministic executor this client's callbacks run on (None: threaded)."""
        scheduler: Scheduler | None = getattr(self.lane, "scheduler", None)
        return scheduler

    @classmethod
    def ring(cls, transport: Transport, *, lane: Lane | None = None) -> XsClient:
        """Over a guest's ring page (see :mod:`xenpci.xenstore.ring`).

        In deterministic mode pass the guest's vCPU as ``lane``: watch callbacks
        then run there as tasks, as for an in-process client.
        """
        return cls(transport, lane=lane)

    def close(self) -> None:
        self._t.close()
        if self._xenwatch is not None:
            self._xenwatch.stop()  # runs what is queued, then ends (not joined from itself)

    def __enter__(self) -> XsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------
    def _call(self, type_: int, payload: bytes, tx: int = 0) -> bytes:
        if len(payload) > w.XENSTORE_PAYLOAD_MAX:
            # xs_talkv: libxenstore refuses to send what xenstored would answer by
            # closing the connection (issue 10 §3.1); nothing leaves the client.
            raise XsError("E2BIG", f"request payload of {len(payload)} bytes")
        req_id = next(self._req_ids) & 0xFFFFFFFF
        # ``wire.encode`` inlined (every request of every client comes here).
        reply = self._t.request(HEADER.pack(type_, req_id, tx, len(payload)) + payload)
        if reply.type == type_ != w.XS_ERROR:
            return reply.payload  # the usual answer: what check_reply returns, without the call
        return check_reply(type_, reply)

    def read(self, path: str, *, tx: int = 0) -> bytes:
        return self._call(w.XS_READ, path.encode() + b"\0", tx)  # strings(path), inlined

    def write(self, path: str, value: bytes | str, *, tx: int = 0) -> None:
        data = value.encode() if isinstance(value, str) else value
        self._call(w.XS_WRITE, path.encode() + b"\0" + data, tx)

    def ls(self, path: str, *, tx: int = 0) -> list[str]:
        return [n.decode() for n in self._call(w.XS_DIRECTORY, strings(path), tx).split(b"\0")[:-1]]

    def rm(self, path: str, *, tx: int = 0) -> None:
        self._call(w.XS_RM, strings(path), tx)

    def mkdir(self, path: str, *, tx: int = 0) -> None:
        self._call(w.XS_MKDIR, strings(path), tx)

    def exists(self, path: str, *, tx: int = 0) -> bool:
        try:
            self.read(path, tx=tx)
        except XsError as e:
            if e.code == "ENOENT":
                return False
            raise
        return True

    def get_perms(self, path: str, *, tx: int = 0) -> Perms:
        return Perms.from_wire(self._call(w.XS_GET_PERMS, strings(path), tx))

    def set_perms(self, path: str, perms: Perms, *, tx: int = 0) -> None:
        self._call(w.XS_SET_PERMS, path.encode() + b"\0" + perms.to_wire(), tx)

    def get_domain_path(self, domid: int) -> str:
        return self._call(w.XS_GET_DOMAIN_PATH, strings(str(domid))).rstrip(b"\0").decode()

    def is_domain_introduced(self, domid: int) -> bool:
        return self._call(w.XS_IS_DOMAIN_INTRODUCED, strings(str(domid))) != b"F\0"

    def introduce_domain(self, domid: int, gfn: int, evtchn: int) -> None:
        self._call(w.XS_INTRODUCE, strings(str(domid), str(gfn), str(evtchn)))

    def release_domain(self, domid: int) -> None:
        self._call(w.XS_RELEASE, strings(str(domid)))

    def control(self, *args: str) -> bytes:
        return self._call(w.XS_CONTROL, strings(*args))

    # -- watches -----------------------------------------------------------------
    def watch(self, path: str, token: str, callback: WatchCallback | None = None) -> None:
        """Register a watch; its events go to ``callback`` (on the client's thread) or
        to :meth:`events`. The first event (the watch path itself) arrives at once."""
        if callback is not None:
            self._callbacks[token] = callback
            if self.lane is None:
                self._start_xenwatch()
        try:
            self._call(w.XS_WATCH, strings(path, token))
        except BaseException:
            self._callbacks.pop(token, None)
            raise

    def unwatch(self, path: str, token: str) -> None:
        self._call(w.XS_UNWATCH, strings(path, token))
        self._callbacks.pop(token, None)

    def events(self, timeout: float | None = None) -> Iterator[WatchEvent]:
        """Watch events as they arrive; stops after ``timeout`` seconds of silence."""
        while True:
            try:
                yield self.next_event(timeout)
            except queue.Empty:
                return

    def next_event(self, timeout: float | None = None) -> WatchEvent:
        """The next event (``queue.Empty`` after ``timeout``).

        With an executor the wait runs the machine until an event is filed, a
        deadline on its virtual clock; with no ``timeout`` an event nothing can
        ever cause is the executor's ``Deadlock``, not a hang.
        """
        ex = self.executor
        if ex is None:
            return self._events.get(timeout=timeout)
        events = self._events
        if timeout is None:
            ex.run_until(lambda: not events.empty())
        else:
            ex.wait_until(lambda: not events.empty(), timeout)
        return events.get_nowait()

    def _on_event(self, frame: Frame) -> None:
        parts = frame.payload.split(b"\0")
        if len(parts) < 3:
            return  # malformed event: drop it, as xs_check_watch would refuse it
        ev = WatchEvent(parts[0].decode("ascii", "replace"), parts[1].decode("ascii", "replace"))
        cb = self._callbacks.get(ev.token)
        if cb is not None:
            lane = self.lane
            if lane is not None:
                # On a machine's lane an exception goes to the lane's owner (a vCPU
                # traces it); on our own xenwatch it is kept and told in one line.
                # Never a traceback. A lane that has stopped (its domain is gone)
                # drops the event, as a dead kernel would.
                item = (
                    functools.partial(self._run_callback, cb, ev)
                    if lane is self._xenwatch
                    else functools.partial(cb, ev)
                )
                try:  # noqa: SIM105 - once per event: no context manager
                    lane.post(item)
                except XenpciError:
                    pass
        else:
            self._events.put(ev)

    def _start_xenwatch(self) -> None:
        # A client that no machine gave a lane (a tool on the Unix socket, the OS
        # edge) runs its callbacks on a worker of its own, as Linux runs them on
        # its xenwatch kthread: never on the thread that reads replies, which a
        # callback's own requests wait for. The worker is the threaded machine's
        # vCPU worker (a queue drained in order), not a second implementation.
        from xenpci.hv.domain import Vcpu

        with self._lane_lock:
            if self.lane is None:
                self._xenwatch = Vcpu("xenwatch", on_error=self._worker_failed)
                self.lane = self._xenwatch

    def _worker_failed(self, exc: BaseException) -> None:
        # Only what _run_callback lets through (KeyboardInterrupt, SystemExit).
        if isinstance(exc, Exception):
            self.callback_errors.append(exc)

    def _run_callback(self, cb: WatchCallback, ev: WatchEvent) -> None:
        try:
            cb(ev)
        except Exception as exc:  # a broken callback must not kill event delivery
            # Kept for whoever owns the client, and one line on stderr: a
            # watch callback's failure is a bug to see, never a traceback.
            self.callback_errors.append(exc)
            print(
                f"xenpci: watch callback for {ev.path} ({ev.token}) failed: {exc!r}",
                file=sys.stderr,
            )

    # -- transactions ------------------------------------------------------------
    def transaction(self) -> XsTransaction:
        """TRANSACTION_START; use as a context manager (commit on success, abort on error)."""
        tid = int(self._call(w.XS_TRANSACTION_START, b"\0").rstrip(b"\0"))
        return XsTransaction(self, tid)

    def retry_transaction(self, fn: Callable[[XsTransaction], T], attempts: int = 100) -> T:
        """Run ``fn`` in a transaction, retrying the whole of it on EAGAIN (as xenstore-write)."""
        for _ in range(attempts):
            t = self.transaction()
            try:
                result = fn(t)
            except BaseException:
                with contextlib.suppress(XsError, ConnectionClosed):
                    t.abort()
                raise
            try:
                t.commit()
            except XsError as e:
                if e.code == "EAGAIN":
                    continue
                raise
            return result
        raise XsError("EAGAIN", f"still conflicting after {attempts} attempts")
