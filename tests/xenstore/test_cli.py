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
