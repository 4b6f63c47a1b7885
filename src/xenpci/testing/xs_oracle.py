"""Xen's real xenstored/oxenstored as an oracle, and one raw client API for them and for ours.

Starts Debian ``xen-utils-4.17``'s C ``xenstored`` or OCaml ``oxenstored`` with
no hypervisor under the LD_PRELOAD shim ``shim/xsshim.c`` (see its header for
what it fakes), introduces guest domains over ring pages the shim maps from
per-domain files, and gives tests a raw frame client: send an ``xsd_sockmsg``
header + payload, receive replies and watch events in the order the daemon
sent them. The same client API drives our daemon (:class:`OurXenstored`: the
in-process :class:`XenStore` behind :class:`XenstoredServer` for dom0 sockets,
:class:`XenstoredRings` over the model hypervisor for guests), so one request
sequence can run against both and the bytes be compared.

Wire facts come from ``xen/include/public/io/xs_wire.h`` (reused from
:mod:`xenpci.abi.xs_wire` and :mod:`xenpci.xenstore.ring`); daemon start-up
facts from ``tools/xenstore/xenstored_{core,domain,posix}.c`` and
``tools/ocaml/xenstored/*.ml`` of Xen 4.17.

Deliberate differences from a Xen host: a guest's "grant" is the file
``<dir>/ring-<domid>`` whatever gfn INTRODUCE names, and event channels are
datagrams (``<dir>/evtchn.sock`` into the daemon, ``<dir>/guest-<domid>.sock``
out). The domains the hypervisor "runs" are given when the daemon starts
(``domids``), as a host's domains exist before the toolstack introduces them;
:meth:`RealXenstored.virq_dom_exc` changes them the way a dying domain does.
Our daemon has no such list: its domains are the model hypervisor's.
Waits are on explicit events (a reply frame, an event-channel datagram, the
daemon's readiness line); a timeout only turns a hung daemon into a failure.
"""

from __future__ import annotations

import abc
import contextlib
import glob
import mmap
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final

from xenpci.abi import xs_wire as w
from xenpci.xenstore.errors import ProtocolError
from xenpci.xenstore.ring import (
    ERROR,
    REQ,
    REQ_CONS,
    REQ_PROD,
    RSP,
    RSP_CONS,
    RSP_PROD,
    RingIndexError,
    ring_read,
    ring_write,
)
from xenpci.xenstore.wire import Frame, FrameDecoder, encode

if TYPE_CHECKING:
    from xenpci.hv import Hypervisor
    from xenpci.hv.domain import Domain as HvDomain
    from xenpci.xenstore import XenStore
    from xenpci.xenstore.ring import XenstoredRings
    from xenpci.xenstore.server import XenstoredServer

#: How long a single wait may take before the daemon counts as hung (not a pacing delay).
HUNG_AFTER: Final = 30.0
#: req_id of the barrier request :meth:`RawClient.sync` sends (GET_DOMAIN_PATH 0).
SYNC_REQ_ID: Final = 0x5EC0FFEE
_KICK = struct.Struct("<II")  # the shim's event datagram: kind, value
_KICK_DOMAIN, _KICK_VIRQ = 0, 1
_SHIM_SOURCE = Path(__file__).parent / "shim" / "xsshim.c"
_XSBENCH_SOURCE = Path(__file__).parent / "clients" / "xsbench.c"

# Our quota names (CONTROL ``quota``) -> C xenstored 4.17 command-line options.
_C_QUOTA_FLAGS: Final = {
    "nodes": ["-E"],
    "node-size": ["-S"],
    "watches": ["-W"],
    "transactions": ["-t"],
    "permissions": ["-A"],
    "path-max": ["-M"],
    "transaction-nodes": ["-Q", "transaction-nodes="],
    "outstanding": ["-Q", "outstanding="],
    "memory": ["-Q", "memory="],
}
# Our quota names -> oxenstored.conf keys (those it has).
_OCAML_QUOTA_KEYS: Final = {
    "nodes": "quota-maxentity",
    "node-size": "quota-maxsize",
    "watches": "quota-maxwatch",
    "transactions": "quota-transaction",
    "path-max": "quota-path-max",
    "outstanding": "quota-maxoutstanding",
}


