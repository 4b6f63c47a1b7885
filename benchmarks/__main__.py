"""Run every benchmark and write BENCHMARKS.md.

Each ``benchmarks/bench_<name>.py`` exposes ``run() -> list[dict]``; a figure
is ``{"name", "value", "unit", "baseline", "ratio", "target"}`` where
``baseline`` names what was measured in the same run and ``ratio`` compares
the two (so the figures mean the same on a slow or a fast machine).

Usage: ``python -m benchmarks [NAME ...]`` (default: all), from the repo root.
"""

from __future__ import annotations

import importlib
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in ROOT.glob("bench_*.py"))


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def main(argv: list[str]) -> int:
    names = argv or discover()
    sections: list[str] = []
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        started = time.perf_counter()
        figures = module.run()
        took = time.perf_counter() - started
        doc = (module.__doc__ or "").strip().splitlines()
        rows = [
            f"## {name}",
            "",
            doc[0] if doc else "",
            "",
            "| figure | value | unit | baseline (same run) | ratio | target |",
            "|---|---|---|---|---|---|",
        ]
        for f in figures:
            rows.append(
                "| {} | {} | {} | {} | {} | {} |".format(
                    f["name"],
                    fmt(f["value"]),
                    f.get("unit", ""),
                    f.get("baseline", ""),
                    fmt(f["ratio"]) if f.get("ratio") is not None else "",
                    f.get("target", ""),
                )
            )
        rows += ["", f"_{took:.1f} s_", ""]
        sections.append("\n".join(rows))
        print("\n".join(rows), flush=True)
    header = [
        "# Benchmarks",
        "",
        "Written by `./dev bench` (`python -m benchmarks`). Every ratio is against a",
        "baseline measured in the same run on the same machine; absolute numbers are",
        "for orientation only.",
        "",
        f"Machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.release()}",
        "",
    ]
    (ROOT.parent / "BENCHMARKS.md").write_text("\n".join(header + sections))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
