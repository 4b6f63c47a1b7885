"""A machine that never wedges (issue 10 §3): one machine per directory, stale pid
files, fd exhaustion on the control socket, one-line errors, boot-time seizing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXPECTED_TIMEOUT, OS_EDGE_TIMEOUT, TOOL_TIMEOUT
from xenpci.cli.xl import error_line
from xenpci.pci.address import SBDF
from xenpci.toolstack.daemon import (
    LOCK_FILE,
    PID_FILE,
    ControlClient,
    DaemonError,
    MachineDaemon,
    lock_holders,
    read_pid,
)
from xenpci.toolstack.host import HidePattern, HostConfigError, HostDescription, parse_host

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    d = Path(f"/tmp/xenpci-md-{os.getpid()}-{tmp_path.name[-10:]}")
    yield d
    pid = read_pid(d)
    if pid is not None and pid != os.getpid():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
    shutil.rmtree(d, ignore_errors=True)


def xenpci(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "xenpci", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_starts_one_wins_nothing_of_it_deleted(run_dir: Path) -> None:
    n = 4
    procs = [xenpci("machine", "start", "--dir", str(run_dir)) for _ in range(n)]
    winner: subprocess.Popen[str] | None = None
    losers: list[tuple[int, str]] = []
    try:
        # Each start either fails at once (the lock is taken before anything else) or
        # says it runs; its first stderr line tells which, with no time guessed.
        for p in procs:
            assert p.stderr is not None
            first = p.stderr.readline()
            if first.startswith("machine: running"):
                assert winner is None, "two machines run in one directory"
                winner = p
            else:
                losers.append((p.wait(timeout=TOOL_TIMEOUT), first + p.stderr.read()))
        assert winner is not None, losers
        assert len(losers) == n - 1
        for code, err in losers:
            assert code == 1
            # "(pid N)" when the winner had written its pid file by then
            assert err.startswith(f"xenpci machine: a machine is already running in {run_dir}")
            assert err.count("\n") == 1
        # the winner's files are all there and it answers
        for name in ("control.sock", "xenstored.sock", PID_FILE, LOCK_FILE):
            assert (run_dir / name).exists(), name
        assert read_pid(run_dir) == winner.pid
        with ControlClient(run_dir, timeout=OS_EDGE_TIMEOUT) as c:
            assert c.call("status")["pid"] == winner.pid
        stop = xenpci("machine", "stop", "--dir", str(run_dir))
        assert stop.wait(timeout=TOOL_TIMEOUT) == 0
        assert winner.wait(timeout=TOOL_TIMEOUT) == 0
        assert not run_dir.exists()  # it created the directory: it removes it, emptied
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_pid_file_of_an_unrelated_live_process_is_stale(run_dir: Path) -> None:
    run_dir.mkdir()
    # a live process that is not a machine: this test itself
    (run_dir / PID_FILE).write_text(f"{os.getpid()}\n")
    assert read_pid(run_dir) is None
    (run_dir / LOCK_FILE).touch()
    assert lock_holders(run_dir / LOCK_FILE) == set()
    assert read_pid(run_dir) is None
    d = MachineDaemon(run_dir, HostDescription(sources=()))
    d.start()  # not refused: the pid file was stale
    try:
        assert read_pid(run_dir) == os.getpid()
        assert lock_holders(run_dir / LOCK_FILE) == {os.getpid()}
        # a second machine in the same process and directory is refused by the lock
        with pytest.raises(DaemonError, match="already running"):
            MachineDaemon(run_dir, HostDescription(sources=())).start()
        assert (run_dir / "control.sock").exists()
    finally:
        d.stop()
    assert not (run_dir / PID_FILE).exists() and not (run_dir / LOCK_FILE).exists()
    assert run_dir.exists()  # not ours to remove: it existed before


def test_accept_emfile_does_not_end_the_loop(run_dir: Path) -> None:
    d = MachineDaemon(run_dir, HostDescription(sources=()))
    failures = [errno.EMFILE, errno.ENFILE]
    seen = threading.Event()
    real_accept = d._accept

    def accept() -> tuple[socket.socket, object]:
        if failures:
            # what accept(2) says when the process is out of descriptors; the client
            # waiting in the backlog stays there
            code = failures.pop(0)
            raise OSError(code, os.strerror(code))
        seen.set()
        return real_accept()

    d._accept = accept  # type: ignore[method-assign]
    d.start()
    try:
        with ControlClient(run_dir, timeout=OS_EDGE_TIMEOUT) as c:
            assert c.call("status")["domains"] == 1
        assert seen.is_set() and not failures
        with ControlClient(run_dir, timeout=OS_EDGE_TIMEOUT) as c:  # and the loop still accepts
            assert c.call("list")[0]["name"] == "Domain-0"
    finally:
        d.stop()


def test_dir_that_is_a_file_or_unusable_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("mine\n")
    for bad, why in ((f, "it is not a directory"), (Path("/proc/xenpci-none/m"), "No such")):
        p = xenpci("machine", "start", "--dir", str(bad))
        _out, err = p.communicate(timeout=TOOL_TIMEOUT)
        assert p.returncode == 1
        assert err.startswith(f"xenpci machine: cannot use {bad} as the machine directory: {why}")
        assert err.count("\n") == 1 and "Traceback" not in err
    assert f.read_text() == "mine\n"  # untouched


def test_control_socket_that_never_answers_times_out_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(path))
    mute.listen(1)  # connect succeeds through the backlog; nobody ever reads or answers
    try:
        # the timeout is the OS edge (a socket timeout), one the test expects to run out
        with (
            ControlClient(tmp_path, timeout=EXPECTED_TIMEOUT) as c,
            pytest.raises(DaemonError) as e,
        ):
            c.call("list")
        line, code = error_line(e.value)
        want = f"xl: the machine in {tmp_path} did not answer within {EXPECTED_TIMEOUT:g} s"
        assert (line, code) == (want, 1)
    finally:
        mute.close()


# -- boot-time seizing (xen-pciback.hide=) ------------------------------------------------


def test_hide_grammar() -> None:
    desc = parse_host(
        'cmdline = "quiet xen-pciback.hide=(0000:03:00.0)(4:0.0)(06:00.*)(0001:02:*.*) ro"'
    )
    assert desc.hide == (
        HidePattern(0, 3, 0, 0),
        HidePattern(0, 4, 0, 0),
        HidePattern(0, 6, 0, None),
        HidePattern(1, 2, None, None),
    )
    assert desc.hide[2].matches(SBDF(0, 6, 0, 1)) and not desc.hide[2].matches(SBDF(0, 6, 1, 0))
    assert parse_host('cmdline = "pciback.hide=(03:00.0)"').hide == (HidePattern(0, 3, 0, 0),)
    assert parse_host('cmdline = "console=hvc0"').hide == ()
    for bad in ("(03:00.0", "03:00.0", "(03:00.0)x", "(03:20.0)", "(03:00.8)", "(zz:00.0)", "()"):
        with pytest.raises(HostConfigError, match="cmdline"):
            parse_host(f'cmdline = "xen-pciback.hide={bad}"')
    with pytest.raises(HostConfigError, match="must be a string"):
        parse_host("cmdline = 3")


def test_hidden_devices_are_assignable_across_stop_and_start(run_dir: Path) -> None:
    desc = parse_host('cmdline = "xen-pciback.hide=(03:00.0)(06:00.*)"')
    for _ in range(2):  # the pool survives machine stop/start, as a reboot on Xen
        d = MachineDaemon(run_dir, desc)
        d.start()
        try:
            with ControlClient(run_dir, timeout=OS_EDGE_TIMEOUT) as c:
                got = [x["bdf"] for x in c.call("pci-assignable-list")]
            assert got == ["0000:03:00.0", "0000:06:00.0", "0000:06:00.1"]
            assert d.machine is not None
            assert {str(s) for s in d.machine.pciback_bound()} == set(got)
        finally:
            d.stop()
