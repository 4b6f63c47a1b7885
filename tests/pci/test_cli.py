"""``xenpci pci convert`` and ``xenpci pci show`` through the real typer app."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xenpci.cli.main import app
from xenpci.cli.pci import format_size
from xenpci.pci.dump import load_dump

from .conftest import DUMPS_DIR, lspci_output

runner = CliRunner()
NIC = DUMPS_DIR / "cap-pcie-2"


def test_convert_file_to_file(tmp_path: Path) -> None:
    out = tmp_path / "nic.lspci"
    result = runner.invoke(app, ["pci", "convert", str(NIC), "-o", str(out)])
    assert result.exit_code == 0, result.output
    (fn,) = load_dump(out)
    assert fn.config.known() == load_dump(NIC)[0].config.known()


@pytest.mark.interop
def test_convert_one_device_is_read_by_lspci(tmp_path: Path) -> None:
    tree = DUMPS_DIR / "tree-asus-p6t6"
    out = tmp_path / "one.lspci"
    result = runner.invoke(app, ["pci", "convert", f"{tree}@00:1f.2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = lspci_output(out, "-vvv")
    assert text.startswith("00:1f.2 ")
    assert text.count("\n\n") == 1


def test_convert_sysfs_to_stdout(fake_sysfs: Callable[..., Path]) -> None:
    root = fake_sysfs("0000:01:00.0", load_dump(NIC)[0].config.known()[:64])
    result = runner.invoke(
        app, ["pci", "convert", "sysfs:01:00.0", "-o", "-", "--sysfs-root", str(root)]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("01:00.0 0200: 8086:10c9")
    assert len(lines) == 6 and lines[-1] == ""  # header, the 4 rows of a non-root read, blank


def test_show_table(fake_sysfs: Callable[..., Path]) -> None:
    result = runner.invoke(app, ["pci", "show", str(NIC)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    out = result.output
    for text in (
        "0000:01:00.0",
        "8086:10c9",
        "Intel Corporation 82576 Gigabit Network Connection",
        "Ethernet controller",
        "0: mem32 0xe0800000 [size=128K]",
        "2: I/O 0x1020 [size=32]",
        "ROM: ROM disabled 0xc7800000 [size=4M]",
        "[a0] Express",
        "[160] Single Root I/O Virtualization",
    ):
        assert text in out


def test_show_reports_unknown_sizes_and_truncation(fake_sysfs: Callable[..., Path]) -> None:
    root = fake_sysfs("0000:01:00.0", load_dump(NIC)[0].config.known()[:64])
    result = runner.invoke(
        app, ["pci", "show", "sysfs", "--sysfs-root", str(root)], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 0, result.output
    assert "[size=?]" in result.output
    assert "config truncated at 64 bytes (non-root sysfs read" in result.output


@pytest.mark.parametrize(
    "argv",
    [
        ["pci", "show", "/no/such/dump"],
        ["pci", "convert", f"{NIC}@07:00.0", "-o", "-"],
    ],
)
def test_errors_exit_1_with_message(argv: list[str]) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 1
    assert result.output.startswith("xenpci pci: ")


def test_hostile_dump_is_a_clean_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("00:00.0 x\n00: 86 80 d3 1\n")
    result = runner.invoke(app, ["pci", "show", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:2: malformed byte '1'" in result.output


@pytest.mark.parametrize(
    ("size", "text"),
    [(None, "?"), (32, "32"), (16384, "16K"), (4 << 20, "4M"), (1536, "1536"), (1 << 30, "1G")],
)
def test_format_size_like_lspci(size: int | None, text: str) -> None:
    assert format_size(size) == text
