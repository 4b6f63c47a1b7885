"""``disk=[...]`` and ``type="hvm"`` through ``xl create`` (issue 12's toolstack wiring).

One machine daemon runs in this process (its control and xenstored sockets are real);
``xenpci xl`` commands go through typer's runner. The vbd layout is read back with the
C ``xenstore-ls`` (libxenstore) over the daemon's xenstored socket; the data a guest
writes through blkfront (or, for HVM, through its emulated controller) is read back
from dom0's disk, the independent side.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import OS_EDGE_TIMEOUT, TOOL_TIMEOUT
from tests.interop import require_executable
from tests.toolstack.daemon_helpers import running_daemon
from xenpci.cli.main import app
from xenpci.devices import catalog
from xenpci.toolstack.daemon import MachineDaemon
from xenpci.toolstack.machine import Machine
from xenpci.toolstack.xlcfg import UnsupportedDomainType, load_domain_config, require_supported_type
from xenpci.xenstore.client import XsClient
from xenpci.xenstore.errors import XsError

pytestmark = pytest.mark.timeout(90)

XVDA = 51712  # libxl__device_disk_dev_number("xvda"): 202 << 8


@pytest.fixture(scope="module")
def daemon() -> Iterator[MachineDaemon]:
    with running_daemon("xld") as d:
        yield d


def machine(d: MachineDaemon) -> Machine:
    assert d.machine is not None
    return d.machine


def xl(d: MachineDaemon, *args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, ["xl", "--dir", str(d.run_dir), *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.stderr
    return r.exit_code, r.stdout, r.stderr


def create(d: MachineDaemon, tmp_path: Path, text: str) -> tuple[int, str, str]:
    cfg = tmp_path / "g.cfg"
    cfg.write_text(text)
    return xl(d, "create", str(cfg))


def xenstore_ls(d: MachineDaemon, path: str) -> dict[str, str]:
    """The C ``xenstore-ls PATH`` as {relative path: value}, every level."""
    out = subprocess.run(
        [require_executable("xenstore-ls"), "-f", path],
        env={**os.environ, "XENSTORED_PATH": str(d.run_dir / "xenstored.sock")},
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=True,
    ).stdout
    got: dict[str, str] = {}
    for line in out.splitlines():
        key, _, rest = line.partition(" = ")
        got[key[len(path) + 1 :]] = rest[1 : rest.rindex('"')]
    return got


def wait_state(d: MachineDaemon, path: str, want: str) -> None:
    """Wait on a XenStore watch (over the daemon's socket) until ``path`` reads ``want``."""
    xs = XsClient.unix(str(d.run_dir / "xenstored.sock"))
    seen = threading.Event()

    def check(*_ev: object) -> None:
        try:
            if xs.read(path).decode() == want:
                seen.set()
        except XsError:
            pass  # not there yet: the next event re-reads

    try:
        xs.watch(path, "t", check)
        # an OS edge (the daemon's threads): the bound only ends a broken run
        assert seen.wait(OS_EDGE_TIMEOUT), f"{path} never read {want}"
    finally:
        xs.close()


@pytest.mark.interop
def test_pv_guest_with_a_disk_is_served_by_blkback(daemon: MachineDaemon, tmp_path: Path) -> None:
    code, out, err = create(
        daemon,
        tmp_path,
        'name = "pvdisk"\nmemory = 32\ndisk = [ "/dev/nvme0n1,raw,xvda,rw" ]\n',
    )
    assert code == 0, err
    domid = int(out.split()[1])
    be = f"/local/domain/0/backend/vbd/{domid}/{XVDA}"
    fe = f"/local/domain/{domid}/device/vbd/{XVDA}"
    wait_state(daemon, f"{be}/state", "4")
    wait_state(daemon, f"{fe}/state", "4")
    back = xenstore_ls(daemon, be)
    # libxl__device_disk_add's keys, and what blkback publishes when it connects
    assert {k: back[k] for k in ("frontend", "frontend-id", "dev", "mode", "params", "type")} == {
        "frontend": fe,
        "frontend-id": str(domid),
        "dev": "xvda",
        "mode": "w",
        "params": "/dev/nvme0n1",
        "type": "phy",
    }
    assert int(back["sectors"]) > 0
    front = xenstore_ls(daemon, fe)
    assert front["backend"] == be and front["virtual-device"] == str(XVDA)
    assert {"ring-ref", "event-channel"} <= set(front)
    # the guest kernel probed device/vbd itself; its writes land on dom0's disk
    m = machine(daemon)
    data = bytes(range(256)) * 4

    def guest_io() -> tuple[bytes, bytes]:
        # machine work: a task on the daemon's executor (its waits are real-time
        # deadlines there), handed in from this thread as an OS edge would
        blk = m.guest(domid).wait_for_blkfront(XVDA)
        assert blk.wait_connected(OS_EDGE_TIMEOUT)
        blk.write(8, data)
        return m.block_devices()["/dev/nvme0n1"].read(8, 2), blk.read(8, 2)

    on_disk, read_back = daemon.executor.submit(guest_io).result(timeout=OS_EDGE_TIMEOUT)
    assert on_disk == data
    assert read_back == data
    code, _, err = xl(daemon, "destroy", "pvdisk")
    assert code == 0, err
    for path in (be, fe):
        assert not m.xs.exists(path)


def test_disk_naming_no_dom0_block_device_is_refused(daemon: MachineDaemon, tmp_path: Path) -> None:
    code, _, err = create(daemon, tmp_path, 'name = "nodisk"\ndisk = [ "/dev/sdz,raw,xvda,rw" ]\n')
    assert code == 1
    assert err.splitlines()[-1] == (
        "libxl: error: disk xvda: /dev/sdz is not a block device of dom0 "
        "(dom0 has: /dev/nvme0n1) [no-such-disk]"
    )
    code, _, err = xl(daemon, "list", "nodisk")
    assert code == 1  # nothing was created


def test_bad_diskspec_fails_the_file(daemon: MachineDaemon, tmp_path: Path) -> None:
    code, _, err = create(daemon, tmp_path, 'name = "bad"\ndisk = [ "/dev/nvme0n1,qcow2,xvda" ]\n')
    assert code == 1
    assert "format 'qcow2' is not supported" in err and str(tmp_path / "g.cfg") + ":2:" in err


def test_hvm_guest_boots_on_its_device_model(daemon: MachineDaemon, tmp_path: Path) -> None:
    code, out, err = create(
        daemon, tmp_path, 'name = "hvm1"\ntype = "hvm"\ndisk = [ "/dev/nvme0n1,,xvda" ]\n'
    )
    assert code == 0, err
    domid = int(out.split()[1])
    m = machine(daemon)
    guest = m.hvm[domid]
    data = b"\xa5" * 512

    def guest_io() -> bytes:  # a task on the daemon's executor, as all machine work
        guest.driver.write_blocks(40, data)  # guest MMIO -> ioreq -> device model -> disk
        return m.block_devices()["/dev/nvme0n1"].read(40, 1)

    assert daemon.executor.submit(guest_io).result(timeout=OS_EDGE_TIMEOUT) == data
    assert guest.model.handled > 0
    # passthrough to it is refused, not half done
    code, _, err = xl(daemon, "pci-attach", "hvm1", "03:00.0")
    assert code == 1 and "[hvm-passthrough]" in err
    code, _, err = xl(daemon, "destroy", "hvm1")
    assert code == 0, err
    assert domid not in m.hvm


def test_hvm_refusals_stay_in_require_supported_type() -> None:
    def refused(text: str) -> str:
        with pytest.raises(UnsupportedDomainType) as e:
            require_supported_type(load_domain_config(text))
        return e.value.message

    assert "passthrough" in refused(
        'name="h"\ntype="hvm"\npci=["03:00.0"]\ndisk=["/dev/x,,xvda"]\n'
    )
    assert "exactly one disk" in refused('name="h"\ntype="hvm"\n')
    assert "pvh" in refused('name="h"\ntype="pvh"\n')
    require_supported_type(load_domain_config('name="h"\nbuilder="hvm"\ndisk=["/dev/x,,xvda"]\n'))


def test_dom0s_disk_is_not_assignable(daemon: MachineDaemon, tmp_path: Path) -> None:
    """Once dom0 drives 04:00.0 as /dev/nvme0n1 (blkback serves it), pciback may not seize
    it: one line, xl's exit 1, and the disk keeps working."""
    m = machine(daemon)
    assert "/dev/nvme0n1" in m.block_devices()
    code, _, err = xl(daemon, "pci-assignable-add", "04:00.0")
    assert code == 1 and err.count("\n") == 1
    assert "0000:04:00.0 is dom0's block device /dev/nvme0n1" in err
    assert "0000:04:00.0" not in xl(daemon, "pci-assignable-list")[1]


def test_a_malformed_vbd_is_skipped_and_the_others_probe() -> None:
    """A ``device/vbd`` node blkfront cannot read (a backend-id that is not a number) is
    not probed; the guest's other disk still connects and the kernel keeps running."""
    from xenpci.toolstack.xldisk import parse_disk_spec, vbd_add

    with Machine(deterministic=True) as m:
        m.add_host_devices(catalog.make("nvme", "0000:04:00.0"))
        m.block_devices()
        domid = m.start_guest("g", 16 * 1024)
        bad = f"/local/domain/{domid}/device/vbd/5"
        with m.xs.transaction() as t:
            for key, value in (("backend", "/nowhere"), ("backend-id", "junk"), ("state", "1")):
                t.write(f"{bad}/{key}", value)
        disk = parse_disk_spec("/dev/nvme0n1,raw,xvdb,rw")
        vbd_add(m.xs, domid, disk)
        kernel = m.guest(domid)
        front = kernel.wait_for_blkfront(disk.devid)
        assert front.wait_connected()  # a deadline in virtual time
        assert 5 not in kernel.blkfronts
        assert front.read(0, 1) == m.block_devices()["/dev/nvme0n1"].read(0, 1)
