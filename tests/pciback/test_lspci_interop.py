"""Real devices (pciutils' own test dumps) seized by pciback, and the guest's view
decoded by the real ``lspci -F`` as the independent reader."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TOOL_TIMEOUT
from tests.interop import require_executable, require_file
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.config import ConfigSpace
from xenpci.pci.dump import format_dump, load_dump
from xenpci.pci.function import PciFunction
from xenpci.pciback.conf_space import DevData, DeviceOptions, config_read
from xenpci.pciback.conf_space.explain import explain
from xenpci.pciback.errors import SeizeError
from xenpci.pciback.pci_stub import PciStub

DUMPS = Path("/work/shared/data/lspci-dumps")
CAP_RE = re.compile(r"^\s*Capabilities: \[([0-9a-f]+)(?: v\d+)?\] (.*)$", re.M)


def guest_function(dd: DevData) -> PciFunction:
    size = dd.hw.config.size
    data = b"".join(
        (config_read(dd, off, 4)[1] & 0xFFFFFFFF).to_bytes(4, "little") for off in range(0, size, 4)
    )
    return PciFunction(dd.hw.sbdf, ConfigSpace(data, size), source="guest-view")


def lspci_caps(lspci: str, fns: list[PciFunction], tmp: Path) -> list[list[str]]:
    """Capability lines lspci prints per function (renumbered: dumps reuse BDFs)."""
    renumbered = [
        PciFunction(SBDF(0, 1 + i // 32, i % 32, 0), fn.config.copy(), source=fn.source)
        for i, fn in enumerate(fns)
    ]
    path = tmp / "view.txt"
    path.write_text(format_dump(renumbered))
    out = subprocess.run(
        [lspci, "-F", str(path), "-vvv"],
        capture_output=True,
        text=True,
        check=True,
        timeout=TOOL_TIMEOUT,
    ).stdout
    blocks = [b for b in out.strip().split("\n\n") if b.strip()]
    return [[m.group(2) for m in CAP_RE.finditer(b)] for b in blocks]


def seized_functions(policy: str) -> list[tuple[PciFunction, DevData]]:
    out = []
    for dump in sorted(DUMPS.iterdir()):
        if dump.name == "README.md":
            continue
        stub = PciStub()
        for fn in load_dump(dump):
            if fn.config.known_size < regs.PCI_STD_HEADER_SIZEOF:
                continue
            try:
                psdev = stub.seize(fn, DeviceOptions(policy=policy))  # type: ignore[arg-type]
            except SeizeError as e:
                assert fn.config.header_type not in (0, 1), e
                continue
            out.append((fn, psdev.dev_data))
    return out


@pytest.mark.interop
def test_strict_guest_view_lists_only_msi_caps(tmp_path: Path) -> None:
    lspci = require_executable("lspci")
    require_file(DUMPS / "cap-pcie-1")
    pairs = seized_functions("strict")
    assert len(pairs) > 30
    host = lspci_caps(lspci, [fn for fn, _ in pairs], tmp_path)
    guest = lspci_caps(lspci, [guest_function(dd) for _, dd in pairs], tmp_path)
    assert len(host) == len(guest) == len(pairs)
    exposed_somewhere = 0
    for h, g in zip(host, guest, strict=True):
        want = [c for c in h if c.startswith(("MSI:", "MSI-X:"))]
        assert [c.split(":")[0] for c in g] == [c.split(":")[0] for c in want]
        exposed_somewhere += bool(g)
    assert exposed_somewhere > 5


@pytest.mark.interop
def test_linux_guest_view_keeps_every_cap(tmp_path: Path) -> None:
    """Linux does not hide capabilities; only PMC's PME bits and the flags
    rules differ, so lspci names the same capabilities in the same places."""
    lspci = require_executable("lspci")
    require_file(DUMPS / "cap-pcie-1")
    pairs = seized_functions("linux")
    host = lspci_caps(lspci, [fn for fn, _ in pairs], tmp_path)
    guest = lspci_caps(lspci, [guest_function(dd) for _, dd in pairs], tmp_path)
    for (fn, dd), h, g in zip(pairs, host, guest, strict=True):
        assert [c.split(":")[0] for c in g] == [c.split(":")[0] for c in h], fn.source
        for d in explain(dd):  # every difference is named by a real rule
            assert d.rule.split(".")[0] in {"header", "pm", "msi", "msix", "vpd"}, d
