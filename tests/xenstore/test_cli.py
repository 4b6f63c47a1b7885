"""``xenpci xenstored`` in the foreground: serves xenstore-utils, stops on SIGTERM/SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.interop import require_executable

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "daemon did not bind its socket"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_foreground_daemon_serves_and_stops(sig: signal.Signals) -> None:
    write = require_executable("xenstore-write")
    read = require_executable("xenstore-read")
    with tempfile.TemporaryDirectory(prefix="xsc", dir="/tmp") as d:
        sock, ro, dom = Path(d, "s"), Path(d, "ro"), Path(d, "d3")
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "xenpci", "xenstored", "--socket", str(sock)),
                *("--ro-socket", str(ro), "--domain-socket", f"3:{dom}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            for p in (sock, ro, dom):
                _wait_for(p, proc)
            env = {**os.environ, "XENSTORED_PATH": str(sock)}
            assert subprocess.run([write, "/x", "1"], env=env).returncode == 0
            out = subprocess.run([read, "/x"], env=env, capture_output=True, text=True)
            assert out.stdout == "1\n"
            env_ro = {**os.environ, "XENSTORED_PATH": str(ro)}
            assert subprocess.run([write, "/x", "2"], env=env_ro).returncode == 1
            env_d = {**os.environ, "XENSTORED_PATH": str(dom)}
            assert subprocess.run([read, "/x"], env=env_d, capture_output=True).returncode == 1
            proc.send_signal(sig)
            assert proc.wait(timeout=15) == 0
            assert not sock.exists() and not ro.exists() and not dom.exists()
        finally:
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
        timeout=30,
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
        timeout=30,
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
            timeout=30,
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
            timeout=30,
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
