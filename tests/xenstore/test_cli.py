"""``xenpci xenstored`` in the foreground: serves xenstore-utils, stops on SIGTERM/SIGINT.

Readiness is the daemon's own ``READY=1`` on ``$NOTIFY_SOCKET`` (sd_notify, as C
xenstored), held to libsystemd's ``sd_notify`` itself: a test binds the datagram
socket and blocks on it instead of polling for the daemon's sockets.
"""

from __future__ import annotations

import ctypes.util
import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import OS_EDGE_TIMEOUT, TOOL_TIMEOUT
from tests.interop import require_executable, require_file
from xenpci.cli.xenstored import sd_notify

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


@pytest.fixture
def notify_dir() -> Iterator[str]:
    # Short directory: sun_path is 108 bytes.
    with tempfile.TemporaryDirectory(prefix="xsn", dir="/tmp") as d:
        yield d


def _listener(address: str) -> socket.socket:
    """A service manager's end: a datagram socket bound where NOTIFY_SOCKET says."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + address[1:] if address.startswith("@") else address)
    return s


def _queued(s: socket.socket) -> list[bytes]:
    """Every datagram already queued on ``s`` (a Unix datagram is queued by sendto itself)."""
    got = []
    while True:
        try:
            got.append(s.recv(4096, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return got


def _wait_ready(listener: socket.socket, proc: subprocess.Popen[bytes]) -> None:
    listener.settimeout(OS_EDGE_TIMEOUT)  # only turns a daemon that never says so into a failure
    try:
        msg = listener.recv(4096)
    except TimeoutError:
        proc.kill()
        raise AssertionError(f"no READY=1 from the daemon: {proc.communicate()}") from None
    finally:
        listener.settimeout(None)  # blocking again: _queued's MSG_DONTWAIT answers at once
    assert msg == b"READY=1"


def _addresses(d: str) -> list[str]:
    tag = f"{os.getpid()}-{Path(d).name}"
    return [
        f"{d}/notify",  # a path
        f"@xenpci-notify-{tag}",  # Linux abstract namespace
        f"{d}/nobody",  # nobody bound there: ENOENT
        f"@xenpci-nobody-{tag}",  # ECONNREFUSED
        "relative/notify",  # not an address: EINVAL
        "",  # set but empty
        "@",  # an empty abstract name
        "/" + "n" * 106,  # the longest path sun_path holds: tried, ENOENT
        "/" + "n" * 107,  # one byte longer
        "@" + "n" * 106,  # the longest abstract name: tried, ECONNREFUSED
        "@" + "n" * 107,  # one byte longer
    ]


#: C xenstored's call, made by libsystemd in a child process: its result and
#: whether NOTIFY_SOCKET is still set afterwards.
_LIBSYSTEMD_NOTIFY = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.sd_notify.argtypes = [ctypes.c_int, ctypes.c_char_p]
libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p
print(lib.sd_notify(1, b"READY=1"), libc.getenv(b"NOTIFY_SOCKET") is not None)
"""


