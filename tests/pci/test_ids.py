"""pci.ids parsing, checked against the names real lspci prints for the shared dumps."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.interop import require_file
from xenpci.pci import regs
from xenpci.pci.dump import load_dump
from xenpci.pci.errors import SourceError
from xenpci.pci.ids import PCI_IDS_PATH, load_pci_ids, parse_pci_ids

from .conftest import DUMP_FILES, lspci_output

SAMPLE = """\
# comment
8086  Intel Corporation
\t10c9  82576 Gigabit Network Connection
\t\t8086 a03c  Gigabit ET Dual Port Server Adapter
1af4  Red Hat, Inc.
C 02  Network controller
\t00  Ethernet controller
\t\t01  some prog-if
C 0c  Serial bus controller
"""


def test_parse_sample() -> None:
    ids = parse_pci_ids(SAMPLE)
    assert ids.vendor_name(0x8086) == "Intel Corporation"
    assert ids.device_name(0x8086, 0x10C9) == "82576 Gigabit Network Connection"
    assert ids.subsystem_name(0x8086, 0x10C9, 0x8086, 0xA03C) == (
        "Gigabit ET Dual Port Server Adapter"
    )
    assert ids.class_name(0x020000) == "Ethernet controller"
    assert ids.class_name(0x0C8000) == "Serial bus controller [0c80]"  # unknown subclass
    assert ids.prog_ifs[(2, 0, 1)] == "some prog-if"
    # lspci's own fallbacks for unknown IDs
    assert ids.vendor_name(0x1234) == "Vendor 1234"
    assert ids.subsystem_vendor_name(0x1234) == "Unknown vendor 1234"
    assert ids.device_name(0x1AF4, 0x9999) == "Device 9999"
    assert ids.class_name(0xFF0000) == "Class ff00"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("\t1234  orphan\n", 1, "before any vendor"),
        ("80x6  bad\n", 1, "4 hex digits"),
        ("8086  x\n\t\t\t1  deep\n", 2, "depth 3"),
        ("C 0z  bad class\n", 1, "2 hex digits"),
    ],
)
def test_malformed_ids(text: str, line: int, fragment: str) -> None:
    with pytest.raises(SourceError) as exc:
        parse_pci_ids(text, "ids")
    assert exc.value.where == f"ids:{line}" and fragment in exc.value.reason


def test_loaded_once_and_cached() -> None:
    require_file(PCI_IDS_PATH)
    assert load_pci_ids() is load_pci_ids(str(PCI_IDS_PATH))


@pytest.mark.interop
@pytest.mark.parametrize("path", DUMP_FILES, ids=lambda p: p.name)
def test_names_match_lspci_mm(path: Path) -> None:
    """Class, vendor, device and subsystem names equal ``lspci -F FILE -mm``."""
    ids = load_pci_ids(require_file(PCI_IDS_PATH))
    rows = [shlex.split(line) for line in lspci_output(path, "-mm").splitlines() if line]
    functions = load_dump(path)
    assert len(rows) == len(functions)
    for fn, row in zip(functions, rows, strict=True):
        cs = fn.config
        assert row[1] == ids.class_name(cs.class_code)
        assert row[2] == ids.vendor_name(cs.vendor_id)
        assert row[3] == ids.device_name(cs.vendor_id, cs.device_id)
        if cs.header_type == regs.PCI_HEADER_TYPE_NORMAL and len(row) >= 8 and row[-1]:
            sv = cs.read(regs.PCI_SUBSYSTEM_VENDOR_ID, 2)
            sd = cs.read(regs.PCI_SUBSYSTEM_ID, 2)
            assert row[-2] == ids.subsystem_vendor_name(sv)
            assert row[-1] == ids.subsystem_name(cs.vendor_id, cs.device_id, sv, sd)
