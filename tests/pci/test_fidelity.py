"""Issue 13 §1: one odd function never rejects a dump, dom0's resources and routed
IRQ from the source, and ``--bar-size`` for dumps without ``Region`` lines."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xenpci.cli.main import app
from xenpci.cli.pci import parse_bar_size
from xenpci.pci import bar as B
from xenpci.pci.dump import load_dump, parse_dump

from .conftest import DUMP_FILES, DUMPS_DIR, lspci_output

runner = CliRunner()
DATA = Path(__file__).parent / "data"
IDE = DATA / "legacy-ide"


def test_legacy_ide_does_not_reject_the_dump() -> None:
    """The 03f4 [size=1] region that used to fail the whole file: both functions load."""
    ide, nic = load_dump(IDE)
    assert any(n.startswith("legacy IDE mode") for n in ide.notes)
    assert not any("not decoded" in n for n in ide.notes + nic.notes)
    assert [b.index for b in ide.bars] == [4]  # BAR0-3 registers are not Linux's
    assert nic.bar_sizes == {0: 128 << 10, 1: 64, 6: 256 << 10}


def test_legacy_ide_resources_as_linux_sets_them() -> None:
    """pci_setup_device: 0x1f0+8, 0x3f6+1, 0x170+8, 0x376+1 with LEGACY_IO_RESOURCE flags,
    not lspci's printed 03f4/0374 (an I/O address masked with ~3)."""
    ide = load_dump(IDE)[0]
    res = ide.resources
    assert [(r.index, r.start, r.size) for r in res.values()][:4] == [
        (0, 0x1F0, 8), (1, 0x3F6, 1), (2, 0x170, 8), (3, 0x376, 1),
    ]  # fmt: skip
    assert {res[i].flags for i in range(4)} == {B.IORESOURCE_IO | B.IORESOURCE_PCI_FIXED}
    assert res[4].start == 0xC040 and res[4].size == 16


@pytest.mark.parametrize(("progif", "legacy"), [(0x80, [0, 1, 2, 3]), (0x85, []), (0x81, [2, 3])])
def test_legacy_ide_per_channel(progif: int, legacy: list[int]) -> None:
    """A channel in native mode (prog-if bit 0 / bit 2) keeps its BARs."""
    text = IDE.read_text().replace(
        "00: 86 80 10 70 07 00 80 02 00 80 01 01",
        "00: 86 80 10 70 07 00 80 02 00 " + f"{progif:02x}" + " 01 01",
        1,
    )
    ide = parse_dump(text, "ide")[0]
    assert sorted(B.legacy_ide_resources(ide.config)) == legacy


def test_implausible_size_is_a_note_on_that_function_only() -> None:
    """A size that cannot be a BAR's (48K) drops that size, keeps everything else."""
    text = IDE.read_text().replace(
        "(32-bit, non-prefetchable) [size=128K]", "(32-bit, non-prefetchable) [size=48K]"
    )
    ide, nic = parse_dump(text, "odd")
    assert "BAR 0: size 49152 ignored (size 49152 is not a power of two >= 16)" in nic.notes
    assert 0 not in nic.bar_sizes and nic.bar_sizes[1] == 64
    assert not any("ignored" in n for n in ide.notes)


