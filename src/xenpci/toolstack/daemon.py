"""A machine that stays up: hypervisor, dom0, xenstored and the toolstack behind two sockets.

There is no one real counterpart: on a Xen host the hypervisor runs from boot,
``xenstored`` is a daemon with ``/run/xenstored/socket``, and every ``xl``
process links libxl. Here one process holds the machine; it serves the
XenStore wire protocol on ``DIR/xenstored.sock`` (so ``XENSTORED_PATH=... xenstore-ls``
shows the live machine) and the toolstack's control protocol
(:mod:`xenpci.toolstack.control`) on ``DIR/control.sock``; ``DIR/machine.pid``
names the process. Stopping destroys every guest (their devices are detached,
reset and returned to pciback), gives every device back to dom0, and removes
the sockets and the pid file.

One machine per directory: ``DIR/machine.lock`` is ``flock``-ed before anything
in DIR is touched and held for the machine's life, so of two starts at once
exactly one wins and the other deletes nothing. The pid file is believed only
while its process holds that lock (``/proc/locks``): a pid reused by an
unrelated process after a crash reads as stale.

This module is the thin IO shell: sockets and threads only; the protocol and
the toolstack logic live in ``control`` and ``libxl``. The machine runs on one
real-time executor (:class:`xenpci.hv.scheduler.Scheduler` on a
``MonotonicClock``, thread ``xenpci-machine``): booting, every control op,
every XenStore request from the socket and the teardown are its tasks, and its
thread is the only one that runs machine work. The other threads are OS edges:
the control socket's accept loop and one thread per control connection, which
frame lines and wait on the executor's future for each, and the XenStore
socket's server thread, which only moves bytes. Control ops that take libxl's
locks run one at a time on the toolstack's lane (:data:`control.SERIAL_OPS`);
the others on their connection's own lane, so ``xl unpause`` or ``xl list``
still answer while an attach waits on a paused guest.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from xenpci.devices.base import DeviceModel
from xenpci.hv.clock import MonotonicClock
from xenpci.hv.scheduler import ExecutorStopped, Scheduler, SteppedVcpu
from xenpci.pci import regs
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.control import (
    SERIAL_OPS,
    ControlProtocolError,
    ControlService,
    LineFramer,
    Request,
    Response,
    decode_request,
    decode_response,
)
from xenpci.toolstack.errors import LibxlErrorCode, ToolstackError
from xenpci.toolstack.host import HostDescription, boot_machine
from xenpci.toolstack.libxl import Libxl
from xenpci.toolstack.machine import Machine

XENSTORED_SOCK = "xenstored.sock"
CONTROL_SOCK = "control.sock"
PID_FILE = "machine.pid"
LOCK_FILE = "machine.lock"
#: accept() errors that mean "no resources now" (fd or memory exhaustion), not a dead
#: listener: the loop backs off and accepts again once something is freed.
_ACCEPT_TRANSIENT = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EINTR}
)
#: how long the accept loop backs off after a transient failure (an OS edge, not a guess
#: at an event: nothing tells us when another process frees a descriptor)
ACCEPT_BACKOFF = 0.05


class DaemonError(ToolstackError):
    """The machine could not start, or no machine answers at a directory."""

    def __init__(self, message: str) -> None:
        super().__init__(message, LibxlErrorCode.ERROR_FAIL)


def default_dir() -> Path:
    """``$XENPCI_DIR``, else ``$XDG_RUNTIME_DIR/xenpci`` or ``/tmp/xenpci-<uid>``."""
    env = os.environ.get("XENPCI_DIR")
    if env:
        return Path(env)
    run = os.environ.get("XDG_RUNTIME_DIR")
    return Path(run) / "xenpci" if run else Path(f"/tmp/xenpci-{os.getuid()}")


def lock_holders(path: Path) -> set[int] | None:
    """Pids holding a ``flock`` on ``path`` (from ``/proc/locks``), or None if unknown."""
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    try:
        st = path.stat()
    except FileNotFoundError:
        return set()  # no lock file: nobody holds it
    # "1: FLOCK  ADVISORY  WRITE 29846 fe:00:2148066 0 EOF": MAJ:MIN:INODE. Only the
    # inode is compared: on overlay filesystems the device the kernel prints is the
    # underlying one, not the st_dev stat() gives us (and the pid must match too).
    want = str(st.st_ino)
    holders: set[int] = set()
    for line in text.splitlines():
        f = line.split()
        if "->" in f:  # a waiter ("1: -> FLOCK ..."), not a holder
            continue
        if len(f) >= 6 and f[1] == "FLOCK" and f[5].rpartition(":")[2] == want and f[4].isdigit():
            holders.add(int(f[4]))
    return holders


def read_pid(run_dir: Path) -> int | None:
    """The pid in ``DIR/machine.pid`` if that process is this directory's machine.

    The process must be alive and hold ``DIR/machine.lock``; a pid file left by a
    machine that died, whose pid now names an unrelated process, is stale.
    """
    try:
        pid = int((run_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    holders = lock_holders(run_dir / LOCK_FILE)
    if holders is not None and pid not in holders:
        return None
    return pid


class MachineDaemon:
    """Boot a machine and serve it until :meth:`stop` (or a ``shutdown`` request)."""

    def __init__(self, run_dir: Path, host: HostDescription, *, timeout: float = 10.0) -> None:
        self.run_dir = Path(run_dir)
        self.host = host
        self.timeout = timeout
        self.started_at = 0.0
        self._stop = threading.Event()
        self._stopped = False
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conn_threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self.machine: Machine | None = None
        self.libxl: Libxl | None = None
        self.service: ControlService | None = None
        #: the machine's one executor (real time) and its thread
        self.executor = Scheduler(MonotonicClock())
        self._executor_thread: threading.Thread | None = None
        #: control ops that take libxl's locks run here, one at a time
        self._xl_lane = self.executor.lane("xl")
        self._conn_seq = 0
        self._created_dir = False
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ paths
    @property
    def xenstored_path(self) -> Path:
        return self.run_dir / XENSTORED_SOCK

    @property
    def control_path(self) -> Path:
        return self.run_dir / CONTROL_SOCK

    @property
    def pid_path(self) -> Path:
        return self.run_dir / PID_FILE

    @property
    def lock_path(self) -> Path:
        return self.run_dir / LOCK_FILE

    # ------------------------------------------------------------------ lifecycle
    def _take_dir(self) -> None:
        """Create DIR if needed and take its lock, or fail with one line; touches
        nothing else in DIR."""
        if len(str(self.control_path)) > 100:
            raise DaemonError(f"{self.run_dir} is too long a path for a Unix socket")
        where = f"cannot use {self.run_dir} as the machine directory"
        try:
            if not self.run_dir.is_dir():
                self.run_dir.mkdir(parents=True)
                self._created_dir = True
        except FileExistsError:
            raise DaemonError(f"{where}: it is not a directory") from None
        except OSError as e:
            raise DaemonError(f"{where}: {e.strerror}") from None
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise DaemonError(f"{where}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                other = read_pid(self.run_dir)
                who = f" (pid {other})" if other is not None else ""
                raise DaemonError(f"a machine is already running in {self.run_dir}{who}") from None
            # A machine stopping unlinks its lock file before letting go of it: a
            # lock on that unlinked file guards nothing, so take the new file's.
            try:
                same = os.fstat(fd).st_ino == self.lock_path.stat().st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd = fd
                return
            os.close(fd)

    def start(self) -> None:
        self._take_dir()
        # Under the lock: what a machine that died left behind is ours to replace.
        for p in (self.xenstored_path, self.control_path, self.pid_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        try:
            self._executor_thread = threading.Thread(
                target=self.executor.serve, name="xenpci-machine", daemon=True
            )
            self._executor_thread.start()
            self.executor.submit(self._boot).result()
            lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lst.bind(str(self.control_path))
            # The control socket is dom0's toolstack: only its owner may drive it.
            os.chmod(self.control_path, 0o600)
            lst.listen(16)
            self._listener = lst
            self._accept_thread = threading.Thread(
                target=self._accept_loop, name="xenpci-control", daemon=True
            )
            self._accept_thread.start()
            tmp = self.pid_path.with_suffix(".tmp")
            tmp.write_text(f"{os.getpid()}\n")
            tmp.replace(self.pid_path)
            self.started_at = time.time()
        except BaseException:
            self.stop()
            raise

    def _boot(self) -> None:
        """On the executor: the machine, its XenStore socket, the toolstack."""
        self.machine = boot_machine(self.host, executor=self.executor)
        self.machine.serve_xenstore(str(self.xenstored_path))
        self.libxl = Libxl(
            self.machine, self.machine.xs, timeout=self.timeout, trace=self.machine.trace
        )
        self.service = ControlService(self.libxl, self.status)

    def _teardown(self) -> None:
        """On the executor (toolstack lane): guests, then devices back to dom0, then the
        machine."""
        # Guests first (their devices are detached, revoked, reset), then give devices back.
        if self.libxl is not None:
            for rec in list(self.libxl.domains.values()):
                with contextlib.suppress(Exception):
                    self.libxl.domain_destroy(rec.domid)
            for dev in self.libxl.assignable_list():
                with contextlib.suppress(Exception):
                    self.libxl.assignable_remove(str(dev.sbdf))
        if self.machine is not None:
            self.machine.shutdown()

    def _cancel_all(self) -> None:
        """On the executor: end every op's wait, so the teardown queued behind them runs."""
        if self.libxl is not None:
            for rec in list(self.libxl.domains.values()):
                rec.cancel.cancel()

    def serve_forever(self) -> None:
        """Block until stop is requested (signal handler or ``shutdown`` op), then stop.

        No polling: a signal handler runs on this (the main) thread inside the wait
        and sets the event; a ``shutdown`` op's connection thread sets it too."""
        self._stop.wait()
        self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        """Clean shutdown; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        if (
            self._accept_thread is not None
            and self._accept_thread is not threading.current_thread()
        ):
            self._accept_thread.join(timeout=5)
        if self._executor_thread is not None and self._executor_thread.is_alive():
            # An op still waiting (an attach on a wedged guest) is cancelled, then the
            # teardown runs on the toolstack lane once that op has unwound.
            self.executor.submit(self._cancel_all)
            with contextlib.suppress(Exception):
                self.executor.submit(self._teardown, self._xl_lane).result()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._conn_threads)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        # Connections still waiting on an op get ExecutorStopped once it stops.
        self.executor.stop()
        if self._executor_thread is not None:
            self._executor_thread.join(timeout=5)
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout=5)
        if self._lock_fd is None:
            return  # never owned DIR: nothing in it is ours
        for p in (self.control_path, self.xenstored_path, self.pid_path, self.lock_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        os.close(self._lock_fd)  # the lock goes last: DIR is clean before another may start
        self._lock_fd = None
        if self._created_dir:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()

    def status(self) -> dict[str, Any]:
        assert self.machine is not None and self.libxl is not None
        bound = self.machine.pciback_bound()
        devices = []
        for fn in self.machine.host_functions():
            owner = lp.assigned_domid(self.machine.xs, fn.sbdf)
            where = (
                f"domain {owner}"
                if owner is not None
                else "pciback"
                if fn.sbdf in bound
                else "dom0"
            )
            devices.append(
                {
                    "bdf": str(fn.sbdf),
                    "source": fn.source,
                    "owner": where,
                    # what lspci's "Control:" line shows, and how often the function was
                    # reset (models count their resets; a dump or sysfs source cannot)
                    "command": fn.config.read(regs.PCI_COMMAND, 2),
                    "resets": len(fn.resets) if isinstance(fn, DeviceModel) else None,
                }
            )
        return {
            "pid": os.getpid(),
            "dir": str(self.run_dir),
            "xenstored": str(self.xenstored_path),
            "iommu": self.machine.hv.iommu_enabled,
            "uptime": round(time.time() - self.started_at, 3),
            "domains": len(self.libxl.domains) + 1,
            "devices": devices,
        }

    # ------------------------------------------------------------------ sockets
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._accept()
            except OSError as e:
                if e.errno in _ACCEPT_TRANSIENT and not self._stop.is_set():
                    # Out of descriptors (EMFILE): the pending client waits in the
                    # backlog; try again once some are freed. Only a closed listener
                    # ends the loop.
                    self._stop.wait(ACCEPT_BACKOFF)
                    continue
                return
            t = threading.Thread(target=self._serve, args=(conn,), name="xenpci-ctl", daemon=True)
            with self._lock:
                if self._stopped:
                    conn.close()
                    return
                self._conns.add(conn)
                self._conn_threads.add(t)
            t.start()

    def _accept(self) -> tuple[socket.socket, Any]:
        assert self._listener is not None
        return self._listener.accept()

    def _handle(self, line: bytes, lane: SteppedVcpu) -> Response:
        """Post one request line to the executor and wait for its answer (OS edge)."""
        service = self.service
        assert service is not None
        try:
            req = decode_request(line)
        except ControlProtocolError:
            # answered (with the error) on the executor, as every line is
            return self.executor.submit(lambda: service.handle_line(line), lane).result()
        if req.op in SERIAL_OPS:
            if req.op == "destroy":
                # ahead of the queue: the op that holds the domain's lock ends now
                self.executor.submit(lambda: service.cancel_waits(req), lane)
            lane = self._xl_lane
        return self.executor.submit(lambda: service.handle(req), lane).result()

    def _serve(self, conn: socket.socket) -> None:
        assert self.service is not None
        framer = LineFramer()
        with self._lock:
            self._conn_seq += 1
            lane = self.executor.lane(f"ctl-{self._conn_seq}")
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                try:
                    lines = framer.feed(data)
                except ControlProtocolError as e:
                    conn.sendall(Response.failure(None, e).encode())
                    _linger_close(conn)
                    return  # fatal framing error: drop this client only
                for line in lines:
                    resp = self._handle(line, lane)
                    conn.sendall(resp.encode())
                    if self.service.shutdown_requested:
                        self._stop.set()
        except (OSError, ExecutorStopped):
            return
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)
                self._conn_threads.discard(threading.current_thread())


def _linger_close(conn: socket.socket, budget: float = 1.0) -> None:
    """Half-close and discard what the peer still sends (for at most ``budget`` seconds),
    so our last reply is not lost to a reset caused by unread input."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(0.1)
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline and conn.recv(65536):
            pass


