"""End to end through the CLI: a started machine, xl commands, and xenstore-utils watching.

The machine runs as its own process (``xenpci machine start --daemon``); xl commands go
through typer's runner in this process (over the control socket, as ``xenpci xl`` does);
the C ``xenstore-ls``/``xenstore-read`` (libxenstore) read the live layout at each step.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import OS_EDGE_TIMEOUT, TOOL_TIMEOUT
from tests.interop import require_executable
from tests.toolstack.test_libxl_machine import wait_node
from xenpci.cli.main import app
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.daemon import read_pid
from xenpci.xenstore.client import XsClient

pytestmark = [pytest.mark.timeout(90), pytest.mark.interop]
EXAMPLES = Path(__file__).resolve().parents[2] / "src/xenpci/toolstack/examples"


class Xl:
    """Run ``xenpci xl --dir D ...`` and the xenstore tools against one machine."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.runner = CliRunner()
        self.env = {**os.environ, "XENSTORED_PATH": str(run_dir / "xenstored.sock")}

    def __call__(self, *args: str, ok: bool = True) -> tuple[int, str, str]:
        r = self.runner.invoke(app, ["xl", "--dir", str(self.dir), *args])
        if ok:
            assert r.exit_code == 0, (args, r.stdout, r.stderr)
        return r.exit_code, r.stdout, r.stderr

    def background(self, *args: str) -> subprocess.Popen[str]:
        """``xenpci xl ARGS`` in its own process, as a second xl invocation would run."""
        return subprocess.Popen(
            [sys.executable, "-m", "xenpci", "xl", "--dir", str(self.dir), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def refused(self, *args: str) -> str:
        code, _out, err = self(*args, ok=False)
        assert code == 1
        return err

    def xs_ls(self, path: str) -> dict[str, tuple[str, str]]:
        """``xenstore-ls -p PATH`` as {relative path: (value, perms)} (top level only)."""
        out = subprocess.run(
            [require_executable("xenstore-ls"), "-p", path],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=True,
        ).stdout
        got: dict[str, tuple[str, str]] = {}
        for line in out.splitlines():
            if line.startswith(" "):
                continue  # deeper levels
            key, _, rest = line.partition(" = ")
            value = rest[1 : rest.index('"', 1)]
            perms = rest[rest.rindex("(") + 1 : -1]
            got[key] = (value, perms)
        return got

    def xs_read(self, path: str) -> str | None:
        r = subprocess.run(
            [require_executable("xenstore-read"), path],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
        )
        return r.stdout.strip() if r.returncode == 0 else None

    def wait_connected(self, domid: int) -> None:
        xs = XsClient.unix(str(self.dir / "xenstored.sock"))
        try:
            lp.wait_for_backend_state(xs, domid, timeout=OS_EDGE_TIMEOUT)
        finally:
            xs.close()

    def wait_node(self, path: str, value: str) -> None:
        """Until ``path`` reads ``value``, on a XenStore watch over the daemon's socket."""
        xs = XsClient.unix(str(self.dir / "xenstored.sock"))
        try:
            wait_node(xs, path, value, OS_EDGE_TIMEOUT)
        finally:
            xs.close()


def start_machine(run_dir: Path, *extra: str) -> int:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "xenpci",
            "machine",
            "start",
            "--daemon",
            "--dir",
            str(run_dir),
            "--timeout",  # the daemon's backend waits: real time across its threads
            str(OS_EDGE_TIMEOUT),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert r.returncode == 0, r.stderr
    pid = read_pid(run_dir)
    assert pid is not None
    return pid


def stop_machine(run_dir: Path, pid: int) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "xenpci", "machine", "stop", "--dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert r.returncode == 0, r.stderr
    # The daemon is not our child (no waitpid): a pidfd becomes readable when it exits.
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone already
    try:
        readable, _, _ = select.select([fd], [], [], OS_EDGE_TIMEOUT)
    finally:
        os.close(fd)
    if not readable:
        pytest.fail(f"machine pid {pid} still alive after stop")


@pytest.fixture
def machine_dir(tmp_path: Path) -> Iterator[Path]:
    # A short path: Unix socket paths are limited to ~108 bytes.
    d = Path(f"/tmp/xenpci-test-{os.getpid()}-{tmp_path.name[-12:]}")
    yield d
    pid = read_pid(d)
    if pid is not None:  # a failed test must not leave a machine running
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    shutil.rmtree(d, ignore_errors=True)


def test_two_guests_attach_hotplug_detach_destroy(machine_dir: Path) -> None:
    require_executable("xenstore-ls")
    pid = start_machine(machine_dir)
    xl = Xl(machine_dir)
    assert xl.xs_read("/local/domain/0/name") == "Domain-0"

    # --- assignable ----------------------------------------------------------------------
    xl("pci-assignable-add", "-n", "nic0", "0000:03:00.0")
    xl("pci-assignable-add", "04:00.0")
    # xl_pci.c: printf("%04x:%02x:%02x.%01x %s\n", ..., name ?: ""): no name, a trailing space
    assert xl("pci-assignable-list", "-n")[1] == "0000:03:00.0 nic0\n0000:04:00.0 \n"
    assert xl("pci-assignable-list", "--show-names")[1] == "0000:03:00.0 nic0\n0000:04:00.0 \n"
    assert xl("pci-assignable-list")[1] == "0000:03:00.0 \n0000:04:00.0 \n"
    assert xl.xs_read("/libxl/pci/0000-03-00-0/name") == "nic0"

    # --- create two guests from the shipped examples ---------------------------------------
    out = xl("create", str(EXAMPLES / "guest1.cfg"))[1]
    assert "Domain 1 (guest1) created" in out
    xl("create", str(EXAMPLES / "guest2.cfg"))
    lines = xl("list")[1].splitlines()
    assert lines[0] == "Name                                        ID   Mem VCPUs\tState\tTime(s)"
    assert [ln.split()[:4] for ln in lines[2:]] == [
        ["guest1", "1", "64", "1"],
        ["guest2", "2", "64", "2"],
    ]
    assert lines[1].startswith("Domain-0" + " " * 32 + "     0")
    xl.wait_connected(1)
    xl.wait_connected(2)

    # --- the keys libxl would have written, read by libxenstore -----------------------------
    be1 = xl.xs_ls(lp.backend_path(1))
    for key, value in {
        "frontend": "/local/domain/1/device/pci/0",
        "frontend-id": "1",
        "online": "1",
        "state": "4",
        "domain": "guest1",
        "key-0": "0000:03:00.0",
        "dev-0": "0000:03:00.0",
        "vdevfn-0": "28",
        "opts-0": "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict",
        "num_devs": "1",
    }.items():
        assert be1[key] == (value, "n0,r1"), key
    assert "name-0" not in be1  # given by BDF, not by name
    be2 = xl.xs_ls(lp.backend_path(2))
    assert be2["opts-0"][0] == "msitranslate=1,power_mgmt=0,permissive=0,rdm_policy=relaxed"
    assert be2["vdevfn-0"][0] == "30"
    fe1 = xl.xs_ls(lp.frontend_path(1))
    assert fe1["backend"] == (lp.backend_path(1), "n1,r0")
    assert fe1["backend-id"] == ("0", "n1,r0")
    assert xl.xs_read("/libxl/pci/0000-03-00-0/domid") == "1"
    assert xl("pci-list", "guest1")[1] == "Vdev Device\n05.0 0000:03:00.0\n"
    assert xl("pci-list", "2")[1] == "Vdev Device\n06.0 0000:04:00.0\n"
    assert xl("pci-assignable-list")[1] == ""

    # --- hot attach to a running guest ---------------------------------------------------
    xl("pci-assignable-add", "06:00.0")
    xl("pci-assignable-add", "06:00.1")
    xl("pci-attach", "guest1", "06:00.0@7")
    xl.wait_connected(1)
    be1 = xl.xs_ls(lp.backend_path(1))
    assert be1["dev-1"][0] == "0000:06:00.0" and be1["num_devs"][0] == "2"
    assert be1["vdevfn-1"][0] == "38"
    assert xl("pci-list", "guest1")[1] == "Vdev Device\n05.0 0000:03:00.0\n07.0 0000:06:00.0\n"

    # --- every refusal, each with its reason ------------------------------------------------
    assert "[split-functions]" in xl.refused("pci-attach", "guest2", "06:00.1")
    assert "[already-assigned]" in xl.refused("pci-attach", "guest2", "03:00.0")
    assert "[not-assignable]" in xl.refused("pci-attach", "guest2", "07:00.0")
    xl("pci-assignable-add", "05:00.0")
    err = xl.refused("pci-attach", "guest2", "05:00.0")
    assert "[shared-page]" in err and "0000:05:01.0" in err
    assert "[assigned]" in xl.refused("pci-assignable-remove", "nic0")
    assert "not attached" in xl.refused("pci-detach", "guest2", "03:00.0")
    assert xl.refused("pci-list", "guest9") == "guest9 is an invalid domain identifier (rc=-6)\n"
    xl("pci-attach", "--allow-unsafe", "guest2", "05:00.0")
    xl.wait_connected(2)
    assert "0000:05:00.0" in xl("pci-list", "guest2")[1]

    # --- detach: keys deleted, indices compacted -----------------------------------------
    xl("pci-detach", "guest1", "03:00.0")
    be1 = xl.xs_ls(lp.backend_path(1))
    assert be1["dev-0"][0] == "0000:06:00.0" and be1["num_devs"][0] == "1"
    assert be1["vdevfn-0"][0] == "38"
    assert not any(k.endswith("-1") for k in be1), be1
    assert xl.xs_read("/libxl/pci/0000-03-00-0/domid") is None
    assert xl("pci-list", "guest1")[1] == "Vdev Device\n07.0 0000:06:00.0\n"
    assert "0000:03:00.0 nic0" in xl("pci-assignable-list", "-n")[1]

    # --- destroy: every device back, no backend left -------------------------------------
    xl("destroy", "guest1")
    xl("destroy", "2")
    assert len(xl("list")[1].splitlines()) == 2
    assert xl("pci-assignable-list")[1].split() == [
        "0000:03:00.0",
        "0000:04:00.0",
        "0000:05:00.0",
        "0000:06:00.0",
        "0000:06:00.1",
    ]
    assert xl.xs_read(lp.backend_path(1) + "/num_devs") is None
    assert xl.xs_read("/local/domain/1/name") is None

    # --- assignable-remove, by name then by BDF ----------------------------------------------
    xl("pci-assignable-remove", "nic0")
    xl("pci-assignable-remove", "-r", "04:00.0")
    assert "0000:03:00.0" not in xl("pci-assignable-list")[1]

    # --- stop: nothing left behind ------------------------------------------------------
    stop_machine(machine_dir, pid)
    assert not machine_dir.exists()


def test_status_and_clean_stop(machine_dir: Path) -> None:
    pid = start_machine(machine_dir)
    r = CliRunner().invoke(app, ["machine", "status", "--dir", str(machine_dir)])
    assert r.exit_code == 0
    assert f"pid        {pid}" in r.stdout
    assert "0000:03:00.0  dom0" in r.stdout
    # a second machine on the same directory is refused
    again = subprocess.run(
        [sys.executable, "-m", "xenpci", "machine", "start", "--daemon", "--dir", str(machine_dir)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert again.returncode == 1 and "already running" in again.stderr
    xl = Xl(machine_dir)
    xl("pci-assignable-add", "03:00.0")
    xl("create", str(EXAMPLES / "guest1.cfg"))
    # stop with a guest still running: it is destroyed, its device reset and released
    stop_machine(machine_dir, pid)
    assert not machine_dir.exists()
    r = CliRunner().invoke(app, ["machine", "status", "--dir", str(machine_dir)])
    assert r.exit_code == 1 and "no machine running" in r.stderr


def test_no_iommu_machine_from_host_file(machine_dir: Path, tmp_path: Path) -> None:
    host = tmp_path / "host.toml"
    host.write_text(
        'iommu = false\ncatalog = false\n[[device]]\nsource = "model:nic@0000:03:00.0"\n'
    )
    pid = start_machine(machine_dir, "--host", str(host))
    try:
        xl = Xl(machine_dir)
        xl("pci-assignable-add", "03:00.0")
        err = xl.refused("create", str(EXAMPLES / "guest1.cfg"))
        assert "[no-iommu]" in err and "as trusted as dom0" in err
        assert len(xl("list")[1].splitlines()) == 2  # header + Domain-0: nothing created
        xl("create", "--allow-unsafe", str(EXAMPLES / "guest1.cfg"))
        assert xl("pci-list", "guest1")[1] == "Vdev Device\n05.0 0000:03:00.0\n"
    finally:
        stop_machine(machine_dir, pid)
    assert not machine_dir.exists()


def test_bad_config_and_hostile_control_client(machine_dir: Path, tmp_path: Path) -> None:
    import socket

    pid = start_machine(machine_dir)
    try:
        xl = Xl(machine_dir)
        bad = tmp_path / "bad.cfg"
        bad.write_text('name = "x"\npci = [ "03:00.0,colour=red" ]\n')
        code, _out, err = xl("create", str(bad), ok=False)
        assert code == 6  # xl: a bad PCI_SPEC_STRING inside a cfg exits with -ERROR_INVAL
        assert "bad.cfg:2:" in err and "unable to parse PCI_SPEC_STRING" in err
        # garbage and an endless line on the control socket: that client alone is dropped
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(machine_dir / "control.sock"))
        s.sendall(b"{not json}\n")
        reply = s.recv(4096)
        assert b'"ok": false' in reply and b"not JSON" in reply
        s.sendall(b'{"id": 2, "op": "reboot-the-world"}\n')
        assert b"unknown op" in s.recv(4096)
        s.settimeout(OS_EDGE_TIMEOUT)
        try:
            for _ in range(40):  # 2.5 MiB without a newline; the daemon gives up at 1 MiB
                s.sendall(b"x" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        assert b"longer than" in data
        s.close()
        assert xl("list")[1].startswith("Name")  # the daemon still serves others
    finally:
        stop_machine(machine_dir, pid)


def test_foreground_machine_stops_on_sigterm(machine_dir: Path) -> None:
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "xenpci", "machine", "start", "--dir", str(machine_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        # Its first line says it runs (printed once the pid file is written and the
        # sockets listen): read it, no polling. The rest is read at the end.
        first = proc.stderr.readline()
        assert "running" in first, first + proc.communicate()[1]
        assert read_pid(machine_dir) == proc.pid
        xl = Xl(machine_dir)
        xl("pci-assignable-add", "03:00.0")
        xl("create", str(EXAMPLES / "guest1.cfg"))
        assert xl.xs_read("/local/domain/1/name") == "guest1"
        proc.send_signal(signal.SIGTERM)
        _out, rest = proc.communicate(timeout=OS_EDGE_TIMEOUT)
        err = first + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "XENSTORED_PATH=" in err and "stopped" in err
    assert not machine_dir.exists()


def _status_devices(run_dir: Path) -> dict[str, str]:
    r = CliRunner().invoke(app, ["machine", "status", "--dir", str(run_dir)])
    assert r.exit_code == 0, r.stderr
    return {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.startswith("  0000:")}


def _resets(line: str) -> int:
    return int(line.split("resets=")[1].split()[0])


def test_guest_paused_then_destroyed_mid_attach(machine_dir: Path) -> None:
    """xl pause wedges the guest; an attach waits on it; xl destroy ends it: all reset."""
    require_executable("xenstore-ls")
    pid = start_machine(machine_dir)
    try:
        xl = Xl(machine_dir)
        for bdf in ("03:00.0", "04:00.0", "07:00.0"):
            xl("pci-assignable-add", bdf)
        xl("create", str(EXAMPLES / "guest1.cfg"))
        xl.wait_connected(1)
        xl("pause", "guest1")
        assert xl("list")[1].splitlines()[2].split()[4] == "--p---"
        xl("pci-attach", "guest1", "04:00.0")  # Reconfiguring written; nobody answers
        before = _status_devices(machine_dir)
        # the next attach waits for Connected, in its own process as a second xl would
        proc = xl.background("pci-attach", "guest1", "07:00.0")
        try:
            # claimed for guest1: from here it waits for Connected, which only the
            # paused guest can bring about (state 7 stays: nobody answers it)
            xl.wait_node("/libxl/pci/0000-07-00-0/domid", "1")
            assert xl.xs_read(lp.backend_path(1) + "/state") == "7"
            assert proc.poll() is None
            xl("destroy", "guest1")
            # "went away" (below) proves it was still waiting when the guest died
            _out, err = proc.communicate(timeout=OS_EDGE_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 1 and "domain 1 went away" in err, err
        assert xl("pci-assignable-list")[1].split() == [
            "0000:03:00.0",
            "0000:04:00.0",
            "0000:07:00.0",
        ]
        for key in ("0000-03-00-0", "0000-04-00-0", "0000-07-00-0"):
            assert xl.xs_read(f"/libxl/pci/{key}/domid") is None
        assert xl.xs_read(lp.backend_path(1) + "/num_devs") is None
        assert xl.xs_read("/local/domain/1/name") is None
        assert len(xl("list")[1].splitlines()) == 2
        after = _status_devices(machine_dir)
        for bdf in ("0000:03:00.0", "0000:04:00.0", "0000:07:00.0"):
            assert "pciback" in after[bdf]
            if bdf != "0000:07:00.0":  # the legacy model has no reset method at all
                assert _resets(after[bdf]) > _resets(before[bdf]), (before[bdf], after[bdf])
            # no bus mastering left on: the reset put back the header pciback saved at seize
            assert int(after[bdf].split("command=")[1][:4], 16) & 0x4 == 0, after[bdf]
    finally:
        stop_machine(machine_dir, pid)


def test_attach_to_paused_guest_completes_on_unpause(machine_dir: Path) -> None:
    pid = start_machine(machine_dir)
    try:
        xl = Xl(machine_dir)
        for bdf in ("03:00.0", "04:00.0", "07:00.0"):
            xl("pci-assignable-add", bdf)
        xl("create", str(EXAMPLES / "guest1.cfg"))
        xl.wait_connected(1)
        xl("pause", "1")
        xl("pci-attach", "guest1", "04:00.0")
        proc = xl.background("pci-attach", "guest1", "07:00.0")
        try:
            # claimed for guest1 and waiting: the paused guest has not answered state 7
            xl.wait_node("/libxl/pci/0000-07-00-0/domid", "1")
            assert xl.xs_read(lp.backend_path(1) + "/state") == "7"
            assert proc.poll() is None
            xl("unpause", "guest1")
            _out, err = proc.communicate(timeout=OS_EDGE_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert xl("list")[1].splitlines()[2].split()[4] == "-b----"
        assert "libxl: error" in xl.refused("unpause", "guest1")  # not paused: EINVAL
        xl.wait_connected(1)
        assert (
            xl("pci-list", "guest1")[1].split()[2:]
            == [
                "05.0",
                "0000:03:00.0",
                "00.0",
                "0000:04:00.0",
                "00.0",
                "0000:07:00.0",
            ]
            or len(xl("pci-list", "guest1")[1].splitlines()) == 4
        )
    finally:
        stop_machine(machine_dir, pid)