@pytest.mark.parametrize("command", ["show", "convert", "guest-view"])
def test_odd_dump_accepted_by_every_command(tmp_path: Path, command: str) -> None:
    args = ["pci", command, str(IDE)]
    if command != "show":
        args += ["-o", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def test_routed_irq_and_rom_resource_from_the_text() -> None:
    """'routed to IRQ 11' (line register 0x0a) and a disabled ROM whose register
    holds the sizing pattern 0xfffc0000 while the kernel placed it at 0xfeb80000."""
    nic = load_dump(IDE)[1]
    assert nic.irq == 11 and nic.config.read(0x3C, 1) == 0x0A
    assert nic.config.read(0x30, 4) == 0xFFFC0000
    rom = nic.resources[B.ROM_INDEX]
    assert rom.start == 0xFEB80000 and rom.size == 256 << 10
    assert not rom.flags & B.IORESOURCE_ROM_ENABLE


def test_virtual_rom_old_lspci_format() -> None:
    """pciutils < 3.7 printed '[virtual] Expansion ROM at ...' (register reads 0)."""
    bridge = load_dump(DUMPS_DIR / "cap-ptm-1")[0]
    assert bridge.config.read(0x38, 4) == 0
    rom = bridge.resources[B.ROM_INDEX]
    assert (rom.start, rom.size) == (0xF0100000, 2048)


def test_unassigned_region_is_unset() -> None:
    text = (
        "01:00.0 Class 0200: 8086:10c9\n"
        "\tControl: I/O- Mem- BusMaster-\n"
        "\tRegion 1: Memory at <unassigned> (32-bit, non-prefetchable) [disabled]\n"
        "\tRegion 2: Memory at 4001200000 (64-bit, prefetchable) [enhanced] [size=2M]\n"
        "00: 86 80 c9 10 00 00 10 00 01 00 00 02 00 00 00 00\n"
        + "".join(f"{o:02x}: " + " ".join(["00"] * 16) + "\n" for o in range(0x10, 0x40, 16))
    )
    fn = parse_dump(text, "ea")[0]
    assert not fn.resources[1].usable
    ea = fn.resources[2]
    assert ea.usable and ea.is_mem64 and ea.flags & B.IORESOURCE_PCI_EA_BEI
    assert (ea.start, ea.size) == (0x4001200000, 2 << 20)


def test_every_shared_dump_irq_matches_its_text() -> None:
    """Every 'routed to IRQ N' line of the shared dumps becomes that function's irq."""
    seen = 0
    for path in DUMP_FILES:
        text = path.read_text(encoding="latin-1")
        want = [
            int(m) for m in re.findall(r"^\s+Interrupt: pin \S routed to IRQ (\d+)$", text, re.M)
        ]
        got = [fn.irq for fn in load_dump(path) if fn.irq is not None]
        assert got == want, path.name
        seen += len(want)
    assert seen > 15


def test_sysfs_irq_and_resources(fake_sysfs: Callable[..., Path]) -> None:
    cfg = bytearray(load_dump(IDE)[1].config.known()[:64])
    root = fake_sysfs(
        "0000:00:03.0",
        bytes(cfg),
        resource=[
            (0xFEBC0000, 0xFEBDFFFF, 0x40200),
            (0xC000, 0xC03F, 0x40101),
            *[(0, 0, 0)] * 4,
            (0xFEB80000, 0xFEBBFFFF, 0x46200),
        ],
    )
    (root / "0000:00:03.0" / "irq").write_text("43\n")
    from xenpci.pci.sysfs import load_sysfs

    (fn,) = load_sysfs(root)
    assert fn.irq == 43
    assert fn.resources[6].start == 0xFEB80000 and fn.resources[6].flags == 0x46200
    assert sorted(fn.resources) == [0, 1, 6]


# --- --bar-size --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0=16K", (0, 16384)),
        ("rom=0x20000", (6, 0x20000)),
        ("5=4096", (5, 4096)),
        ("ROM=1M", (6, 1 << 20)),
    ],
)
def test_parse_bar_size(text: str, want: tuple[int, int]) -> None:
    assert parse_bar_size(text) == want


@pytest.mark.parametrize("text", ["0", "6=4K", "x=4K", "0=", "0=-4", "0=4Q", "0=0"])
def test_parse_bar_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="--bar-size"):
        parse_bar_size(text)


def _hex_only(path: Path, tmp: Path) -> Path:
    """The dump as bare 'lspci -xxxx' would give it: no -v text, so no sizes."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(("\t", " "))]
    out = tmp / f"{path.name}.hex"
    out.write_text("\n".join(lines) + "\n")
    return out


def test_guest_view_without_sizes_refused_and_says_bar_size(tmp_path: Path) -> None:
    bare = _hex_only(IDE, tmp_path)
    result = runner.invoke(app, ["pci", "guest-view", f"{bare}@00:03.0", "-o", str(tmp_path / "g")])
    assert result.exit_code == 1
    assert "--bar-size BAR=SIZE" in result.output


@pytest.mark.interop
def test_bar_size_gives_the_same_guest_view_as_region_lines(tmp_path: Path) -> None:
    """With --bar-size the bare hex gives what the full -vv dump gives, except where the
    text carried more (the ROM's resource address, the routed IRQ): read by real lspci."""
    bare = _hex_only(IDE, tmp_path)
    full_out, bare_out = tmp_path / "full", tmp_path / "bare"
    r1 = runner.invoke(app, ["pci", "guest-view", f"{IDE}@00:03.0", "-o", str(full_out)])
    r2 = runner.invoke(
        app,
        ["pci", "guest-view", f"{bare}@00:03.0", "-o", str(bare_out),
         "--bar-size", "0=128K", "--bar-size", "1=64", "--bar-size", "rom=256K"],
    )  # fmt: skip
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    full = lspci_output(full_out, "-vv")
    bare_text = lspci_output(bare_out, "-vv")
    assert "Region 0: Memory at febc0000 (32-bit, non-prefetchable)" in bare_text
    assert "Region 1: I/O ports at c000" in bare_text
    assert "Expansion ROM at feb80000 [disabled]" in full
    assert "Expansion ROM at fffc0000 [disabled]" in bare_text  # only the register known
    assert "routed to IRQ 11" in full and "routed to IRQ 10" in bare_text


def test_bar_size_for_a_missing_bar_is_an_error(tmp_path: Path) -> None:
    bare = _hex_only(IDE, tmp_path)
    result = runner.invoke(app, ["pci", "show", f"{bare}@00:03.0", "--bar-size", "3=4K"])
    assert result.exit_code == 1
    assert "no function of the source has BAR 3" in result.output


def test_bar_size_that_does_not_fit_is_an_error(tmp_path: Path) -> None:
    bare = _hex_only(IDE, tmp_path)
    result = runner.invoke(app, ["pci", "show", f"{bare}@00:03.0", "--bar-size", "0=48K"])
    assert result.exit_code == 1
    assert "BAR 0: size 49152 is not a power of two" in result.output
