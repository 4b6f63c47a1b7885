"""The catalog, the model: source scheme, and real lspci decoding every model."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import TOOL_TIMEOUT
from tests.interop import require_executable, require_file
from xenpci.devices import catalog
from xenpci.devices.errors import CatalogError, DeviceError
from xenpci.pci.address import SBDF
from xenpci.pci.dump import format_dump
from xenpci.pci.errors import SourceError
from xenpci.pci.sources import open_source, source_schemes


def test_model_scheme_is_registered_by_importing_devices() -> None:
    assert "model" in source_schemes()
    fns = open_source("model:nic")
    assert [f.source for f in fns] == ["model:nic"]
    assert fns[0].sbdf == catalog.DEFAULT_SBDF


def test_model_scheme_with_address() -> None:
    fns = open_source("model:multifunction@0000:07:02.0")
    assert [str(f.sbdf) for f in fns] == ["0000:07:02.0", "0000:07:02.1"]
    assert all(f.config.multifunction for f in fns)
    assert {f.source for f in fns} == {"model:multifunction"}


@pytest.mark.parametrize("spec", ["model:toaster", "model:nic@zz:00.0", "model:"])
def test_bad_model_specs_are_source_errors(spec: str) -> None:
    with pytest.raises(SourceError) as err:
        open_source(spec)
    assert err.value.where == spec


def test_unknown_name_lists_the_catalog() -> None:
    with pytest.raises(CatalogError) as err:
        catalog.make("toaster")
    assert err.value.known == catalog.names()


def test_bridge_needs_a_bus_behind_it() -> None:
    with pytest.raises(DeviceError):
        catalog.make("bridge", SBDF(0, 0xFF, 0, 0))


def test_every_model_is_independent() -> None:
    a, b = catalog.make("nic")[0], catalog.make("nic")[0]
    a.config_write(4, 2, 6)
    assert b.config_read(4, 2) == 0


# pci.ids names lspci prints for the IDs that are registered (the rest print "Device XXXX").
EXPECTED_LINES = {
    "nic": [
        "Ethernet controller: Red Hat, Inc.",
        "MSI-X: Enable- Count=3 Masked-",
        "Express (v2) Endpoint",
        "FLReset+",
        "Power Management version 3",
    ],
    "nvme": [
        "Non-Volatile memory controller: Red Hat, Inc. QEMU NVM Express Controller",
        "MSI-X: Enable- Count=8 Masked-",
        "Vector table: BAR=0 offset=00002000",
        "PBA: BAR=0 offset=00003000",
        "Region 0: Memory at fe000000 (64-bit, non-prefetchable)",
    ],
    "gpu": [
        "3D controller: Red Hat, Inc.",
        "MSI: Enable- Count=1/4 Maskable+ 64bit+",
        "Region 2: Memory at c0000000 (64-bit, prefetchable)",
        "Expansion ROM at fe010000 [disabled]",
    ],
    "legacy": [
        "Serial controller: Red Hat, Inc. QEMU PCI 16550A Adapter",
        "Region 0: I/O ports at c000",
        "Interrupt: pin A",
    ],
    "subpage": [
        "System peripheral: Red Hat, Inc.",
        "Region 0: Memory at fe000000 (32-bit, non-prefetchable)",
        "Region 1: Memory at fe000100 (32-bit, non-prefetchable)",
        "Region 2: I/O ports at c000",
        "MSI: Enable- Count=1/1 Maskable- 64bit-",
    ],
    "multifunction": ["00.1 Ethernet controller"],
    "bridge": [
        "PCI bridge: Red Hat, Inc.",
        "PCI-Express to PCI/PCI-X Bridge",
        "Bus: primary=10, secondary=11, subordinate=11",
        "11:00.0 Serial controller: Red Hat, Inc. QEMU PCI 16550A Adapter",
    ],
}


def test_lspci_expectations_cover_the_whole_catalog() -> None:
    """A model added to the catalog without lspci expectations would go undecoded."""
    assert sorted(EXPECTED_LINES) == sorted(catalog.names())


def place(fns: list[catalog.DeviceModel]) -> None:
    """Assign addresses like firmware would, so lspci shows every region."""
    mem, io = 0xFE00_0000, 0xC000
    for fn in fns:
        for bar in sorted(fn.bars, key=lambda b: -(b.size or 0)):
            if bar.kind == "mem64" and bar.prefetchable:
                # Below 4 GiB: lspci -F shows the upper dword of a 64-bit BAR
                # above 4 GiB as an extra "Region N+1 <unassigned>" line.
                fn.assign_bar(bar.index, 0xC000_0000)
            elif bar.kind == "io":
                fn.assign_bar(bar.index, io)
                io += max(bar.size or 0, 16)
            else:
                fn.assign_bar(bar.index, mem)
                mem += bar.size or 0


@pytest.mark.interop
@pytest.mark.parametrize("name", sorted(EXPECTED_LINES))
def test_lspci_decodes_every_model(name: str, tmp_path: Path) -> None:
    lspci = require_executable("lspci")
    require_file("/usr/share/misc/pci.ids")
    fns = catalog.make(name, SBDF(0, 0x10, 0, 0))
    place(fns)
    dump = tmp_path / f"{name}.dump"
    dump.write_text(format_dump(fns))
    out = subprocess.run(
        [lspci, "-F", str(dump), "-vvv"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=True,
    ).stdout
    assert out.count("\n\n") + (0 if out.endswith("\n\n") else 1) >= len(fns)
    for line in EXPECTED_LINES[name]:
        assert line in out, f"{line!r} missing from:\n{out}"
    for noise in ("<?>", "nknown", "<unassigned>", "<access denied>", "Unclassified"):
        assert noise not in out, f"{noise!r} in:\n{out}"