class ControlClient:
    """``xl``'s side: one connection, one request at a time."""

    def __init__(self, run_dir: Path, *, timeout: float = 120.0) -> None:
        self.path = Path(run_dir) / CONTROL_SOCK
        self.run_dir = Path(run_dir)
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(self.path))
        except TimeoutError:
            self._sock.close()
            raise DaemonError(
                f"the machine in {run_dir} did not accept a connection within {timeout:g} s"
            ) from None
        except OSError as e:
            self._sock.close()
            raise DaemonError(
                f"no machine running in {run_dir} ({e.strerror}); start one with "
                "`xenpci machine start`"
            ) from None
        self._framer = LineFramer()
        self._pending: list[bytes] = []
        self._next_id = 1

    def call(self, op: str, **args: Any) -> Any:
        req = Request(self._next_id, op, args)
        self._next_id += 1
        try:
            self._sock.sendall(req.encode())
            while not self._pending:
                data = self._sock.recv(65536)
                if not data:
                    raise DaemonError("the machine closed the control connection")
                self._pending += self._framer.feed(data)
        except TimeoutError:
            # The OS-level bound on one request (the toolstack's own waits are shorter).
            raise DaemonError(
                f"the machine in {self.run_dir} did not answer within {self.timeout:g} s"
            ) from None
        except OSError as e:
            raise DaemonError(f"lost the control connection: {e.strerror or e}") from None
        return decode_response(self._pending.pop(0)).unwrap()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
