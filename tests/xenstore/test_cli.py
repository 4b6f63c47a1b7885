"""``xenpci xenstored`` in the foreground: serves xenstore-utils, stops on SIGTERM/SIGINT.

Readiness is the daemon's own ``READY=1`` on ``$NOTIFY_SOCKET`` (sd_notify, as C
xenstored), held to libsystemd's through ``systemd-notify``: a test binds the
datagram socket and blocks on it instead of polling for the daemon's sockets.
"""

from __future__ import annotations

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
from tests.interop import require_executable
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
    return [
        f"{d}/notify",  # a path
        f"@xenpci-notify-{os.getpid()}-{Path(d).name}",  # Linux abstract namespace
        f"{d}/nobody",  # nobody bound there: ENOENT
        f"@xenpci-nobody-{os.getpid()}-{Path(d).name}",  # ECONNREFUSED
        "relative/notify",  # not an address: EINVAL
        "",  # set but empty: EINVAL
    ]


def test_sd_notify_sends_what_libsystemd_sends(
    notify_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same NOTIFY_SOCKET values to ``systemd-notify --ready`` (libsystemd's sd_notify)
    and to ours: the same datagrams arrive, and each says it sent exactly when it did."""
    tool = require_executable("systemd-notify")
    addresses = _addresses(notify_dir)
    listeners = [_listener(a) for a in addresses[:2]]
    seen = []
    try:
        for address in addresses:
            env = {**os.environ, "NOTIFY_SOCKET": address}
            r = subprocess.run(
                [tool, "--ready", "--no-block"], env=env, capture_output=True, timeout=TOOL_TIMEOUT
            )
            theirs = (r.returncode == 0, [_queued(s) for s in listeners])
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            ours = (sd_notify("READY=1"), [_queued(s) for s in listeners])
            assert ours == theirs, address
            assert "NOTIFY_SOCKET" not in os.environ  # sd_notify(1, ...) unsets it
            seen.append(ours)
    finally:
        for s in listeners:
            s.close()
    # What both did: the two bound addresses got READY=1, the others nothing.
    ready = [b"READY=1"]
    assert seen == [(True, [ready, []]), (True, [[], ready])] + [(False, [[], []])] * 4


def test_sd_notify_without_notify_socket_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False


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