class OracleUnavailable(RuntimeError):
    """The real daemon cannot run here (binary, gcc or libxen-dev missing)."""


class OracleDied(RuntimeError):
    """The real daemon exited or stopped answering."""


# -- locating the tools ----------------------------------------------------------


def xen_utils_binary(name: str) -> Path | None:
    """``<root>/usr/lib/xen-*/bin/<name>`` under ``$XENPCI_XEN_UTILS`` or ``/``, newest first."""
    roots = [os.environ.get("XENPCI_XEN_UTILS", ""), ""]
    for root in roots:
        for path in sorted(glob.glob(f"{root}/usr/lib/xen-*/bin/{name}"), reverse=True):
            if os.access(path, os.X_OK):
                return Path(path)
    return None


def _project_cache() -> Path:
    # An editable install: src/xenpci/testing -> the repository's .cache (./dev setup).
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").exists():
        return repo / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xenpci"


def _compiled(source: Path, name: str, flags: list[str], env_override: str) -> Path:
    """``$<env_override>``, else ``.cache/<name>`` compiled from ``source`` if missing or stale."""
    env = os.environ.get(env_override)
    if env:
        return Path(env)
    out = _project_cache() / name
    if out.exists() and out.stat().st_mtime >= source.stat().st_mtime:
        return out
    gcc = shutil.which("gcc")
    if gcc is None:
        raise OracleUnavailable(f"gcc is missing: cannot build {name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    r = subprocess.run(
        [gcc, *flags, "-o", str(tmp), str(source), "-ldl"],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise OracleUnavailable(f"building {name} failed: {r.stderr.strip()}")
    os.replace(tmp, out)  # atomic: parallel test workers may build at once
    return out


def shim_library() -> Path:
    """The compiled shim: ``$XENPCI_XSSHIM``, else ``.cache/xsshim.so`` (built if stale)."""
    return _compiled(_SHIM_SOURCE, "xsshim.so", ["-shared", "-fPIC", "-O2"], "XENPCI_XSSHIM")


def xsbench_client() -> Path:
    """The benchmarks' C client (``clients/xsbench.c``), built into ``.cache`` if stale."""
    return _compiled(_XSBENCH_SOURCE, "xsbench", ["-O2"], "XENPCI_XSBENCH")


# -- raw clients -------------------------------------------------------------------


class RawClient(abc.ABC):
    """One connection speaking raw frames; frames come back in the daemon's order."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.closed = False
        self._dec = FrameDecoder()
        self._frames: deque[Frame] = deque()

    @abc.abstractmethod
    def _write(self, data: bytes) -> None:
        """Hand ``data`` to the daemon (all of it, blocking for room)."""

    @abc.abstractmethod
    def _read(self) -> bytes:
        """Block for the next bytes from the daemon; b"" when the connection is gone."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop the connection."""

    def send(self, data: bytes) -> None:
        """Send raw bytes (a frame, part of one, or garbage)."""
        self._write(data)

    def send_frame(self, type_: int, payload: bytes, tx_id: int = 0, req_id: int = 0) -> None:
        self._write(encode(type_, req_id, tx_id, payload))

    def recv_frame(self) -> Frame | None:
        """The next frame the daemon sent, or None once the connection is gone."""
        while not self._frames:
            if self.closed:
                return None
            data = self._read()
            if not data:
                self.closed = True
                return None
            try:
                self._frames.extend(self._dec.feed(data))
            except ProtocolError:
                self.closed = True
                return None
        return self._frames.popleft()

    def reply(self) -> list[Frame]:
        """Frames up to and including the next one that is not a watch event."""
        out: list[Frame] = []
        while True:
            f = self.recv_frame()
            if f is None:
                return out
            out.append(f)
            if f.type != w.XS_WATCH_EVENT:
                return out

    def request(self, type_: int, payload: bytes, tx_id: int = 0, req_id: int = 0) -> list[Frame]:
        """Send one frame; return what came back up to and including its reply."""
        self.send_frame(type_, payload, tx_id, req_id)
        return self.reply()

    def sync(self) -> list[Frame]:
        """Everything the daemon queued for us so far (a GET_DOMAIN_PATH barrier).

        Both daemons answer a connection's requests in order and queue its
        events in order, so the frames before the barrier's reply are exactly
        what was pending. The barrier reply itself is dropped.
        """
        if self.closed:
            return []
        self.send_frame(w.XS_GET_DOMAIN_PATH, b"0\0", 0, SYNC_REQ_ID)
        out: list[Frame] = []
        while True:
            f = self.recv_frame()
            if f is None:
                return out
            if f.req_id == SYNC_REQ_ID and f.type != w.XS_WATCH_EVENT:
                return out
            out.append(f)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SocketClient(RawClient):
    """A dom0 client on the daemon's Unix socket (privileged, like xenstore-utils)."""

    def __init__(self, path: str, label: str = "socket") -> None:
        super().__init__(label)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(HUNG_AFTER)
        self.sock.connect(path)

    def _write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True

    def _read(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""
        except TimeoutError:
            raise OracleDied(f"{self.label}: no reply within {HUNG_AFTER}s") from None

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class _RingClient(RawClient):
    """The guest end of a ``xenstore_domain_interface`` page (xenbus_comms)."""

    buf: memoryview

    @abc.abstractmethod
    def _kick(self) -> None:
        """Notify the daemon through the event channel."""

    @abc.abstractmethod
    def _wait(self) -> None:
        """Block until the daemon notifies us (or raise OracleDied)."""

    @property
    def ring_error(self) -> int:
        """The page's ``error`` field (XENSTORE_ERROR_*) as the daemon set it."""
        return int.from_bytes(self.buf[ERROR : ERROR + 4], "little")

    def _write(self, data: bytes) -> None:
        sent = 0
        while sent < len(data):
            if self.ring_error:
                self.closed = True
                return
            try:
                n = ring_write(self.buf, REQ, REQ_PROD, REQ_CONS, data[sent:])
            except RingIndexError:
                self.closed = True
                return
            sent += n
            self._kick()
            if sent < len(data):
                self._wait()  # the daemon notifies after consuming requests

    def _read(self) -> bytes:
        while True:
            try:
                data = ring_read(self.buf, RSP, RSP_PROD, RSP_CONS)
            except RingIndexError:
                return b""
            if data:
                self._kick()  # room on the response ring: the daemon may have more
                return data
            if self.ring_error:
                return b""
            self._wait()


class ShimRingClient(_RingClient):
    """A guest of the real daemon: the shim's ring file and event datagrams."""

    def __init__(self, shim_dir: Path, domid: int) -> None:
        super().__init__(f"d{domid}-ring")
        self.domid = domid
        self._evtchn = str(shim_dir / "evtchn.sock")
        path = shim_dir / f"ring-{domid}"
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), 4096)
        self.buf = memoryview(self._map)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock_path = str(shim_dir / f"guest-{domid}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._sock_path)
        self._sock.bind(self._sock_path)
        self._sock.settimeout(HUNG_AFTER)

    def _kick(self) -> None:
        # A full datagram queue (max_dgram_qlen) drops this kick, and that is an
        # event channel's coalescing, not a lost event: the queue is full only
        # while evtchn.sock is readable, so the daemon's poll() returns anyway.
        # C xenstored 4.17 then scans every connection (handle_event ignores
        # which port fired, and initialize_fds polls with timeout 0 while a
        # domain can read, or can write with output queued): no ring waits for
        # its own kick.
        with contextlib.suppress(BlockingIOError):
            self._sock.sendto(_KICK.pack(_KICK_DOMAIN, self.domid), self._evtchn)

    def _wait(self) -> None:
        try:
            self._sock.recv(64)
        except TimeoutError:
            raise OracleDied(f"{self.label}: no event within {HUNG_AFTER}s") from None
        # Drain notifications that piled up: the ring is re-read after this anyway.
        self._sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while self._sock.recv(64):
                pass
        self._sock.settimeout(HUNG_AFTER)

    def close(self) -> None:
        if self.closed and self._sock.fileno() < 0:
            return
        self.closed = True
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._sock_path)
        self.buf.release()
        with contextlib.suppress(BufferError):
            self._map.close()


