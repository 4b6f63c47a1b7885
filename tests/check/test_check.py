"""``xenpci check``: rules over captured sysfs trees built from the shared lspci dumps,
over a dump itself, and over this machine's real sysfs; the toolstack's refusals
say the same as the report."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.check.sysfs_tree import HostSpec, build_tree
from tests.interop import require_executable
from xenpci.check import exit_status, facts_from_functions, load_host_facts, run_checks
from xenpci.check.rules import PCI_ACS_CTRL, RULES, Row, no_iommu_reason, shared_page_reason
from xenpci.cli.main import app
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.capabilities import find_ext_capability
from xenpci.pci.config import ConfigSpace
from xenpci.pci.dump import format_dump, load_dump
from xenpci.pci.function import PciFunction

runner = CliRunner()
DUMPS = Path("/work/shared/data/lspci-dumps")
UHCI = "0000:00:1d.0"  # cap-pci-af: AF FLR, I/O BAR only, no MSI-X


def rows_of(rows: list[Row], bdf: str) -> dict[str, Row]:
    return {r.rule: r for r in rows if str(r.device) == bdf}


def moved(fn: PciFunction, bdf: str) -> PciFunction:
    """The same config at another address (to place a dump's device below a bridge)."""
    return PciFunction(
        SBDF.parse(bdf), fn.config.copy(), source=fn.source, bar_sizes=fn.bar_sizes, irq=fn.irq
    )


# --- a host that passes, and what breaks it ------------------------------------------------
def test_ready_device_passes_every_check(tmp_path: Path) -> None:
    fns = load_dump(DUMPS / "cap-pci-af")
    root = build_tree(tmp_path, fns, HostSpec(drivers={UHCI: "pciback"}))
    rows = run_checks(load_host_facts(root))
    assert {r.rule for r in rows} == {r.name for r in RULES}
    assert all(r.status == "pass" for r in rows), rows
    by = rows_of(rows, UHCI)
    assert "af_flr" in by["reset"].reason and "alone" in by["iommu-group"].reason
    assert exit_status(rows) == 0
    result = runner.invoke(app, ["check", f"sysfs:{root}", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["status"] == "pass" and out["iommu"] is True and len(out["rows"]) == len(RULES)


def test_no_iommu_fails_every_device_with_the_toolstack_text(tmp_path: Path) -> None:
    fns = load_dump(DUMPS / "cap-pci-af")
    root = build_tree(tmp_path, fns, HostSpec(iommu_units=[], drivers={UHCI: "pciback"}))
    by = rows_of(run_checks(load_host_facts(root)), UHCI)
    assert by["iommu"].status == "fail"
    assert by["iommu"].reason.startswith(no_iommu_reason(SBDF.parse(UHCI)))
    assert "/sys/class/iommu is empty" in by["iommu"].reason
    assert by["iommu-group"].status == "fail"
    result = runner.invoke(app, ["check", f"sysfs:{root}"])
    assert result.exit_code == 1
    assert "No IOMMU is enabled on this host" in result.output


def test_xen_dom0_is_told_why_it_sees_no_iommu(tmp_path: Path) -> None:
    root = build_tree(
        tmp_path, load_dump(DUMPS / "cap-pci-af"), HostSpec(iommu_units=[], hypervisor="xen")
    )
    by = rows_of(run_checks(load_host_facts(root)), UHCI)
    assert "Xen owns the IOMMU" in by["iommu"].reason


def test_group_shared_with_other_endpoints(tmp_path: Path) -> None:
    fns = load_dump(DUMPS / "tree-asus-p6t6")
    groups = {1: ["0000:06:00.0", "0000:06:00.1"], 2: ["0000:00:07.0"], 3: ["0000:04:00.0"]}
    root = build_tree(tmp_path, fns, HostSpec(groups=groups))
    rows = run_checks(load_host_facts(root), [SBDF.parse("0000:06:00.0")])
    by = rows_of(rows, "0000:06:00.0")
    assert by["iommu-group"].status == "warn"
    assert "0000:06:00.1" in by["iommu-group"].reason
    assert "same guest" in by["iommu-group"].reason


# --- topology: ACS, aliasing, bus reset ------------------------------------------------------
def test_acs_off_on_the_root_port_and_bus_reset_siblings(tmp_path: Path) -> None:
    """tree-asus-p6t6: root port 00:07.0 has ACS with every control bit off (lspci:
    'ACSCtl: SrcValid- ... UpstreamFwd-'); the GPU shares bus 06 with its audio
    function, so Linux offers no secondary bus reset."""
    root = build_tree(tmp_path, load_dump(DUMPS / "tree-asus-p6t6"))
    facts = load_host_facts(root)
    gpu = rows_of(run_checks(facts, [SBDF.parse("0000:06:00.0")]), "0000:06:00.0")
    assert gpu["acs"].status == "warn"
    assert "port 0000:00:07.0: ACS SV RR CR UF not enabled" in gpu["acs"].reason
    assert "multifunction device 0000:06:00.0 has no ACS capability" in gpu["acs"].reason
    assert "no secondary bus reset: it would also reset 0000:06:00.1" in gpu["reset"].reason
    sas = rows_of(run_checks(facts, [SBDF.parse("0000:04:00.0")]), "0000:04:00.0")
    # Behind root port 00:03.0 and the NF200 switch (02:00.0 up, 03:00.0 down), alone on bus 4.
    assert "0000:00:03.0" in sas["acs"].reason and "0000:03:00.0" in sas["acs"].reason
    assert sas["reset"].status == "pass"
    assert sas["reset"].reason.startswith("reset methods: flr")


def test_conventional_bridge_aliases_requester_ids(tmp_path: Path) -> None:
    fns = load_dump(DUMPS / "tree-asus-p6t6")
    bridge = next(f for f in fns if str(f.sbdf) == "0000:00:1e.0")
    secondary = bridge.config.read(regs.PCI_SECONDARY_BUS, 1)
    nic = moved(load_dump(DUMPS / "cap-pci-af")[0], f"0000:{secondary:02x}:01.0")
    root = build_tree(tmp_path, [*fns, nic])
    by = rows_of(run_checks(load_host_facts(root), [nic.sbdf]), str(nic.sbdf))
    assert "conventional PCI bridge 0000:00:1e.0 aliases requester IDs" in by["acs"].reason


def _root_port_with_acs(dump: str, ctrl: int) -> PciFunction:
    port = load_dump(DUMPS / dump)[0]
    cs = port.config.copy()
    acs = find_ext_capability(cs, regs.PCI_EXT_CAP_ID_ACS)
    assert acs is not None
    cs.poke(acs + PCI_ACS_CTRL, 2, ctrl)
    return PciFunction(port.sbdf, cs, source="test")


@pytest.mark.interop
@pytest.mark.parametrize(
    ("dump", "ctrl", "status"),
    [
        ("cap-aer-root", 0x0000, "warn"),
        ("cap-aer-root", 0x001D, "pass"),
        ("cap-aer-root", 0x000D, "warn"),  # UpstreamFwd+ in ACSCap: needed
        ("cap-aer-log", 0x000D, "pass"),  # UpstreamFwd- in ACSCap: hard-wired, not needed
        ("cap-aer-log", 0x0005, "warn"),
    ],
)
def test_acs_on_the_root_port_as_real_lspci_reads_it(
    tmp_path: Path, dump: str, ctrl: int, status: str
) -> None:
    """Real lspci decodes the port's ACSCap/ACSCtl; Linux wants SrcValid ReqRedir
    CmpltRedir UpstreamFwd on wherever the capability has them (pci_acs_flags_enabled)."""
    lspci = require_executable("lspci")
    port = _root_port_with_acs(dump, ctrl)
    dump = tmp_path / "port.txt"
    dump.write_text(format_dump([port]))
    text = subprocess.run(
        [lspci, "-F", str(dump), "-vv"], capture_output=True, text=True, check=True
    ).stdout
    cap = next(line for line in text.splitlines() if "ACSCap:" in line)
    ctl = next(line for line in text.splitlines() if "ACSCtl:" in line)
    # Linux wants each of these on where the capability has it (pci_acs_flags_enabled).
    wanted = [w for w in ("SrcValid", "ReqRedir", "CmpltRedir", "UpstreamFwd") if f"{w}+" in cap]
    lspci_ok = all(f"{w}+" in ctl for w in wanted)
    secondary = port.config.read(regs.PCI_SECONDARY_BUS, 1)
    ep = moved(load_dump(DUMPS / "cap-pcie-2")[0], f"0000:{secondary:02x}:00.0")
    root = build_tree(tmp_path / "t", [port, ep])
    by = rows_of(run_checks(load_host_facts(root), [ep.sbdf]), str(ep.sbdf))
    assert by["acs"].status == status
    assert (by["acs"].status == "pass") == lspci_ok


# --- pages ------------------------------------------------------------------------------------
def _subpage(bdf: str, addr: int) -> PciFunction:
    cs = ConfigSpace(bytes(64), 256)
    cs.poke(0, 4, 0x1234_1AF4)
    cs.poke(regs.PCI_CLASS_REVISION, 4, 0x02000000)
    cs.poke(regs.PCI_BASE_ADDRESS_0, 4, addr)
    return PciFunction(SBDF.parse(bdf), cs, source="test", bar_sizes={0: 0x100})


def test_subpage_bars_sharing_a_page_fail_with_the_toolstack_text(tmp_path: Path) -> None:
    a, b = _subpage("0000:05:00.0", 0xFE000000), _subpage("0000:05:01.0", 0xFE000100)
    c = _subpage("0000:05:02.0", 0xFE001000)
    root = build_tree(tmp_path, [a, b, c])
    rows = run_checks(load_host_facts(root))
    ra, rc = rows_of(rows, "0000:05:00.0"), rows_of(rows, "0000:05:02.0")
    hit = "BAR0 of 0000:05:00.0 shares page 0xfe000 with 0000:05:01.0"
    assert ra["shared-page"].status == "fail"
    assert ra["shared-page"].reason == shared_page_reason(a.sbdf, [hit])
    assert rc["shared-page"].status == "pass" and "alone" in rc["shared-page"].reason


def test_msix_table_sharing_a_page(tmp_path: Path) -> None:
    """cap-pcie-2: table BAR3+0 (10 vectors, 160 bytes), PBA BAR3+0x2000, BAR3 16K."""
    root = build_tree(tmp_path, load_dump(DUMPS / "cap-pcie-2"))
    by = rows_of(run_checks(load_host_facts(root)), "0000:01:00.0")
    assert by["msix-page"].status == "warn"
    assert "MSI-X table (BAR3 0x0+0xa0) shares its page(s) with 3936 other bytes" in (
        by["msix-page"].reason
    )
    assert "PBA (BAR3 0x2000+0x8)" in by["msix-page"].reason


# --- dom0's own use ---------------------------------------------------------------------------
def test_boot_vga_mounted_disk_and_bound_driver(tmp_path: Path) -> None:
    fns = load_dump(DUMPS / "tree-asus-p6t6")
    spec = HostSpec(
        boot_vga=["0000:06:00.0"],
        disks={"sda": "0000:00:1f.2"},
        mounts=[("/dev/sda1", "/", "ext4")],
        drivers={"0000:00:1b.0": "snd_hda_intel", "0000:07:00.0": "pci-stub"},
    )
    facts = load_host_facts(build_tree(tmp_path, fns, spec))
    rows = run_checks(facts)
    assert rows_of(rows, "0000:06:00.0")["dom0-use"].reason == (
        "dom0 uses it: it is the boot VGA device (dom0's console)"
    )
    sata = rows_of(rows, "0000:00:1f.2")["dom0-use"]
    assert sata.status == "fail" and "/dev/sda1 behind it is mounted on /" in sata.reason
    audio = rows_of(rows, "0000:00:1b.0")
    assert audio["dom0-use"].status == "warn" and "snd_hda_intel" in audio["dom0-use"].reason
    assert audio["pciback"].status == "warn"
    stub = rows_of(rows, "0000:07:00.0")
    assert stub["dom0-use"].status == "pass" and stub["pciback"].status == "pass"
    assert exit_status(rows) == 1


# --- reduced sources ------------------------------------------------------------------------
def test_nonroot_capture_says_what_it_cannot_see(tmp_path: Path) -> None:
    root = build_tree(tmp_path, load_dump(DUMPS / "cap-pcie-2"), HostSpec(nonroot=True))
    by = rows_of(run_checks(load_host_facts(root)), "0000:01:00.0")
    # reset_method is world-readable; the capabilities past byte 64 are not.
    assert by["reset"].status == "pass"
    assert by["msix-page"].status == "warn" and "(read as root)" in by["msix-page"].reason
    no_file = build_tree(
        tmp_path / "b",
        load_dump(DUMPS / "cap-pcie-2"),
        HostSpec(nonroot=True, reset_methods={"0000:01:00.0": ""}),
    )
    by = rows_of(run_checks(load_host_facts(no_file)), "0000:01:00.0")
    assert by["reset"].status == "fail" and "(read as root)" in by["reset"].reason


def test_dump_source_reduced_checks() -> None:
    result = runner.invoke(app, ["check", str(DUMPS / "cap-pcie-2"), "--json"])
    assert result.exit_code == 2, result.output  # warnings only: IOMMU, dom0 use unknown
    rows = {r["check"]: r for r in json.loads(result.output)["rows"]}
    assert rows["iommu"]["status"] == "warn" and "unknown" in rows["iommu"]["reason"]
    assert rows["reset"]["status"] == "pass" and "flr" in rows["reset"]["reason"]


def test_dump_with_iommu_group_lines() -> None:
    fns = load_dump(DUMPS / "cap-dev3")
    facts = facts_from_functions(fns, "cap-dev3")
    assert facts.iommu_enabled is True
    by = rows_of(run_checks(facts, [fns[0].sbdf]), str(fns[0].sbdf))
    assert by["iommu"].status == "pass"
    assert by["iommu-group"].reason.startswith(f"IOMMU group {fns[0].iommu_group}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "sysfs:/nonexistent"], "not a sysfs tree"),
        (["check", str(DUMPS / "cap-pcie-2"), "0000:09:00.0"], "no PCI function 0000:09:00.0"),
        (["check", str(DUMPS / "cap-pcie-2"), "zz"], "is not a PCI address"),
    ],
)
def test_bad_arguments_are_one_line_exit_3(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 3
    assert message in result.output and "Traceback" not in result.output


# --- this machine --------------------------------------------------------------------------------
def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


@pytest.mark.skipif(not _listdir("/sys/bus/pci/devices"), reason="no PCI bus on this machine")
def test_this_machine_real_sysfs() -> None:
    """The real sysfs read as it is. Without an IOMMU (this machine) every device fails
    the iommu row and nothing is called safe; with one, the rows say so."""
    has_iommu = bool(_listdir("/sys/class/iommu")) and bool(_listdir("/sys/kernel/iommu_groups"))
    result = runner.invoke(app, ["check", "--json"])
    out = json.loads(result.output)
    iommu_rows = [r for r in out["rows"] if r["check"] == "iommu"]
    assert iommu_rows
    if has_iommu:
        assert all(r["status"] == "pass" for r in iommu_rows)
        return
    assert out["iommu"] is False and out["status"] == "fail" and result.exit_code == 1
    assert all(r["status"] == "fail" and "no IOMMU" in r["reason"] for r in iommu_rows)
    # The device behind the root filesystem, found here independently of the rule.
    root_dev = next(
        (ln.split()[0] for ln in Path("/proc/mounts").read_text().splitlines()
         if ln.split()[1] == "/" and ln.startswith("/dev/")),
        None,
    )  # fmt: skip
    if root_dev is None:
        return
    target = os.path.realpath(f"/sys/class/block/{Path(root_dev).name}")
    owners = [p for p in target.split("/") if p.count(":") == 2 and "." in p]
    if owners:
        row = next(r for r in out["rows"] if r["check"] == "dom0-use" and r["device"] == owners[-1])
        assert row["status"] == "fail" and root_dev in row["reason"]


_NOBODY_CHILD = """
import json
from xenpci.check import load_host_facts, run_checks
facts = load_host_facts("/")
print(json.dumps([[str(r.device), r.rule, r.status, r.reason] for r in run_checks(facts)]))
"""


@pytest.mark.interop
def test_this_machine_as_nobody_reads_without_privilege() -> None:
    """Run as a non-root user, the report still comes out (config stops at 64 bytes) and
    agrees with root's about the IOMMU; where 64 bytes cannot answer it says so."""
    from tests.pci.test_sysfs_nonroot import SYSTEM_PYTHON, python_as_nobody

    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody (an unprivileged run is this case already)")
    if not _listdir("/sys/bus/pci/devices") or not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("no PCI functions here, or no system python")
    seen = json.loads(python_as_nobody(_NOBODY_CHILD))
    root_rows = run_checks(load_host_facts("/"))
    assert [(d, rule, st) for d, rule, st, _ in seen if rule == "iommu"] == [
        (str(r.device), r.rule, r.status) for r in root_rows if r.rule == "iommu"
    ]
    for d, rule, status, reason in seen:
        if rule == "msix-page" and status != "pass":
            assert "(read as root)" in reason or "size is unknown" in reason, (d, reason)


# --- hostile captured trees ---------------------------------------------------------------
def test_mounts_escapes_and_garbage() -> None:
    from xenpci.check.host import parse_mounts

    got = parse_mounts("/dev/sda1 /mnt/a\\040b ext4 rw 0 0\n\\x \\xZZ \\9\nshort line\n")
    assert [(m.device, m.mountpoint) for m in got] == [("/dev/sda1", "/mnt/a b"), ("\\x", "\\xZZ")]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "irq").write_text("eleven\n"), "expected a decimal number"),
        (lambda d: (d / "resource").write_text("0x1 0x0 0x0\n"), "expected one of"),
        (lambda d: (d / "vendor").write_text("0x1234\n"), "disagrees with config"),
    ],
)
def test_damaged_capture_is_one_line_exit_3(tmp_path: Path, damage: object, message: str) -> None:
    root = build_tree(tmp_path, load_dump(DUMPS / "cap-pci-af"))
    d = (root / "sys" / "bus" / "pci" / "devices" / UHCI).resolve()
    damage(d)  # type: ignore[operator]
    result = runner.invoke(app, ["check", f"sysfs:{root}"])
    assert result.exit_code == 3, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
