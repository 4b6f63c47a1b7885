"""``xenpci pci``: inspect and convert PCI device sources (dumps, sysfs, models).

Thin shell over :mod:`xenpci.pci`: ``convert`` writes any SOURCE as the
``lspci -xxxx`` text ``lspci -F`` reads; ``show`` prints a table with names
from ``pci.ids``. Sources are read-only. ``--bar-size BAR=SIZE`` (repeatable,
also on ``guest-view``) gives BAR sizes a bare ``lspci -xxxx`` dump lacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from xenpci.pci.bar import ROM_INDEX, Bar
from xenpci.pci.dump import format_dump
from xenpci.pci.errors import PciError
from xenpci.pci.function import PciFunction
from xenpci.pci.ids import PCI_IDS_PATH, PciIds, load_pci_ids
from xenpci.pci.sources import open_source
from xenpci.pci.sysfs import SYSFS_PCI_DEVICES

pci_app = typer.Typer(
    name="pci",
    help="PCI device sources: lspci dumps, this host's sysfs (read-only), models.",
    no_args_is_help=True,
)

SourceArg = Annotated[
    str,
    typer.Argument(
        help="A dump FILE, FILE@BDF, 'sysfs', 'sysfs:BDF', or SCHEME:NAME (e.g. model:nic).",
        show_default=False,
    ),
]
SysfsRoot = Annotated[
    Path, typer.Option("--sysfs-root", help="Where 'sysfs' sources are read from.")
]
BarSizeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--bar-size",
        help="BAR=SIZE (BAR 0-5 or rom; SIZE like 4096, 0x1000, 16K, 1M): a size the "
        "source lacks (an lspci -xxxx dump has no Region lines). Repeatable.",
        show_default=False,
    ),
]
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bar_size(text: str) -> tuple[int, int]:
    """``BAR=SIZE`` -> (index, bytes); index 6 is the ROM. Raises ``ValueError``."""
    bar, eq, size = text.partition("=")
    bar = bar.strip().lower()
    if not eq or not size.strip():
        raise ValueError(f"--bar-size {text!r}: expected BAR=SIZE")
    if bar == "rom":
        index = ROM_INDEX
    elif bar.isdigit() and int(bar) < ROM_INDEX:
        index = int(bar)
    else:
        raise ValueError(f"--bar-size {text!r}: BAR must be 0-5 or rom")
    size = size.strip().upper()
    unit = size[-1] if size[-1] in _SIZE_UNITS and not size.startswith("0X") else ""
    digits = size[: -len(unit)] if unit else size
    try:
        value = int(digits, 0) * _SIZE_UNITS[unit]
    except ValueError:
        raise ValueError(f"--bar-size {text!r}: SIZE must be a number (K/M/G suffix)") from None
    if value <= 0:
        raise ValueError(f"--bar-size {text!r}: SIZE must be positive")
    return index, value


def apply_bar_sizes(functions: list[PciFunction], specs: list[str] | None) -> None:
    """Give every function of the source that has the BAR the user's size.

    Raises ``ValueError`` (bad spec, no function has that BAR) or
    :class:`~xenpci.pci.errors.BarError` (the size cannot fit the BAR).
    """
    if not specs:
        return
    sizes = dict(parse_bar_size(s) for s in specs)
    for index in sizes:
        if not any(b.index == index for fn in functions for b in fn.bars):
            label = "the ROM" if index == ROM_INDEX else f"BAR {index}"
            raise ValueError(f"--bar-size: no function of the source has {label}")
    for fn in functions:
        have = {b.index for b in fn.bars}
        mine = {i: s for i, s in sizes.items() if i in have}
        if mine:
            fn.set_bar_sizes(mine)
            fn.notes.append(
                "BAR sizes from --bar-size: "
                + ", ".join(f"{'ROM' if i == ROM_INDEX else i}={s}" for i, s in mine.items())
            )


def open_with_sizes(
    spec: str, sysfs_root: Path, bar_size: list[str] | None, prog: str = "xenpci pci"
) -> list[PciFunction]:
    """Open SOURCE and apply ``--bar-size``; any error is one line and exit 1."""
    try:
        functions = open_source(spec, sysfs_root=sysfs_root)
        apply_bar_sizes(functions, bar_size)
    except (PciError, ValueError) as e:
        typer.echo(f"{prog}: {e}", err=True)
        raise typer.Exit(1) from None
    return functions


def _open(spec: str, sysfs_root: Path, bar_size: list[str] | None = None) -> list[PciFunction]:
    return open_with_sizes(spec, sysfs_root, bar_size)


@pci_app.command("convert")
def convert(
    source: SourceArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write ('-' for stdout).")],
    sysfs_root: SysfsRoot = SYSFS_PCI_DEVICES,
    bar_size: BarSizeOpt = None,
) -> None:
    """Write SOURCE as an lspci -xxxx dump that 'lspci -F FILE' reads."""
    text = format_dump(_open(source, sysfs_root, bar_size))
    if str(output) == "-":
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="ascii")


def format_size(size: int | None) -> str:
    """A size as lspci prints it (``16M``, ``4K``, ``256``), or ``?`` when unknown."""
    if size is None:
        return "?"
    for unit in ("", "K", "M", "G", "T", "P"):
        if size < 1024 or size % 1024:
            return f"{size}{unit}"
        size //= 1024
    return f"{size}E"


def _bar_text(bar: Bar) -> str:
    kind = {"io": "I/O", "mem32": "mem32", "mem64": "mem64", "rom": "ROM"}[bar.kind]
    extra = " pref" if bar.prefetchable else ""
    if bar.kind == "rom" and not bar.enabled:
        extra += " disabled"
    label = "ROM" if bar.kind == "rom" else str(bar.index)
    return f"{label}: {kind}{extra} {bar.address:#x} [size={format_size(bar.size)}]"


def _row(fn: PciFunction, ids: PciIds | None) -> list[str]:
    """Plain-text cells (wrapped in rich ``Text`` by the caller: ``[40]`` is not markup)."""
    cs = fn.config
    if cs.known_size < 12:
        return [str(fn.sbdf), "?", "?", "", ""]
    vd = f"{cs.vendor_id:04x}:{cs.device_id:04x}"
    klass = f"{cs.class_code:06x}"
    if ids is not None:
        vd += f"\n{ids.vendor_name(cs.vendor_id)} {ids.device_name(cs.vendor_id, cs.device_id)}"
        klass += f"\n{ids.class_name(cs.class_code)}"
    bars = "\n".join(_bar_text(b) for b in fn.bars)
    caps = "\n".join(f"[{c.offset:0{3 if c.extended else 2}x}] {c.name}" for c in fn.capabilities)
    return [str(fn.sbdf), vd, klass, bars, caps]


@pci_app.command("show")
def show(
    source: SourceArg,
    sysfs_root: SysfsRoot = SYSFS_PCI_DEVICES,
    pci_ids: Annotated[
        Path, typer.Option("--pci-ids", help="PCI ID database for names.")
    ] = PCI_IDS_PATH,
    bar_size: BarSizeOpt = None,
) -> None:
    """Print a table of SOURCE's functions: IDs with names, class, BARs, capabilities."""
    functions = _open(source, sysfs_root, bar_size)
    ids: PciIds | None = None
    try:
        ids = load_pci_ids(pci_ids)
    except PciError as e:
        typer.echo(f"xenpci pci: no names ({e})", err=True)
    table = Table(title=f"{source}: {len(functions)} function(s)", show_lines=True)
    for col in ("BDF", "vendor:device", "class", "BARs", "capabilities"):
        table.add_column(col)
    for fn in functions:
        table.add_row(*(Text(cell) for cell in _row(fn, ids)))
    console = Console()
    console.print(table)
    for fn in functions:
        for note in fn.notes:
            console.print(f"{fn.sbdf}: {note}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``pci`` command group to the ``xenpci`` app."""
    app.add_typer(pci_app, name="pci")