class HvRingClient(_RingClient):
    """A guest of our daemon: a page granted to dom0 and an event channel in the model hv."""

    def __init__(self, guest: HvDomain) -> None:
        super().__init__(f"d{guest.domid}-ring")
        self.guest = guest
        hc = guest.hypercalls
        self.hc = hc
        self.gfn = hc.alloc_page()
        self.buf = hc.page(self.gfn)
        self.buf[: ERROR + 4] = bytes(ERROR + 4)
        self.gref = hc.gnttab_grant_foreign_access(0, self.gfn, False)
        self.port = hc.evtchn_alloc_unbound(0)
        self._cond = threading.Condition()
        self._events = 0
        hc.evtchn_set_handler(self.port, self._upcall)

    def _upcall(self, _port: int) -> None:
        with self._cond:  # on the guest's vCPU thread: just record the event
            self._events += 1
            self._cond.notify_all()

    def _kick(self) -> None:
        try:
            self.hc.evtchn_send(self.port)
        except Exception:
            # xenstored closed its end (RELEASE): like a real guest, nothing to notify.
            self.closed = True

    def _wait(self) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._events > 0, timeout=HUNG_AFTER):
                raise OracleDied(f"{self.label}: no event within {HUNG_AFTER}s")
            self._events = 0

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self.hc.evtchn_set_handler(self.port, None)


