"""Run every benchmark; with ``--write``, update BENCHMARKS.md.

Each ``benchmarks/bench_<name>.py`` exposes ``run() -> list[dict]``; a figure
is ``{"name", "value", "unit", "baseline", "ratio", "target"}`` where
``baseline`` names what was measured in the same run and ``ratio`` compares
the two (so the figures mean the same on a slow or a fast machine).

Usage: ``python -m benchmarks [--write | --out FILE] [NAME ...]`` (default: all).
The report goes to stdout and to ``.cache/bench/BENCHMARKS.md`` (git ignores
``.cache/``), so a run leaves the tree clean; ``--write`` updates the tracked
``BENCHMARKS.md`` instead, ``--out FILE`` writes FILE.
"""

from __future__ import annotations

import importlib
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
TRACKED = ROOT.parent / "BENCHMARKS.md"
SCRATCH = ROOT.parent / ".cache" / "bench" / "BENCHMARKS.md"
USAGE = "usage: python -m benchmarks [--write | --out FILE] [NAME ...]"


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in ROOT.glob("bench_*.py"))


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def parse_args(argv: list[str]) -> tuple[Path, list[str]]:
    """Where the report goes and which benchmarks run."""
    out, names = SCRATCH, []
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--write":
            out = TRACKED
        elif a == "--out":
            if not args:
                raise SystemExit(f"--out needs a file\n{USAGE}")
            out = Path(args.pop(0))
        elif a.startswith("-"):
            raise SystemExit(f"unknown option {a}\n{USAGE}")
        else:
            names.append(a)
    known = discover()
    for n in names:
        if n not in known:
            raise SystemExit(f"no benchmark {n!r} (known: {', '.join(known)})")
    return out, names or known


def main(argv: list[str]) -> int:
    out, names = parse_args(argv)
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
        "Written by `./dev bench --write` (`python -m benchmarks --write`). Every ratio",
        "is against a baseline measured in the same run on the same machine; absolute",
        "numbers are for orientation only.",
        "",
        f"Machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.release()}",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header + sections))
    print(f"benchmarks: report written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
