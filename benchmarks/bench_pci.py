"""PCI core: loading+converting the largest real lspci dump, and ConfigSpace dword reads/s.

The dump figure times ``load_dump`` + ``format_dump`` (parse every line, build
53 functions with masks and BAR decoding, render them back) on the largest
shared pciutils test dump; the baseline, timed in the same run, is the least
any loader must do: read the file and ``bytes.fromhex`` each hex row. The
read figure times ``ConfigSpace.read(off, 4)`` over a 4 KiB space against
``int.from_bytes`` on a bytearray slice of the same bytes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from benchmarks.timing import time_per_call
from xenpci.pci.config import ConfigSpace
from xenpci.pci.dump import format_dump, load_dump

_DUMPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "lspci-dumps"
if not _DUMPS.is_dir():
    _DUMPS = Path("/work/shared/data/lspci-dumps")
_ROW = re.compile(r"^[0-9a-f]{2,3}: ")


def _largest_dump() -> Path:
    return max((p for p in _DUMPS.iterdir() if p.suffix != ".md"), key=lambda p: p.stat().st_size)


def _load_convert() -> dict[str, Any]:
    path = _largest_dump()

    def ours() -> None:
        format_dump(load_dump(path))

    def baseline() -> None:
        for line in path.read_text(encoding="latin-1").splitlines():
            if _ROW.match(line):
                bytes.fromhex(line.split(": ", 1)[1])

    t = time_per_call(ours)
    b = time_per_call(baseline)
    return {
        "name": f"load+convert {path.name} ({len(load_dump(path))} functions)",
        "value": t * 1e3,
        "unit": "ms",
        "baseline": f"read + bytes.fromhex rows: {b * 1e3:.2f} ms",
        "ratio": t / b,
        "target": "<= 15 (x the baseline time)",
    }


def _dword_reads() -> dict[str, Any]:
    data = bytes(range(256)) * 16
    cs = ConfigSpace(data)
    raw = bytearray(data)
    offsets = list(range(0, 4096, 4))

    def ours() -> None:
        for off in offsets:
            cs.read(off, 4)

    def baseline() -> None:
        for off in offsets:
            int.from_bytes(raw[off : off + 4], "little")

    t = time_per_call(ours)
    b = time_per_call(baseline)
    return {
        "name": "ConfigSpace dword reads",
        "value": len(offsets) / t,
        "unit": "reads/s",
        "baseline": f"int.from_bytes on a slice: {len(offsets) / b:,.0f} reads/s",
        "ratio": b / t,
        "target": ">= 0.25 (of the raw slice rate)",
    }


def run() -> list[dict[str, Any]]:
    return [_load_convert(), _dword_reads()]


if __name__ == "__main__":
    for figure in run():
        print(figure)
