"""``xenpci demo``: the whole passthrough story in one process, in seconds.

A thin shell over :func:`xenpci.demo.run_demo`: a progress
display while it runs, then what happened (steps, isolation checks, the
toolstack's warnings) and the table that proves the split: per category of
operation, how many went through dom0, how many went direct, and how many
the hypervisor mediated. ``--trace`` writes every stored event as JSON lines;
``--diagram`` writes the connect handshake and one op as a sequence diagram
(HTML with inline SVG, or Mermaid text for a ``.mmd`` file). ``--deterministic``
runs the whole machine on one thread on a virtual clock: two runs write
byte-identical traces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from xenpci.cli.progress import run_with_progress
from xenpci.demo import DemoReport, run_demo, write_diagram


def _checks(report: DemoReport) -> Table:
    table = Table(title="isolation and mediation")
    table.add_column("attempt")
    table.add_column("outcome")
    table.add_column("as expected", justify="center")
    for c in report.checks:
        table.add_row(c.what, c.outcome, "yes" if c.ok else "[red]NO[/red]")
    return table


def _paths(report: DemoReport) -> Table:
    table = Table(title="who carried each operation")
    table.add_column("operations")
    table.add_column("through dom0", justify="right")
    table.add_column("direct", justify="right")
    table.add_column("mediated by Xen", justify="right")
    for row in report.counts:
        table.add_row(row.category, str(row.dom0), str(row.direct), str(row.hypervisor))
    return table


def register(app: typer.Typer) -> None:
    """Add ``xenpci demo`` to the app."""

    @app.command()
    def demo(
        trace: Annotated[
            Path | None, typer.Option("--trace", help="write every trace event as JSON lines")
        ] = None,
        diagram: Annotated[
            Path | None,
            typer.Option(
                "--diagram", help="write a sequence diagram (HTML+SVG; Mermaid if FILE is .mmd)"
            ),
        ] = None,
        no_iommu: Annotated[
            bool, typer.Option("--no-iommu", help="a machine without an IOMMU (unsafe)")
        ] = False,
        frames: Annotated[int, typer.Option(min=1, max=4096, help="NIC frames to loop")] = 32,
        blocks: Annotated[
            int, typer.Option(min=16, max=4096, help="NVMe blocks (multiple of 16)")
        ] = 64,
        deterministic: Annotated[
            bool,
            typer.Option(
                "--deterministic",
                help="run the whole machine on one thread on a virtual clock (replayable)",
            ),
        ] = False,
    ) -> None:
        """Boot Xen, dom0 and two guests; pass a NIC and a disk through; prove the split."""
        if blocks % 16:
            raise typer.BadParameter("must be a multiple of 16", param_hint="--blocks")
        console = Console()
        report = run_with_progress(
            console,
            "demo",
            lambda progress: run_demo(
                iommu=not no_iommu,
                frames=frames,
                blocks=blocks,
                progress=progress,
                deterministic=deterministic,
            ),
        )
        for warning in report.warnings:
            console.print(f"[yellow]toolstack warning:[/yellow] {warning}")
        console.print(_checks(report))
        console.print(_paths(report))
        if not report.iommu and report.dom0_overwritten:
            console.print(
                "[red]without an IOMMU guest2's device wrote into dom0's memory[/red]: "
                "this is why Xen supports PCI passthrough to PV guests only with an IOMMU"
            )
        console.print(f"done in {report.seconds:.2f} s")
        if trace is not None:
            n = report.trace.to_jsonl(trace)
            console.print(f"wrote {n} trace records to {trace}")
        if diagram is not None:
            n = write_diagram(report.trace, report.domids["guest1"], diagram)
            console.print(f"wrote a {n}-arrow sequence diagram to {diagram}")
        if not all(c.ok for c in report.checks):
            raise typer.Exit(2)
