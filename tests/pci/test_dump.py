"""lspci dump reader and writer: every shared real dump, lspci -F round trips, hostile input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TOOL_TIMEOUT
from tests.interop import require_executable
from xenpci.pci.address import SBDF
from xenpci.pci.capabilities import walk_capabilities
from xenpci.pci.dump import format_dump, load_dump, parse_dump
from xenpci.pci.errors import SourceError
from xenpci.pci.sysfs import load_sysfs

from .conftest import DUMP_FILES, DUMPS_DIR, dump_blocks, lspci_output

ROW0 = "00: 86 80 d3 10 07 04 10 00 00 00 00 02 10 00 80 00"


def test_shared_dumps_exist() -> None:
    assert len(DUMP_FILES) >= 30


@pytest.mark.parametrize("path", DUMP_FILES, ids=lambda p: p.name)
def test_every_shared_dump_loads(path: Path) -> None:
    functions = load_dump(path)
    blocks = dump_blocks(path)
    assert [str(f.sbdf) for f in functions] == [
        str(SBDF.parse(b[0].split(" ", 1)[0])) for b in blocks
    ]
    for fn, block in zip(functions, blocks, strict=True):
        rows = [line for line in block if line[:1] in "0123456789abcdef" and ": " in line[:5]]
        assert fn.config.known_size == 16 * len(rows)
        first = bytes.fromhex(rows[0].split(": ", 1)[1])
        assert fn.config.raw()[:16] == first
        assert fn.source == f"dump:{path}:{_line_of(path, block[0])}"


def _line_of(path: Path, header: str) -> int:
    return path.read_text(encoding="latin-1").splitlines().index(header) + 1


@pytest.mark.parametrize("path", DUMP_FILES, ids=lambda p: p.name)
def test_writer_roundtrip(path: Path) -> None:
    functions = load_dump(path)
    again = parse_dump(format_dump(functions), "converted")
    assert [f.sbdf for f in again] == [f.sbdf for f in functions]
    assert [f.config.known() for f in again] == [f.config.known() for f in functions]


@pytest.mark.interop
@pytest.mark.parametrize("path", DUMP_FILES, ids=lambda p: p.name)
def test_lspci_reads_converted_dump_identically(path: Path, tmp_path: Path) -> None:
    """Real ``lspci -F original -vvv`` and ``lspci -F converted -vvv`` print the same text."""
    out = tmp_path / "converted"
    out.write_text(format_dump(load_dump(path)))
    assert lspci_output(out, "-vvv") == lspci_output(path, "-vvv")
    assert lspci_output(out, "-xxxx") == lspci_output(path, "-xxxx")


@pytest.mark.interop
def test_lspci_reads_converted_sysfs_identically(tmp_path: Path) -> None:
    """This host: lspci's own -xxxx dump and our sysfs conversion decode the same."""
    lspci = require_executable("lspci")
    functions = load_sysfs()
    if not functions:
        pytest.skip("this machine has no PCI functions in sysfs")
    original = tmp_path / "host.lspci"
    original.write_text(
        subprocess.run(
            [lspci, "-xxxx"], capture_output=True, text=True, check=True, timeout=TOOL_TIMEOUT
        ).stdout
    )
    converted = tmp_path / "host.converted"
    converted.write_text(format_dump(functions))
    assert lspci_output(converted, "-vvv") == lspci_output(original, "-vvv")


def test_sizes_iommu_group_and_driver_from_text() -> None:
    fn = load_dump(DUMPS_DIR / "cap-pcie-2")[0]
    # "Region 0: Memory at e0800000 (32-bit, non-prefetchable) [size=128K]" etc.
    assert fn.bar_sizes == {0: 128 << 10, 1: 4 << 20, 2: 32, 3: 16 << 10, 6: 4 << 20}
    assert [b.size for b in fn.bars] == [128 << 10, 4 << 20, 32, 16 << 10, 4 << 20]
    phy = load_dump(DUMPS_DIR / "cap-phy32")[0]
    assert phy.iommu_group == 76
    assert phy.bar_sizes == {0: 32 << 10}  # the SR-IOV VF "Region 0" line is not ours


