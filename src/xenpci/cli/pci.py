"""``xenpci pci``: inspect and convert PCI device sources (dumps, sysfs, models).

Thin shell over :mod:`xenpci.pci`: ``convert`` writes any SOURCE as the
``lspci -xxxx`` text ``lspci -F`` reads; ``show`` prints a table with names
from ``pci.ids``. Sources are read-only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from xenpci.pci.bar import Bar
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


def _open(spec: str, sysfs_root: Path) -> list[PciFunction]:
    try:
        return open_source(spec, sysfs_root=sysfs_root)
    except PciError as e:
        typer.echo(f"xenpci pci: {e}", err=True)
        raise typer.Exit(1) from None


@pci_app.command("convert")
def convert(
    source: SourceArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write ('-' for stdout).")],
    sysfs_root: SysfsRoot = SYSFS_PCI_DEVICES,
) -> None:
    """Write SOURCE as an lspci -xxxx dump that 'lspci -F FILE' reads."""
    text = format_dump(_open(source, sysfs_root))
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
) -> None:
    """Print a table of SOURCE's functions: IDs with names, class, BARs, capabilities."""
    functions = _open(source, sysfs_root)
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
