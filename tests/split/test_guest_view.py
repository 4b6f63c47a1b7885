"""``xenpci pci guest-view`` against real ``lspci -F`` on every real dump.

Truth: pciutils' own decoder (``lspci -F FILE -vvv``) reading the original
dump (the host) and our guest view: the guest sees the same identity and no
capability the host lacks; devices whose BAR sizes the dump does not give are
refused with that reason.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import TOOL_TIMEOUT
from tests.interop import require_executable, require_file
from xenpci.cli.main import app
from xenpci.pci.dump import write_dump
from xenpci.pci.sources import open_source
from xenpci.pcifront.ops import DEFAULT_OP_TIMEOUT
from xenpci.toolstack.machine import guest_view

DUMPS = Path("/work/shared/data/lspci-dumps")
# Without the dumps the one parameter names the missing directory, so that
# require_file skips locally and fails in CI instead of an empty parameter set.
DUMP_FILES = sorted(p for p in DUMPS.glob("*") if p.name != "README.md") or [DUMPS]
CAP_RE = re.compile(r"^\s*Capabilities: \[([0-9a-f]+)(?: v\d+)?\] ([A-Za-z-]+)", re.M)

pytestmark = pytest.mark.timeout(60)


def _lspci(path: Path, *args: str) -> str:
    exe = require_executable("lspci")
    res = subprocess.run(
        [exe, "-F", str(path), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=TOOL_TIMEOUT,
    )
    return res.stdout


def _caps(text: str) -> set[tuple[str, str]]:
    return set(CAP_RE.findall(text))


def _identity(path: Path, bdf: str) -> str:
    # lspci -n: "BB:DD.F CCCC: VVVV:DDDD (rev RR)"; drop the address.
    line = _lspci(path, "-n", "-s", bdf).strip()
    return line.split(" ", 1)[1]


@pytest.mark.interop
@pytest.mark.parametrize("dump", DUMP_FILES, ids=lambda p: p.name)
def test_guest_view_of_real_dump_decodes_with_same_identity_and_no_new_caps(
    dump: Path, tmp_path: Path
) -> None:
    require_executable("lspci")
    require_file(dump)
    if dump.is_dir():
        pytest.fail(f"no dumps in {dump}")
    host_fns = open_source(str(dump))
    report = guest_view(host_fns, op_timeout=DEFAULT_OP_TIMEOUT)
    # every function is either shown or refused, never dropped silently
    shown = {v.host.sbdf for v in report.views}
    refused = {r.sbdf for r in report.refused}
    assert shown | refused == {f.sbdf for f in host_fns} and not shown & refused
    for r in report.refused:
        fn = next(f for f in host_fns if f.sbdf == r.sbdf)
        if "unknown" in r.reason:
            assert any(b.size is None for b in fn.bars)  # the dump gave no Region size
    if not report.views:
        return
    out = tmp_path / "guest.dump"
    write_dump([v.guest for v in report.views], out)
    for view in report.views:
        host_bdf = view.host.sbdf.bdf
        guest_bdf = view.guest.sbdf.bdf
        assert _identity(out, guest_bdf) == _identity(dump, host_bdf)
        host_text = _lspci(dump, "-vvv", "-s", host_bdf)
        guest_text = _lspci(out, "-vvv", "-s", guest_bdf)
        assert guest_text.strip(), f"lspci shows nothing for guest {guest_bdf}"
        assert _caps(guest_text) <= _caps(host_text), _caps(guest_text) - _caps(host_text)
        # nothing lspci cannot decode that it could decode on the host
        assert guest_text.count("<?>") <= host_text.count("<?>")


def test_strict_policy_shows_only_msi_capabilities(tmp_path: Path) -> None:
    require_executable("lspci")
    host = open_source("model:nic")
    report = guest_view(host, policy="strict")
    out = tmp_path / "strict.dump"
    write_dump([v.guest for v in report.views], out)
    names = {name for _off, name in _caps(_lspci(out, "-vvv"))}
    assert names <= {"MSI", "MSI-X"} and "MSI-X" in names
    linux = guest_view(host)
    assert any(d.rule == "conf_space.unhandled" for d in report.views[0].differences)
    assert not any(d.rule == "conf_space.unhandled" for d in linux.views[0].differences)


def _dump_without_regions() -> Path:
    require_file(DUMPS)
    for p in DUMP_FILES:
        fns = open_source(str(p))
        if len(fns) == 1 and any(b.size is None for b in fns[0].bars):
            return p
    pytest.skip("no single-device dump without Region lines")
    raise AssertionError


def test_cli_writes_a_view_lspci_decodes(tmp_path: Path) -> None:
    require_executable("lspci")
    out = tmp_path / "nic.dump"
    res = CliRunner().invoke(app, ["pci", "guest-view", "model:nic", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "header.command" in res.output and "conf_space.unhandled" in res.output
    text = _lspci(out, "-vvv")
    assert "MSI-X: Enable- Count=" in text and "00:00.0" in text


def test_cli_refuses_unknown_bar_sizes_with_the_reason(tmp_path: Path) -> None:
    dump = _dump_without_regions()
    out = tmp_path / "x.dump"
    res = CliRunner().invoke(app, ["pci", "guest-view", str(dump), "-o", str(out)])
    assert res.exit_code == 1
    assert "unknown" in res.output and "Region" in res.output
    assert not out.exists()


def test_cli_rejects_unknown_policy(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["pci", "guest-view", "model:nic", "--policy", "lax", "-o", str(tmp_path / "o")]
    )
    assert res.exit_code == 2


def test_cli_file_at_bdf_and_permissive(tmp_path: Path) -> None:
    require_executable("lspci")
    dump = require_file(DUMPS / "cap-exp-lnkcap2")
    out = tmp_path / "one.dump"
    res = CliRunner().invoke(
        app, ["pci", "guest-view", f"{dump}@00:1c.0", "--permissive", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "passed to hardware (permissive)" in res.output
    text = _lspci(out, "-vvv")
    assert text.startswith("00:00.0 PCI bridge")  # one function, at virtual slot 0
    assert _identity(out, "00:00.0") == _identity(dump, "00:1c.0")


def test_pci_group_lists_guest_view() -> None:
    res = CliRunner().invoke(app, ["pci", "--help"])
    assert res.exit_code == 0 and "guest-view" in res.output


@pytest.mark.interop
def test_guest_view_of_this_hosts_sysfs_devices(tmp_path: Path) -> None:
    """Real devices, read-only from sysfs: identity as the host's own lspci shows it."""
    exe = require_executable("lspci")
    root = Path("/sys/bus/pci/devices")
    if not root.exists() or not any(root.iterdir()):
        pytest.skip("this host exposes no PCI devices in sysfs")
    host_fns = open_source("sysfs")[:16]
    report = guest_view(host_fns)
    assert {v.host.sbdf for v in report.views} | {r.sbdf for r in report.refused} == {
        f.sbdf for f in host_fns
    }
    out = tmp_path / "sysfs.dump"
    write_dump([v.guest for v in report.views], out)
    for view in report.views:
        host = subprocess.run(
            [exe, "-n", "-s", str(view.host.sbdf)],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
        ).stdout.strip()
        assert _identity(out, view.guest.sbdf.bdf) == host.split(" ", 1)[1]