def test_sd_notify_does_what_libsystemd_does(
    notify_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same NOTIFY_SOCKET values to libsystemd's ``sd_notify(1, "READY=1")`` (C
    xenstored's call) and to ours: the same datagrams arrive at the same places, the
    results are equal and neither leaves NOTIFY_SOCKET set."""
    lib = ctypes.util.find_library("systemd")  # a soname the dynamic loader finds
    if lib is None:
        require_file("libsystemd.so.0")  # skip, or fail in CI
        raise AssertionError("unreachable")
    addresses = _addresses(notify_dir)
    listeners = [_listener(a) for a in addresses[:2]]
    seen = []
    try:
        for address in [None, *addresses]:
            env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
            if address is not None:
                env["NOTIFY_SOCKET"] = address
            r = subprocess.run(
                [sys.executable, "-c", _LIBSYSTEMD_NOTIFY, lib],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=TOOL_TIMEOUT,
            )
            result, still_set = r.stdout.split()
            theirs = (int(result), still_set == "True", [_queued(s) for s in listeners])
            if address is None:
                monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
            else:
                monkeypatch.setenv("NOTIFY_SOCKET", address)
            ours = (
                sd_notify("READY=1"),
                "NOTIFY_SOCKET" in os.environ,
                [_queued(s) for s in listeners],
            )
            assert ours == theirs, address
            seen.append(ours)
    finally:
        for s in listeners:
            s.close()
    # What both did: the two bound addresses got READY=1 (1), nothing else was sent.
    ready = [b"READY=1"]
    assert seen[:3] == [(0, False, [[], []]), (1, False, [ready, []]), (1, False, [[], ready])]
    assert [result for result, _, _ in seen[3:]] == [
        -errno.ENOENT,
        -errno.ECONNREFUSED,
        -errno.EINVAL,
        -errno.EINVAL,
        -errno.EINVAL,
        -errno.ENOENT,
        -errno.ENAMETOOLONG,
        -errno.ECONNREFUSED,
        -errno.EINVAL,
    ]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_foreground_daemon_serves_and_stops(sig: signal.Signals) -> None:
    write = require_executable("xenstore-write")
    read = require_executable("xenstore-read")
    with tempfile.TemporaryDirectory(prefix="xsc", dir="/tmp") as d:
        sock, ro, dom = Path(d, "s"), Path(d, "ro"), Path(d, "d3")
        listener = _listener(f"{d}/notify")
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "xenpci", "xenstored", "--socket", str(sock)),
                *("--ro-socket", str(ro), "--domain-socket", f"3:{dom}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "NOTIFY_SOCKET": f"{d}/notify"},
        )
        try:
            _wait_ready(listener, proc)  # C xenstored's order: READY=1 once all are bound
            assert sock.is_socket() and ro.is_socket() and dom.is_socket()
            env = {**os.environ, "XENSTORED_PATH": str(sock)}
            assert subprocess.run([write, "/x", "1"], env=env).returncode == 0
            out = subprocess.run([read, "/x"], env=env, capture_output=True, text=True)
            assert out.stdout == "1\n"
            env_ro = {**os.environ, "XENSTORED_PATH": str(ro)}
            assert subprocess.run([write, "/x", "2"], env=env_ro).returncode == 1
            env_d = {**os.environ, "XENSTORED_PATH": str(dom)}
            assert subprocess.run([read, "/x"], env=env_d, capture_output=True).returncode == 1
            proc.send_signal(sig)
            assert proc.wait(timeout=OS_EDGE_TIMEOUT) == 0
            assert not sock.exists() and not ro.exists() and not dom.exists()
            assert _queued(listener) == []  # READY=1 once, nothing else
        finally:
            listener.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_bad_domain_socket_spec_is_rejected() -> None:
    r = subprocess.run(
        [
            *(sys.executable, "-m", "xenpci", "xenstored", "--socket", "/tmp/never.sock"),
            *("--domain-socket", "zero"),
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert r.returncode == 2 and "DOMID:PATH" in r.stderr


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("/nonexistent-dir/xs/socket", "No such file or directory"),
        ("/tmp/" + "s" * 120, "longer than a Unix socket path allows (107 bytes)"),
    ],
)
def test_socket_that_cannot_be_made_is_a_one_line_error(where: str, reason: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "xenpci", "xenstored", "--socket", where],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    # C xenstored: barf_perror on a failed bind, exit status 1.
    assert r.returncode == 1
    assert r.stderr == f"xenstored: cannot listen on {where}: {reason}\n"
    assert r.stdout == ""
    assert not os.path.exists(where)


def test_socket_failing_after_the_first_leaves_nothing_bound() -> None:
    with tempfile.TemporaryDirectory(prefix="xsc", dir="/tmp") as d:
        sock = Path(d, "s")
        r = subprocess.run(
            [
                *(sys.executable, "-m", "xenpci", "xenstored", "--socket", str(sock)),
                *("--ro-socket", f"{d}/missing/ro"),
            ],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
        )
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert "missing/ro" in r.stderr
        assert not sock.exists()  # the socket bound first was removed again


def test_control_dir_that_is_not_a_directory_is_a_one_line_error() -> None:
    with tempfile.NamedTemporaryFile() as f:
        r = subprocess.run(
            [
                *(sys.executable, "-m", "xenpci", "xenstored", "--socket", "/tmp/never.sock"),
                *("--control-dir", f.name),
            ],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
        )
    assert r.returncode == 1
    assert r.stderr == f"xenstored: --control-dir {f.name}: not a directory\n"


def test_collector_tuning_is_the_daemon_process_s_alone() -> None:
    # Importing the command leaves a library user's collector as it was; the
    # daemon's start-up freezes what exists and raises the gen-0 threshold.
    code = (
        "import gc; before = gc.get_threshold()\n"
        "from xenpci.cli import xenstored as x\n"
        "assert gc.get_threshold() == before and gc.get_freeze_count() == 0\n"
        "x._tune_gc()\n"
        "print(gc.get_threshold()[0], x.GC_GEN0, gc.get_freeze_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    threshold, wanted, frozen = map(int, out.stdout.split())
    assert threshold == wanted > 700  # CPython's default gen-0 threshold is 700
    assert frozen > 1000  # the interpreter's and the modules' objects
