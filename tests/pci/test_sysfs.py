"""The sysfs source on a fake tree (exact pci-sysfs.c formats) and on this host."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TOOL_TIMEOUT
from tests.interop import require_executable
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.conformance import check_pci_function
from xenpci.pci.dump import load_dump, parse_dump
from xenpci.pci.errors import SourceError
from xenpci.pci.sysfs import SYSFS_PCI_DEVICES, load_sysfs, load_sysfs_function, parse_resource

from .conftest import DUMPS_DIR

AddFn = Callable[..., Path]


def _nic_config() -> bytes:
    return load_dump(DUMPS_DIR / "cap-pcie-2")[0].config.known()


# Resource lines as Linux prints them for that 82576: BAR0-3, ROM (observed formats).
NIC_RESOURCE = [
    (0xE0800000, 0xE081FFFF, 0x40200),
    (0xE0000000, 0xE03FFFFF, 0x40200),
    (0x1020, 0x103F, 0x40101),
    (0xE0840000, 0xE0843FFF, 0x40200),
    (0, 0, 0),
    (0, 0, 0),
    (0xC7800000, 0xC7BFFFFF, 0x46200),
]


def test_full_config_root_read(fake_sysfs: AddFn) -> None:
    root = fake_sysfs(
        "0000:01:00.0",
        _nic_config(),
        resource=NIC_RESOURCE,
        iommu_group=7,
        driver="igb",
        reset_method="flr bus",
    )
    (fn,) = load_sysfs(root)
    assert fn.sbdf == SBDF(0, 1, 0, 0)
    assert fn.config.size == 4096 and fn.config.known_size == 4096
    assert fn.bar_sizes == {0: 128 << 10, 1: 4 << 20, 2: 32, 3: 16 << 10, 6: 4 << 20}
    assert [(b.index, b.kind, b.size) for b in fn.bars] == [
        (0, "mem32", 128 << 10),
        (1, "mem32", 4 << 20),
        (2, "io", 32),
        (3, "mem32", 16 << 10),
        (6, "rom", 4 << 20),
    ]
    assert (fn.iommu_group, fn.driver, fn.reset_methods()) == (7, "igb", ["flr", "bus"])
    assert fn.notes == []
    assert fn.source == f"sysfs:{root / '0000:01:00.0'}"


def test_non_root_read_stops_at_64_bytes(fake_sysfs: AddFn) -> None:
    root = fake_sysfs("0000:01:00.0", _nic_config()[:64], resource=NIC_RESOURCE)
    (fn,) = load_sysfs(root, SBDF.parse("01:00.0"))
    assert fn.config.known_size == 64
    assert fn.config.read(0x40, 4) == 0xFFFFFFFF  # unknown, not invented
    assert fn.capabilities == []
    assert any("config truncated at 64 bytes (non-root" in n for n in fn.notes)
    assert fn.reset_methods() == []  # no reset_method file: Linux found none


def test_resource_parsing_formats() -> None:
    text = "".join(f"0x{s:016x} 0x{e:016x} 0x{f:016x}\n" for s, e, f in NIC_RESOURCE)
    assert parse_resource(text, "r") == {0: 128 << 10, 1: 4 << 20, 2: 32, 3: 16 << 10, 6: 4 << 20}
    bridge = text + "0x0000000000001000 0x0000000000001fff 0x0000000000000100\n" * 4
    assert parse_resource(bridge, "r")[0] == 128 << 10  # windows are not BARs
    with pytest.raises(SourceError, match="8 lines"):
        parse_resource(text + "0x0 0x0 0x0\n", "r")
    with pytest.raises(SourceError) as exc:
        parse_resource(text.replace("0x00000000e0800000", "0xzz", 1), "res")
    assert exc.value.where == "res:1"
    with pytest.raises(SourceError, match="below start"):
        parse_resource(text.replace("0x00000000e081ffff", "0x0000000000000001", 1), "res")


def test_attributes_must_agree_with_config(fake_sysfs: AddFn) -> None:
    root = fake_sysfs("0000:01:00.0", _nic_config(), vendor=0x1234)
    with pytest.raises(SourceError) as exc:
        load_sysfs(root)
    assert exc.value.where.endswith("0000:01:00.0/vendor")
    assert "disagrees" in exc.value.reason


def test_bad_directory_names_and_missing_bdf(fake_sysfs: AddFn, tmp_path: Path) -> None:
    root = fake_sysfs("0000:01:00.0", _nic_config())
    with pytest.raises(SourceError, match=r"no PCI function 0000:02:00\.0"):
        load_sysfs(root, SBDF.parse("02:00.0"))
    (root / "not-a-bdf").mkdir()
    with pytest.raises(SourceError, match="bad PCI address"):
        load_sysfs(root)
    with pytest.raises(SourceError, match="cannot list"):
        load_sysfs(tmp_path / "nowhere")


def test_sources_are_never_written(fake_sysfs: AddFn) -> None:
    root = fake_sysfs("0000:01:00.0", _nic_config(), resource=NIC_RESOURCE)
    cfg = root / "0000:01:00.0" / "config"
    os.chmod(cfg, 0o444)
    before = (cfg.read_bytes(), cfg.stat().st_mtime_ns)
    (fn,) = load_sysfs(root)
    fn.config_write(regs.PCI_COMMAND, 2, 0)
    for method in fn.reset_methods():
        fn.reset(method)
    assert (cfg.read_bytes(), cfg.stat().st_mtime_ns) == before


@pytest.mark.interop
def test_this_hosts_sysfs_matches_lspci() -> None:
    """Config bytes and BAR sizes of the host's functions equal what real lspci reads."""
    lspci = require_executable("lspci")
    if not SYSFS_PCI_DEVICES.is_dir() or not os.listdir(SYSFS_PCI_DEVICES):
        pytest.skip("no PCI functions in this machine's sysfs")
    functions = load_sysfs()
    text = subprocess.run(
        [lspci, "-D", "-vv", "-xxxx"],
        capture_output=True,
        text=True,
        check=True,
        timeout=TOOL_TIMEOUT,
    ).stdout
    listed = parse_dump(text, "lspci -D -vv -xxxx")
    assert [f.sbdf for f in functions] == [f.sbdf for f in listed]
    for ours, theirs in zip(functions, listed, strict=True):
        n = min(ours.config.known_size, theirs.config.known_size)
        assert ours.config.known()[:n] == theirs.config.known()[:n]
        # lspci -vv prints [size=] from the same resource file.
        assert ours.bar_sizes == theirs.bar_sizes
        if ours.config.known_size < regs.PCI_CFG_SPACE_SIZE:
            assert any("non-root" in note for note in ours.notes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=st.binary(max_size=300),
    resource=st.text(alphabet="0x123456789abcdef \n", max_size=200),
)
def test_hostile_sysfs_files_only_raise_source_error(config: bytes, resource: str) -> None:
    """Whatever the files hold, loading gives a function or a SourceError naming the file."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "0000:00:01.0"
        d.mkdir()
        (d / "config").write_bytes(config)
        (d / "resource").write_text(resource)
        try:
            fn = load_sysfs_function(d)
        except SourceError as e:
            assert e.where.startswith(str(d))
            return
        assert fn.config.known_size == len(config)
        if len(config) >= 64 and fn.vendor_id not in (0, 0xFFFF):
            check_pci_function(fn)
