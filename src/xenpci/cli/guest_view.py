"""``xenpci pci guest-view``: what a PV guest sees of a passed-through device.

Thin shell over :func:`xenpci.toolstack.machine.guest_view`: boots the hypervisor
model, dom0 (XenStore, pciback) and one guest (pcifront, PCI core), passes the
SOURCE device(s) through, and writes the guest's config space in ``lspci
-xxxx`` form (decode it with ``lspci -F FILE -vvv``). Tables name the pciback
rule behind every register the guest sees differently and every write it may
not make. Devices whose BAR sizes are unknown are refused, not guessed;
``--bar-size BAR=SIZE`` supplies them for a bare ``lspci -xxxx`` dump.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from xenpci.cli.pci import BarSizeOpt, open_with_sizes, pci_app
from xenpci.errors import XenpciError
from xenpci.pci.dump import format_dump
from xenpci.pci.sysfs import SYSFS_PCI_DEVICES
from xenpci.toolstack.machine import DeviceView, GuestViewReport, guest_view

POLICIES = ("linux", "strict")


def _differences_table(view: DeviceView) -> Table:
    table = Table(title=f"{view.host.sbdf} -> guest {view.guest.sbdf}: registers seen differently")
    for col in ("offset", "size", "host", "guest", "rule"):
        table.add_column(col)
    for d in view.differences:
        w = 2 * d.size
        table.add_row(
            f"0x{d.offset:03x}",
            str(d.size),
            f"{d.host_value:0{w}x}",
            f"{d.guest_value:0{w}x}",
            d.rule,
        )
    return table


def _writes_table(view: DeviceView) -> Table:
    table = Table(title=f"{view.host.sbdf}: guest writes that do not simply reach the device")
    for col in ("offset", "size", "rule", "what happens"):
        table.add_column(col)
    for r in view.write_rules:
        if r.effect == "passed to hardware":
            continue
        offset = "other" if r.rule == "conf_space.unhandled" else f"0x{r.offset:03x}"
        size = "-" if r.rule == "conf_space.unhandled" else str(r.size)
        table.add_row(offset, size, r.rule, r.effect)
    return table


def render(report: GuestViewReport, console: Console) -> None:
    """Print the tables of a report (and its refusals)."""
    for view in report.views:
        if view.differences:
            console.print(_differences_table(view))
        else:
            console.print(f"{view.host.sbdf} -> guest {view.guest.sbdf}: no register differs")
        console.print(_writes_table(view))
    for refusal in report.refused:
        console.print(f"[bold red]refused[/] {refusal.sbdf}: {refusal.reason}")


def register(app: typer.Typer) -> None:
    """Add ``guest-view`` to the ``pci`` group (``app`` is the top-level app, unused)."""

    @pci_app.command("guest-view")
    def guest_view_cmd(
        source: Annotated[
            str,
            typer.Argument(
                help="A dump FILE, FILE@BDF, 'sysfs:BDF', or a catalog model (model:nic).",
                show_default=False,
            ),
        ],
        output: Annotated[
            Path, typer.Option("-o", "--output", help="File for the guest's lspci -xxxx view.")
        ],
        permissive: Annotated[
            bool, typer.Option("--permissive", help="pciback permissive mode for the device.")
        ] = False,
        policy: Annotated[
            str, typer.Option("--policy", help="Config-space policy: linux (default) or strict.")
        ] = "linux",
        timeout: Annotated[
            float, typer.Option("--timeout", help="pcifront op timeout in seconds.")
        ] = 2.0,
        sysfs_root: Annotated[
            Path, typer.Option("--sysfs-root", help="Where 'sysfs' sources are read from.")
        ] = SYSFS_PCI_DEVICES,
        bar_size: BarSizeOpt = None,
    ) -> None:
        """Pass SOURCE through to a PV guest and write what the guest sees."""
        err = Console(stderr=True)
        if policy not in POLICIES:
            err.print(f"xenpci pci guest-view: --policy must be one of {', '.join(POLICIES)}")
            raise typer.Exit(2)
        functions = open_with_sizes(source, sysfs_root, bar_size, "xenpci pci guest-view")
        try:
            report = guest_view(functions, permissive=permissive, policy=policy, op_timeout=timeout)
        except XenpciError as e:
            err.print(f"xenpci pci guest-view: {e}")
            raise typer.Exit(1) from None
        render(report, Console())
        if not report.views:
            err.print("xenpci pci guest-view: no device could be passed through")
            raise typer.Exit(1)
        text = format_dump([v.guest for v in report.views])
        if str(output) == "-":
            typer.echo(text, nl=False)
        else:
            output.write_text(text, encoding="ascii")
