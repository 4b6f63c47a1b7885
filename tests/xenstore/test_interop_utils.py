"""Debian's xenstore-utils (C, libxenstore 4.17) against our daemon via XENSTORED_PATH."""

from __future__ import annotations

import select
import subprocess

import pytest

from tests.conftest import OS_EDGE_TIMEOUT, TOOL_TIMEOUT
from tests.interop import require_executable

from .conftest import Daemon

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def xs(
    daemon: Daemon, tool: str, *args: str, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    exe = require_executable(f"xenstore-{tool}")
    return subprocess.run(
        [exe, *args], env=daemon.env(path), capture_output=True, text=True, timeout=TOOL_TIMEOUT
    )


def test_write_read_multi_and_exit_codes(daemon: Daemon) -> None:
    assert xs(daemon, "write", "/a/b", "hello", "/c", "d").returncode == 0
    r = xs(daemon, "read", "/a/b", "/c")  # two keys: libxenstore uses a transaction
    assert (r.returncode, r.stdout) == (0, "hello\nd\n")
    r = xs(daemon, "read", "/missing")
    assert r.returncode == 1 and "couldn't read path /missing" in r.stderr
    assert daemon.store.tree.get("/a/b") is not None


def test_ls_with_perms_list_exists(daemon: Daemon) -> None:
    xs(daemon, "write", "/t/x", "1", "/t/y", "2")
    assert xs(daemon, "chmod", "/t/x", "b0", "r5").returncode == 0
    r = xs(daemon, "ls", "-p", "/t")
    lines = r.stdout.splitlines()
    assert lines[0].startswith('x = "1"') and lines[0].endswith("(b0,r5)")
    assert lines[1].startswith('y = "2"') and lines[1].endswith("(n0)")
    assert xs(daemon, "list", "/t").stdout.split() == ["x", "y"]
    assert xs(daemon, "exists", "/t/x").returncode == 0
    assert xs(daemon, "exists", "/t/nope").returncode == 1


def test_rm_and_rm_t(daemon: Daemon) -> None:
    xs(daemon, "write", "/r/a/b", "v")
    assert xs(daemon, "rm", "/r/a/b").returncode == 0
    assert xs(daemon, "list", "/r").stdout.split() == ["a"]
    xs(daemon, "write", "/r/a/b", "v")
    assert xs(daemon, "rm", "-t", "/r/a/b").returncode == 0
    # -t also removed the now-empty, value-less ancestors.
    assert xs(daemon, "exists", "/r").returncode == 1


def test_relative_path_goes_under_dom0(daemon: Daemon) -> None:
    xs(daemon, "write", "rel/x", "v")
    assert xs(daemon, "read", "/local/domain/0/rel/x").stdout == "v\n"


def test_watch_prints_initial_and_change(daemon: Daemon) -> None:
    exe = require_executable("xenstore-watch")
    proc = subprocess.Popen(
        [exe, "-n", "2", "/w"], env=daemon.env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        # The watch's first event, printed once xenstored has registered it: from
        # here on a write fires it. (select only bounds a tool that never prints.)
        assert select.select([proc.stdout], [], [], OS_EDGE_TIMEOUT)[0], "xenstore-watch is mute"
        first = proc.stdout.readline()
        xs(daemon, "write", "/w/child", "v")
        rest, _ = proc.communicate(timeout=TOOL_TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert (first + rest).splitlines() == ["/w", "/w/child"]


def test_directory_part_fallback_for_large_listing(daemon: Daemon) -> None:
    store = daemon.store
    from xenpci.xenstore.client import XsClient

    with XsClient.in_process(store) as c:
        for i in range(600):
            c.mkdir(f"/big/entry{i:05d}")
    r = xs(daemon, "list", "/big")
    assert r.returncode == 0
    assert r.stdout.split() == [f"entry{i:05d}" for i in range(600)]


def test_domain_socket_permissions_with_stock_tools(daemon: Daemon) -> None:
    xs(daemon, "write", "/local/domain/5/mine", "x", "/secret", "s")
    xs(daemon, "chmod", "/local/domain/5", "n5")
    xs(daemon, "chmod", "/local/domain/5/mine", "n5")
    g = daemon.dom5_path
    assert xs(daemon, "read", "mine", path=g).stdout == "x\n"
    assert xs(daemon, "write", "new", "y", path=g).returncode == 0
    assert xs(daemon, "read", "/secret", path=g).returncode == 1
    assert xs(daemon, "write", "/secret", "z", path=g).returncode == 1
    assert xs(daemon, "read", "/secret").stdout == "s\n"
    r = xs(daemon, "ls", "-p", "/local/domain/5")
    assert "new" in r.stdout and "(n5)" in r.stdout


def test_ro_socket_refuses_writes(daemon: Daemon) -> None:
    xs(daemon, "write", "/ro", "v")
    assert xs(daemon, "read", "/ro", path=daemon.ro_path).stdout == "v\n"
    assert xs(daemon, "write", "/ro", "w", path=daemon.ro_path).returncode == 1
    assert xs(daemon, "read", "/ro").stdout == "v\n"
