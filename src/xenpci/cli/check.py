"""``xenpci check [SOURCE] [BDF...]``: a passthrough-readiness report per device.

Thin shell over :mod:`xenpci.check`. SOURCE is this host (``sysfs``, the
default: read-only, fine as non-root), a captured tree ``sysfs:ROOT`` (a
directory shaped like ``/`` or like ``/sys``), or an lspci dump FILE (reduced
checks: what config space and the ``-vv`` text say). One row per check per
device; ``--json`` for machines. Exit status: 0 when every row passes, 1 when
any check fails, 2 when there are only warnings (virt-host-validate-like; a
warning is not a pass); errors reading the source exit 3 with one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from xenpci.check import HostFacts, exit_status, facts_from_functions, load_host_facts, run_checks
from xenpci.pci.address import SBDF
from xenpci.pci.errors import AddressError, PciError
from xenpci.pci.sources import open_source

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}
SOURCE_ERROR = 3


def _parse_bdf(text: str) -> SBDF | None:
    try:
        return SBDF.parse(text)
    except (AddressError, ValueError):
        return None


def _facts(source: str) -> HostFacts:
    if source == "sysfs":
        return load_host_facts("/")
    scheme, colon, rest = source.partition(":")
    if colon and scheme == "sysfs":
        return load_host_facts(rest)
    return facts_from_functions(open_source(source), source)


def check_cmd(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="[SOURCE] [BDF...]: SOURCE is 'sysfs' (default, this host), 'sysfs:ROOT' "
            "(a captured tree) or an lspci dump FILE; then the devices to check "
            "(default: every non-bridge function).",
            metavar="SOURCE|BDF",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Passthrough readiness per device: IOMMU, group, ACS, reset, shared pages, dom0 use."""
    words = list(args or [])
    source = "sysfs"
    if words and (_parse_bdf(words[0]) is None or Path(words[0]).exists()):
        source = words.pop(0)
    devices: list[SBDF] = []
    for w in words:
        sbdf = _parse_bdf(w)
        if sbdf is None:
            typer.echo(f"xenpci check: {w!r} is not a PCI address (DDDD:BB:DD.F)", err=True)
            raise typer.Exit(SOURCE_ERROR)
        devices.append(sbdf)
    try:
        facts = _facts(source)
        rows = run_checks(facts, devices or None)
    except (PciError, LookupError, OSError) as e:
        typer.echo(f"xenpci check: {e}", err=True)
        raise typer.Exit(SOURCE_ERROR) from None
    status = exit_status(rows)
    if as_json:
        out = {
            "source": facts.source,
            "iommu": facts.iommu_enabled,
            "status": {0: "pass", 1: "fail", 2: "warn"}[status],
            "rows": [
                {"device": str(r.device), "check": r.rule, "status": r.status, "reason": r.reason}
                for r in rows
            ],
        }
        typer.echo(json.dumps(out, indent=2))
    else:
        console = Console()
        if facts.iommu_enabled is False:
            console.print(
                "[bold red]No IOMMU is enabled on this host: no device can be passed through "
                "safely[/]"
            )
        table = Table(title=f"xenpci check {facts.source}", show_lines=False)
        for col in ("device", "check", "status", "reason"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                str(r.device),
                r.rule,
                Text(r.status.upper(), style=_STYLE[r.status]),
                Text(r.reason),
            )
        console.print(table)
        if not rows:
            console.print("no device selected")
    raise typer.Exit(status)


def register(app: typer.Typer) -> None:
    """Add ``check`` to the ``xenpci`` app."""
    app.command("check")(check_cmd)
