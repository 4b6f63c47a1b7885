"""Fixtures for the PCI core tests: the shared real dumps and a fake sysfs tree."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import TOOL_TIMEOUT
from tests.interop import require_executable

DUMPS_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "lspci-dumps"
if not DUMPS_DIR.is_dir():  # the repository may be checked out elsewhere (CI)
    DUMPS_DIR = Path("/work/shared/data/lspci-dumps")
DUMP_FILES = sorted(p for p in DUMPS_DIR.glob("*") if p.is_file() and p.suffix != ".md")


_HEADER = re.compile(r"^(?:[0-9a-f]{4,6}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] ")


def dump_blocks(path: Path) -> list[list[str]]:
    """Split a dump file into per-device line lists (header line first)."""
    return _split_blocks(path.read_text(encoding="latin-1").splitlines())


@pytest.fixture
def fake_sysfs(tmp_path: Path) -> Callable[..., Path]:
    """Build ``tmp/devices/<BDF>/`` with the files Linux's pci-sysfs.c provides.

    Returns a function ``add(bdf, config, resource=..., **attrs)`` that creates
    one function directory and returns the devices root.
    """
    root = tmp_path / "devices"
    root.mkdir()
    (tmp_path / "iommu_groups").mkdir()
    (tmp_path / "drivers").mkdir()

    def add(
        bdf: str,
        config: bytes,
        *,
        resource: list[tuple[int, int, int]] | None = None,
        vendor: int | None = None,
        device: int | None = None,
        klass: int | None = None,
        iommu_group: int | None = None,
        driver: str | None = None,
        reset_method: str | None = None,
    ) -> Path:
        d = root / bdf
        d.mkdir()
        (d / "config").write_bytes(config)
        res = resource if resource is not None else [(0, 0, 0)] * 7
        (d / "resource").write_text(
            "".join(f"0x{s:016x} 0x{e:016x} 0x{f:016x}\n" for s, e, f in res)
        )
        if len(config) >= 4:
            v = int.from_bytes(config[0:2], "little") if vendor is None else vendor
            dv = int.from_bytes(config[2:4], "little") if device is None else device
            (d / "vendor").write_text(f"0x{v:04x}\n")
            (d / "device").write_text(f"0x{dv:04x}\n")
        if len(config) >= 12:
            k = int.from_bytes(config[9:12], "little") if klass is None else klass
            (d / "class").write_text(f"0x{k:06x}\n")
        if iommu_group is not None:
            g = tmp_path / "iommu_groups" / str(iommu_group)
            g.mkdir(exist_ok=True)
            os.symlink(os.path.relpath(g, d), d / "iommu_group")
        if driver is not None:
            drv = tmp_path / "drivers" / driver
            drv.mkdir(exist_ok=True)
            os.symlink(os.path.relpath(drv, d), d / "driver")
        if reset_method is not None:
            (d / "reset_method").write_text(reset_method + "\n")
        return root

    return add


@functools.cache
def _lspci_text(path: str, args: tuple[str, ...]) -> str:
    out = subprocess.run(
        ["lspci", "-F", path, *args],
        capture_output=True,
        text=True,
        encoding="latin-1",
        check=True,
        timeout=TOOL_TIMEOUT,
    )
    return out.stdout


def lspci_output(path: Path | str, *args: str) -> str:
    """``lspci -F PATH ARGS`` (real pciutils), cached per file and arguments."""
    require_executable("lspci")
    return _lspci_text(str(path), args)


def lspci_blocks(path: Path, *args: str) -> list[list[str]]:
    """Per-device blocks of real ``lspci -F PATH ARGS`` output."""
    return _split_blocks(lspci_output(path, *args).splitlines())


def _split_blocks(lines: list[str]) -> list[list[str]]:
    blocks: list[list[str]] = []
    cur: list[str] | None = None
    for line in lines:
        if _HEADER.match(line):
            cur = [line]
            blocks.append(cur)
        elif not line:
            cur = None
        elif cur is not None:
            cur.append(line)
    return blocks
