"""IO models: guest-visible disk throughput of emulation, PV and passthrough, against a raw copy.

One :func:`xenpci.demo.compare.run_compare` run (the three models on one
host, same NVMe model, data checked), and in the same process the raw-copy
floor of the data-path benchmark (``bench_datapath.dma_floor``: the same
bytes copied into and out of guest frames with nothing in between). Each
row's ratio is how many times slower than that floor the model moves data
(write + read back); the baseline column also gives it against passthrough.
"""

from __future__ import annotations

from typing import Any

from benchmarks.bench_datapath import DMA_PAGES, _best, _buffer, _Rig, dma_floor
from xenpci.demo.compare import run_compare
from xenpci.hv import PAGE_SIZE

SIZE = 16 << 20
RANDOM_READS = 512


def floor_mbps() -> float:
    rig = _Rig()
    try:
        gfns = _buffer(rig)
        payload = bytes(range(256)) * (DMA_PAGES * PAGE_SIZE // 256)
        seconds = _best(lambda: dma_floor(rig, gfns, payload))
    finally:
        rig.close()
    return len(payload) / 1e6 / seconds


def run() -> list[dict[str, Any]]:
    report = run_compare(SIZE, random_reads=RANDOM_READS)
    floor = floor_mbps()
    base = report.results["passthrough"]
    base_rw = 2 * SIZE / 1e6 / (base.write_s + base.read_s)
    figures = []
    for model, r in report.results.items():
        rw = 2 * SIZE / 1e6 / (r.write_s + r.read_s)
        figures.append(
            {
                "name": f"{model}: {SIZE >> 20} MiB written and read back by the guest",
                "value": round(rw, 1),
                "unit": "MB/s",
                "baseline": f"raw copy floor {floor:,.0f} MB/s; passthrough {base_rw:,.1f} MB/s "
                f"(x{base_rw / rw:.2f}); 4 KiB random reads {r.random_iops:,.0f}/s; "
                f"dom0 round trips {r.dom0_round_trips:,}, dom0 CPU {r.dom0_cpu_s * 1e3:,.0f} ms",
                "ratio": round(floor / rw, 1),
                "target": "report (slowdown vs the raw copy)",
            }
        )
    return figures


if __name__ == "__main__":
    for fig in run():
        print(fig)
