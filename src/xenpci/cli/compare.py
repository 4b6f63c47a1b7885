"""``xenpci compare``: the three IO models side by side, measured in one run.

A thin shell over :func:`xenpci.demo.compare.run_compare`: a table per
model (who handled what, from the trace), then one table of guest-visible
throughput as ratios to passthrough measured in the same run, and the
seed's point checked from the counts. ``--trace DIR`` writes
``DIR/<model>.jsonl``; ``--diagram DIR`` writes ``DIR/<model>.html`` and
``.mmd`` (the first command of each model as a sequence diagram);
``--deterministic`` runs the host on one thread (two runs write identical
traces).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from xenpci.cli.progress import run_with_progress
from xenpci.demo.compare import CompareReport, ModelResult, run_compare
from xenpci.errors import XenpciError

_TITLES = {
    "emulated": "emulated NVMe (HVM, ioreqs to a device model in dom0)",
    "pv": "PV block (blkfront -> blkback in dom0)",
    "passthrough": "PCI passthrough (the guest drives its own NVMe function)",
}


def model_table(r: ModelResult) -> Table:
    table = Table(title=_TITLES.get(r.model, r.model))
    table.add_column("measured over the workload")
    table.add_column("count", justify="right")
    rows = (
        ("round trips through dom0 (ioreqs or ring requests served)", r.dom0_round_trips),
        ("NVMe commands issued by dom0's own driver", r.dom0_disk_commands),
        ("guest register accesses (MMIO)", r.guest_register_accesses),
        ("hypervisor traps forwarded as ioreqs", r.ioreqs),
        ("event-channel notifications", r.evtchn_sends),
        ("  of which frontend ring pushes", r.frontend_notifications),
        ("interrupts delivered (MSI-X or injected)", r.interrupts),
        ("grant map/unmap/grant/end ops", r.grant_ops),
        ("foreign mappings of guest RAM", r.foreign_maps),
    )
    for label, value in rows:
        table.add_row(label, f"{value:,}")
    table.add_row("dom0 CPU time", f"{r.dom0_cpu_s * 1e3:,.0f} ms")
    table.add_row(
        "data verified (SHA-256 per MiB, each random read)", "yes" if r.verified else "NO"
    )
    return table


def ratio_table(report: CompareReport) -> Table:
    base = report.results["passthrough"]
    table = Table(title="guest-visible throughput (same run; ratio to passthrough)")
    for col in ("model", "write MB/s", "x", "read MB/s", "x", "4K reads/s", "x"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in report.results.values():
        table.add_row(
            r.model,
            f"{r.write_mbps:,.1f}",
            f"{r.write_mbps / base.write_mbps:.2f}",
            f"{r.read_mbps:,.1f}",
            f"{r.read_mbps / base.read_mbps:.2f}",
            f"{r.random_iops:,.0f}",
            f"{r.random_iops / base.random_iops:.2f}",
        )
    return table


def seed_point(report: CompareReport) -> list[tuple[str, bool]]:
    """The seed's claims, each checked against this run's counts."""
    emu, pv, pt = (report.results[m] for m in ("emulated", "pv", "passthrough"))
    return [
        (
            "emulation: one round trip through dom0 per guest register access",
            emu.dom0_round_trips == emu.ioreqs == emu.guest_register_accesses > 0,
        ),
        (
            "PV: one notification per request batch (fewer than requests)",
            0 < pv.frontend_notifications < pv.dom0_round_trips,
        ),
        (
            "passthrough: nothing through dom0",
            pt.dom0_round_trips == pt.dom0_disk_commands == pt.ioreqs == pt.grant_ops == 0,
        ),
    ]


def register(app: typer.Typer) -> None:
    """Add ``xenpci compare`` to the app."""

    @app.command()
    def compare(
        size: Annotated[
            int, typer.Option(min=1, max=64, help="MiB written and read back per model")
        ] = 64,
        random_reads: Annotated[
            int, typer.Option("--random-reads", min=1, max=100_000, help="4 KiB random reads")
        ] = 256,
        seed: Annotated[int, typer.Option(help="seed of the data and the offsets")] = 1,
        trace: Annotated[
            Path | None, typer.Option("--trace", help="write DIR/<model>.jsonl")
        ] = None,
        diagram: Annotated[
            Path | None, typer.Option("--diagram", help="write DIR/<model>.html and .mmd")
        ] = None,
        deterministic: Annotated[
            bool,
            typer.Option(
                "--deterministic",
                help="run the host on one thread (the machine's executor): replayable traces",
            ),
        ] = False,
    ) -> None:
        """Emulated vs PV vs passthrough: one workload, one host, one NVMe model."""
        console = Console()
        report = run_with_progress(
            console,
            "compare",
            lambda progress: run_compare(
                size << 20,
                random_reads=random_reads,
                seed=seed,
                trace_dir=trace,
                diagram_dir=diagram,
                progress=progress,
                deterministic=deterministic,
            ),
            errors=(XenpciError, OSError),
        )
        for r in report.results.values():
            console.print(model_table(r))
        console.print(ratio_table(report))
        checks = seed_point(report)
        for claim, ok in checks:
            console.print(f"{'[green]yes[/green]' if ok else '[red]NO[/red]'}  {claim}")
        console.print(f"done in {report.seconds:.1f} s")
        if trace is not None:
            console.print(f"wrote the trace of each model to {trace}/")
        if diagram is not None:
            console.print(f"wrote a diagram of each model to {diagram}/")
        if not all(r.verified for r in report.results.values()) or not all(ok for _, ok in checks):
            raise typer.Exit(2)