def test_unknown_sizes_are_reported() -> None:
    fn = parse_dump("00:02.0 VGA\n" + ROW0 + "\n10: 00 00 00 e0 00 00 00 00" + " 00" * 8 + "\n")[0]
    assert fn.bars[0].size is None
    assert any("size unknown for BAR 0" in n for n in fn.notes)


def test_truncated_dump_keeps_only_known_bytes() -> None:
    text = "00:03.0 x\n" + "\n".join(f"{o:02x}: " + " ".join(["10"] * 16) for o in (0, 16, 32, 48))
    fn = parse_dump(text + "\n")[0]
    assert fn.config.known_size == 64
    assert walk_capabilities(fn.config) == []  # 0x34 points at 0x10: nothing beyond 0x40
    assert any("truncated at 64 bytes" in n for n in fn.notes)
    assert format_dump([fn]).count("\n") == 6  # header, 4 rows, blank


def test_gaps_read_as_ff_and_crlf_is_accepted() -> None:
    fn = parse_dump("0001:02:03.4 x\r\n" + ROW0 + "\r\n20: " + "00 " * 16 + "\r\n")[0]
    assert fn.sbdf == SBDF(1, 2, 3, 4)
    assert fn.config.read(0x10, 4) == 0xFFFFFFFF
    assert fn.config.known_size == 0x30


def test_many_devices_and_text_lines() -> None:
    text = "00:00.0 Host bridge: foo\n\tControl: I/O-\n" + ROW0 + "\n\n00:01.0 bar\n" + ROW0 + "\n"
    assert [str(f.sbdf) for f in parse_dump(text)] == ["0000:00:00.0", "0000:00:01.0"]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("00:00.0 x\n00: 86 80 d3 1\n", 2, "malformed byte '1'"),
        ("00:00.0 x\n00: 86 80 zz 10\n", 2, "malformed byte 'zz'"),
        ("00:00.0 x\n00: 86  80\n", 2, "malformed byte ''"),
        ("00:00.0 x\nff8: " + "00 " * 9 + "\n", 2, "at most 4096 bytes"),
        ("00:00.0 x\n1000: 00\n", 2, "at most 4096 bytes"),
        ("00: 86 80\n", 1, "outside a device"),
        ("00:00.0 x\n\n00: 86 80\n", 3, "outside a device"),
        ("00:00.0 a\n00: 00\n\n00:00.0 b\n", 4, "already defined at line 1"),
        ("10000:00:00.0 x\n", 1, "16-bit PCI segment"),
        ("00:20.0 x\n", 1, "device"),
        ("00:00.0 x\n\tRegion 7: Memory at 0 [size=4K]\n", 2, "region index 7"),
        ("00:00.0 " + "x" * 300 + "\n", 1, "longer than 255"),
    ],
)
def test_hostile_dumps_name_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(SourceError) as exc:
        parse_dump(text, "evil.txt")
    assert exc.value.where == f"evil.txt:{line}"
    assert fragment in exc.value.reason


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot read"):
        load_dump(tmp_path / "missing")


_fuzz_lines = st.lists(
    st.one_of(
        st.sampled_from(["", "00:00.0 x", "0000:01:00.0 y", "\tRegion 0: Memory at 0 [size=4K]"]),
        st.builds(
            lambda off, bs: f"{off:02x}: " + " ".join(f"{b:02x}" for b in bs),
            st.integers(0, 0x1100),
            st.lists(st.integers(0, 255), max_size=17),
        ),
        st.text(alphabet="0123456789abcdef: .\t\r-[]=xRegionsz", max_size=40),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fuzz_lines)
def test_parser_fuzz_only_raises_source_error(lines: list[str]) -> None:
    try:
        functions = parse_dump("\n".join(lines) + "\n", "fuzz")
    except SourceError as e:
        assert e.where.startswith("fuzz:")
        return
    for fn in functions:
        assert 0 <= fn.config.known_size <= fn.config.size
        again = parse_dump(format_dump([fn]), "again")[0]
        assert again.config.known() == fn.config.known()
