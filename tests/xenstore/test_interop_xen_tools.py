"""Xen's own xenstore tools (Debian ``xen-utils-4.17``) against our daemon.

Debian's ``/usr/bin/xenstore-control`` is a symlink to ``xen-utils-wrapper``,
which is missing without ``xen-utils-common``; the real binary, and Xen's own
``test-xenstore`` (``tools/tests/xenstore``), ship in ``xen-utils-4.17`` under
``/usr/lib/xen-<version>/bin``. Both are plain libxenstore clients, so they
honour ``XENSTORED_PATH`` like xenstore-utils do.
"""

from __future__ import annotations

import glob
import os
import subprocess

import pytest

from tests.interop import require_executable

from .conftest import Daemon

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]


def require_xen_tool(name: str) -> str:
    """The versioned Debian path first, then ``PATH`` (skip/fail as interop.py says).

    ``./dev`` unpacks xen-utils-4.17 under ``$XENPCI_XEN_UTILS`` (no maintainer
    scripts run); an installed package is found under ``/usr/lib`` as usual.
    """
    roots = [os.environ.get("XENPCI_XEN_UTILS", ""), ""]
    candidates = [p for r in roots for p in glob.glob(f"{r}/usr/lib/xen-*/bin/{name}")]
    for path in sorted(candidates, reverse=True):
        if os.access(path, os.X_OK):
            return path
    return require_executable(name)


def control(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    exe = require_xen_tool("xenstore-control")
    return subprocess.run(
        [exe, *args], env=daemon.env(), capture_output=True, text=True, timeout=20
    )


def test_xenstore_control_print_goes_to_the_daemon_log(daemon: Daemon) -> None:
    r = control(daemon, "print", "hello from xenstore-control")
    assert (r.returncode, r.stdout.strip()) == (0, "OK")
    assert daemon.store.log == ["hello from xenstore-control"]


def test_xenstore_control_quota_show_set_and_per_domain(daemon: Daemon) -> None:
    r = control(daemon, "quota")
    assert r.returncode == 0 and r.stdout.startswith("Quota settings:\n")
    # Every quota the store enforces is listed by name with its current value.
    shown = {
        line.split(":")[0].strip(): int(line.split(":")[1].split()[0])
        for line in r.stdout.splitlines()[1:]
        if ":" in line
    }
    assert shown == daemon.store.quotas
    assert control(daemon, "quota", "set", "nodes", "2000").returncode == 0
    assert daemon.store.quotas["nodes"] == 2000
    r = control(daemon, "quota", "0")
    assert r.returncode == 0 and r.stdout.startswith("Domain 0:\n")
    nodes = next(int(ln.split(":")[1]) for ln in r.stdout.splitlines() if ln.startswith("nodes"))
    assert nodes == daemon.store.tree.owned[0]


def test_xenstore_control_help_check_and_unknown_command(daemon: Daemon) -> None:
    r = control(daemon, "help")
    assert r.returncode == 0
    assert {ln.split("\t")[0] for ln in r.stdout.splitlines() if ln} >= {"print", "quota"}
    assert control(daemon, "check").returncode == 0
    # An unknown command is EINVAL from the daemon; the tool then prints the help
    # it fetched and exits non-zero.
    r = control(daemon, "no-such-command")
    assert r.returncode != 0 and "Command not supported" in r.stderr + r.stdout


def test_xen_own_xenstore_test_suite_passes(daemon: Daemon) -> None:
    """``test-xenstore`` runs Xen's reads, writes, directories, removes and
    transactions (including the conflict case) and exits non-zero on any
    mismatch with what C xenstored answers."""
    exe = require_xen_tool("test-xenstore")
    r = subprocess.run([exe], env=daemon.env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    listed = subprocess.run(
        [exe, "-l"], env=daemon.env(), capture_output=True, text=True, timeout=20
    )
    names = [ln.split(":")[0].strip() for ln in listed.stdout.splitlines() if ":" in ln]
    assert "ta err" in names
    # One timing line per test: every test ran, none was skipped.
    assert len([ln for ln in r.stdout.splitlines() if ln.endswith(" ns")]) == len(names)