# -- daemons -------------------------------------------------------------------------


@dataclass
class GuestSlot:
    """A guest ready to be introduced: send ``payload`` as INTRODUCE, then use ``client``."""

    domid: int
    payload: bytes
    client: RawClient


class XsDaemon(abc.ABC):
    """A running XenStore daemon that tests drive through raw clients."""

    kind: str

    @abc.abstractmethod
    def connect(self, label: str = "dom0") -> RawClient:
        """A new privileged dom0 connection over the Unix socket."""

    @abc.abstractmethod
    def prepare_guest(self, domid: int) -> GuestSlot:
        """Ring page + event channel for ``domid``, and the INTRODUCE payload naming them."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the daemon (idempotent)."""

    @property
    def pid(self) -> int:
        """The process whose CPU time and memory are the daemon's."""
        return os.getpid()

    def settle(self, via: RawClient) -> None:
        """Return once everything sent to the daemon so far (on any connection) is processed.

        Two barrier round trips on ``via``: the daemon answers the second in a
        main-loop pass after the one that answered the first, and that first
        pass already saw all input sent before it, rings included.
        """
        via.sync()
        via.sync()

    def introduce(self, via: RawClient, domid: int) -> tuple[list[Frame], RawClient]:
        """INTRODUCE ``domid`` on dom0 connection ``via``; the reply frames and the guest."""
        slot = self.prepare_guest(domid)
        return via.request(w.XS_INTRODUCE, slot.payload), slot.client

    def __enter__(self) -> XsDaemon:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RealXenstored(XsDaemon):
    """C ``xenstored`` (kind "c") or ``oxenstored`` (kind "ocaml") under the shim."""

    def __init__(
        self,
        kind: str = "c",
        *,
        domids: Iterable[int] = (0, 5, 6, 7, 8),
        quotas: Mapping[str, int] | None = None,
        extra_args: Iterable[str] = (),
        trace: bool = False,
    ) -> None:
        """``trace``: C's -T trace of every request into ``<dir>/log/trace`` (slow)."""
        if kind not in ("c", "ocaml"):
            raise ValueError(f"kind must be 'c' or 'ocaml', not {kind!r}")
        self.kind = kind
        binary = xen_utils_binary("xenstored" if kind == "c" else "oxenstored")
        if binary is None:
            raise OracleUnavailable(
                "xen-utils-4.17 is not unpacked (./dev setup; set XENPCI_XEN_UTILS)"
            )
        shim = shim_library()
        # Short and private: sun_path holds 108 bytes; parallel workers each get one.
        self.dir = Path(tempfile.mkdtemp(prefix="xso", dir="/tmp"))
        self._guests: list[RawClient] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._trace = trace
        try:
            self._start(binary, shim, list(domids), dict(quotas or {}), list(extra_args))
        except BaseException:
            self.close()
            raise

    def _start(
        self,
        binary: Path,
        shim: Path,
        domids: list[int],
        quotas: dict[str, int],
        extra: list[str],
    ) -> None:
        d = self.dir
        for sub in ("proc", "run", "lib", "log", "etc"):
            (d / sub).mkdir()
        (d / "domains").write_text("".join(f"{i}\n" for i in sorted(set(domids) | {0})))
        # dom0's own ring (xsd_kva) and its event channel (xsd_port): oxenstored
        # parses the port with int_of_string, so no trailing newline.
        (d / "proc" / "xsd_kva").write_bytes(bytes(4096))
        (d / "proc" / "xsd_port").write_text("1")
        self.socket_path = str(d / "run" / "socket")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LD_PRELOAD": str(shim),
            "XSSHIM_DIR": str(d),
            "XENSTORED_PATH": self.socket_path,
            "XENSTORED_RUNDIR": str(d / "run"),
            "XENSTORED_ROOTDIR": str(d / "lib"),
        }
        stderr = open(d / "stderr", "wb")  # noqa: SIM115 - the child keeps it
        if self.kind == "c":
            env["XSSHIM_REDIRECT"] = f"/proc/xen={d}/proc"
            args = [str(binary), "-N", "-P"]
            if self._trace:
                args += ["-T", str(d / "log" / "trace")]
            unknown = sorted(set(quotas) - set(_C_QUOTA_FLAGS))
            if unknown:
                raise ValueError(f"C xenstored has no quota {', '.join(unknown)}")
            for name, value in quotas.items():
                flag = _C_QUOTA_FLAGS[name]
                args += [flag[0], f"{flag[1]}{value}"] if len(flag) == 2 else [flag[0], str(value)]
        else:
            env["XSSHIM_REDIRECT"] = ";".join(
                [
                    f"/proc/xen={d}/proc",
                    f"/var/run/xenstored={d}/run",
                    f"/run/xenstored={d}/run",
                    f"/var/run={d}/run",
                    f"/run={d}/run",
                    f"/var/log/xen={d}/log",
                    f"/var/lib/xenstored={d}/lib",
                    f"/etc/xen={d}/etc",
                ]
            )
            conf = [
                f"pid-file = {d}/run/xenstored.pid",
                "test-eagain = false",
                "persistent = false",
                f"xenstored-log-file = {d}/log/xenstored.log",
                f"access-log-file = {d}/log/access.log",
                f"xenstored-kva = {d}/proc/xsd_kva",
                f"xenstored-port = {d}/proc/xsd_port",
                "ring-scan-interval = -1",
            ]
            unknown = sorted(set(quotas) - set(_OCAML_QUOTA_KEYS))
            if unknown:
                raise ValueError(f"oxenstored has no quota {', '.join(unknown)}")
            conf += [f"{_OCAML_QUOTA_KEYS[k]} = {v}" for k, v in quotas.items()]
            (d / "etc" / "oxenstored.conf").write_text("\n".join(conf) + "\n")
            args = [str(binary), "--no-fork", "--config-file", str(d / "etc" / "oxenstored.conf")]
        args += extra
        self._proc = subprocess.Popen(
            args,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        stderr.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        # Explicit readiness on stdout, printed once the socket listens: C's -P
        # prints its pid after dom0 is set up; oxenstored --no-fork prints its
        # banner right after creating the socket (connections then wait in the
        # listen backlog until its main loop runs).
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        line = proc.stdout.readline()
        ok = line.strip().isdigit() if self.kind == "c" else line.startswith(b"Xen Storage")
        if not ok:
            proc.wait()
            raise OracleDied(
                f"{self.kind} xenstored did not start (exit {proc.returncode}): "
                f"{self.stderr_text()}"
            )

    def stderr_text(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "stderr").read_text(errors="replace").strip()[-2000:]
        return ""

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def connect(self, label: str = "dom0") -> RawClient:
        return SocketClient(self.socket_path, label)

    def prepare_guest(self, domid: int) -> GuestSlot:
        path = self.dir / f"ring-{domid}"
        path.write_bytes(bytes(4096))
        client = ShimRingClient(self.dir, domid)
        self._guests.append(client)
        # C ignores the gfn; the port must be > 0.
        return GuestSlot(domid, f"{domid}\0{0xFEFFF}\0{domid + 100}\0".encode(), client)

    def virq_dom_exc(self, domids: Mapping[int, str]) -> None:
        """Rewrite the running set ({domid: "" | "dying" | "shutdown" | "crashed"}) and raise
        VIRQ_DOM_EXC, as the hypervisor does when a domain dies or shuts down."""
        (self.dir / "domains").write_text("".join(f"{i} {s}\n" for i, s in domids.items()))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(_KICK.pack(_KICK_VIRQ, 0), str(self.dir / "evtchn.sock"))

    def close(self) -> None:
        for g in self._guests:
            with contextlib.suppress(Exception):
                g.close()
        self._guests.clear()
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=HUNG_AFTER)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the test process dies (no leaked daemons).

    The signal follows the thread that forked: daemons are started from the
    test's own thread, which lives as long as the daemon is used.
    """
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)


class OurXenstored(XsDaemon):
    """Our daemon in process: the socket server for dom0, ring service over the model hv.

    The store starts like C's ``setup_structure()`` (``/tool/xenstored`` only):
    no ``xen-init-dom0`` nodes, so both daemons start from the same tree.
    """

    kind = "ours"

    def __init__(
        self,
        *,
        domids: Iterable[int] = (0, 5, 6, 7, 8),
        quotas: Mapping[str, int] | None = None,
    ) -> None:
        from xenpci.hv import Hypervisor
        from xenpci.xenstore import XenStore
        from xenpci.xenstore.ring import XenstoredRings
        from xenpci.xenstore.server import XenstoredServer

        self.dir = Path(tempfile.mkdtemp(prefix="xso", dir="/tmp"))
        self.socket_path = str(self.dir / "socket")
        self._domids = set(domids)
        # What the shim's xc_domain_getinfo reports to C: these domids run.
        self.store: XenStore = XenStore(
            dom0_nodes=False, quotas=dict(quotas or {}), domain_exists=self._domids.__contains__
        )
        self.hv: Hypervisor = Hypervisor(iommu=False)
        self.rings: XenstoredRings = XenstoredRings(self.store, self.hv.dom0)
        self.server: XenstoredServer = XenstoredServer(self.store, self.socket_path)
        self.server.start()
        self._guests: list[RawClient] = []

    def connect(self, label: str = "dom0") -> RawClient:
        return SocketClient(self.socket_path, label)

    def prepare_guest(self, domid: int) -> GuestSlot:
        try:
            dom = self.hv.domain(domid)
        except Exception:
            dom = self.hv.create_domain(f"guest{domid}", 1024, domid)
        client = HvRingClient(dom)
        self._guests.append(client)
        return GuestSlot(domid, f"{domid}\0{client.gref}\0{client.port}\0".encode(), client)

    def settle(self, via: RawClient) -> None:
        # Rings are served on dom0's vCPU: wait until its queue (kicks already
        # posted by the guests' sends) has drained, then the socket thread.
        self.hv.run_until_idle()
        via.sync()

    def close(self) -> None:
        for g in self._guests:
            with contextlib.suppress(Exception):
                g.close()
        self._guests.clear()
        self.server.stop()
        self.hv.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_daemon(
    kind: str,
    *,
    domids: Iterable[int] = (0, 5, 6, 7, 8),
    quotas: Mapping[str, int] | None = None,
) -> XsDaemon:
    """``"c"``/``"ocaml"``: the real daemon under the shim; ``"ours"``: ours in process."""
    if kind == "ours":
        return OurXenstored(domids=domids, quotas=quotas)
    return RealXenstored(kind, domids=domids, quotas=quotas)
