"""Split driver: conf_read round trip guest -> pciback -> guest, and a full 32-device scan.

``conf_read`` is one ``pcifront`` op over the shared page: the caller posts it
and notifies, pciback serves it on dom0's vCPU and notifies back, the guest's
upcall wakes the caller. Its floor is the same three hops with nothing served:
a guest caller notifies dom0, dom0's handler notifies back, the guest's upcall
wakes the caller (an event-channel round trip, measured in the same run on the
same machine). The scan is the guest PCI core probing every devfn of the root
and sizing BARs for 32 model NICs; its baseline is the same scan with the guest
core calling pciback's sans-IO config handler directly (no transport).

In deterministic mode (``Machine(deterministic=True)``: one executor, no
threads) the same ``conf_read`` is timed in bulk, best of interleaved trials,
against the floor of its two queue passages (guest -> dom0, dom0 -> guest) as
a bare ``deque`` push/pop plus a function call each, measured in the same run.
The whole demo is timed the same way: ``run_demo(deterministic=True)`` against
the threaded ``run_demo()`` of this tree, best of interleaved runs in one
process (imports and first-use costs paid before). That ratio is not the
issue's ">= 5x": its baseline is the demo as it was before the executor
(commit e326424), which cannot share a process with this tree. That row runs
each demo in a fresh interpreter (``git archive`` of e326424's ``src`` under
``.cache/bench``), alternating the two, one warm-up run then one timed run
each, best of trials.
"""

from __future__ import annotations

import io
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_hv import deque_floor
from xenpci.demo import run_demo
from xenpci.devices import catalog
from xenpci.guest.pci_core import GuestPciBus
from xenpci.pci import pcibios, regs
from xenpci.pci.address import SBDF
from xenpci.pciback.conf_space import config_read, config_write
from xenpci.pciback.pciback_ops import Backend
from xenpci.pcifront import ops
from xenpci.pcifront.ops import errno_to_pcibios_err
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.machine import Machine

ROUNDS = 3000
WARMUP = 200


def _summary(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples[WARMUP:])
    return statistics.median(s) * 1e6, s[int(len(s) * 0.99)] * 1e6


def _boot(m: Machine, n: int) -> int:
    fns = [catalog.make("nic", SBDF(0, 3 + i, 0, 0))[0] for i in range(n)]
    m.add_host_devices(fns)
    for fn in fns:
        m.pciback_bind(fn.sbdf)
    domid = m.start_guest("bench", 64 * 1024, paused=True)
    for fn in fns:
        lp.device_pci_add_xenstore(
            m.xs, domid, "bench", lp.PciBackendDevice(fn.sbdf), starting=True
        )
    m.unpause_guest(domid)
    front = m.guest(domid).wait_for_pcifront(10)
    if not front.wait_connected(1, 60):
        raise RuntimeError("guest did not connect")
    return domid


def conf_read_rtt(m: Machine, domid: int) -> list[float]:
    front = m.guest(domid).pcifront
    assert front is not None and front.chan is not None
    chan = front.chan
    out = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        ops.conf_read(chan, 0, 0, 0, regs.PCI_VENDOR_ID, 4)
        out.append(time.perf_counter() - t0)
    return out


def evtchn_rtt(m: Machine) -> list[float]:
    """Guest caller -> dom0 upcall -> send back -> guest upcall -> caller wakes."""
    guest = m.hv.create_domain("floor", 16 * 1024)
    try:
        ghc, dhc = guest.hypercalls, m.dom0
        gport = ghc.evtchn_alloc_unbound(0)
        dport = dhc.evtchn_bind_interdomain(guest.domid, gport)
        woke = threading.Event()
        dhc.evtchn_set_handler(dport, lambda _p: dhc.evtchn_send(dport))
        ghc.evtchn_set_handler(gport, lambda _p: woke.set())
        out = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            woke.clear()
            ghc.evtchn_send(gport)
            woke.wait(5)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        m.hv.destroy_domain(guest.domid)


class _DirectOps:
    """The guest core's accessors straight into pciback's handler (no transport)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def read(self, domain: int, bus: int, devfn: int, offset: int, size: int) -> tuple[int, int]:
        psdev = self.backend.get(domain, bus, devfn)
        if psdev is None:
            return pcibios.PCIBIOS_DEVICE_NOT_FOUND, 0
        err, value = config_read(psdev.dev_data, offset, size)
        return errno_to_pcibios_err(err), value & ((1 << (8 * size)) - 1)

    def write(self, domain: int, bus: int, devfn: int, offset: int, size: int, value: int) -> int:
        psdev = self.backend.get(domain, bus, devfn)
        if psdev is None:
            return pcibios.PCIBIOS_DEVICE_NOT_FOUND
        return errno_to_pcibios_err(config_write(psdev.dev_data, offset, size, value))


def scans(m: Machine, domid: int) -> tuple[float, float, int]:
    front = m.guest(domid).pcifront
    assert front is not None
    back = m.pciback.devices[domid]
    t0 = time.perf_counter()
    found = GuestPciBus(0, 0, front).scan()
    split = time.perf_counter() - t0
    direct_ops = _DirectOps(back.bus)
    t0 = time.perf_counter()
    with m.pciback.pool_lock:
        direct = GuestPciBus(0, 0, direct_ops).scan()
    base = time.perf_counter() - t0
    assert len(found) == len(direct)
    return split, base, len(found)


DET_ROUNDS = 3000
DET_TRIALS = 7


def conf_read_deterministic(m: Machine, domid: int) -> float:
    """Seconds per ``conf_read`` on the deterministic machine (bulk-timed)."""
    front = m.guest(domid).pcifront
    assert front is not None and front.chan is not None
    chan = front.chan
    t0 = time.perf_counter()
    for _ in range(DET_ROUNDS):
        ops.conf_read(chan, 0, 0, 0, regs.PCI_VENDOR_ID, 4)
    return (time.perf_counter() - t0) / DET_ROUNDS


def deterministic_figures() -> list[dict[str, Any]]:
    best_read = best_floor = float("inf")
    with Machine(deterministic=True) as m:
        domid = _boot(m, 1)
        for _ in range(DET_TRIALS):
            best_floor = min(best_floor, 2 * deque_floor(DET_ROUNDS))
            best_read = min(best_read, conf_read_deterministic(m, domid))
        assert m.hv.scheduler is not None and m.hv.scheduler.clock.now() == 0.0  # no timeouts
    return [
        {
            "name": "conf_read round trip, deterministic",
            "value": round(best_read * 1e6, 2),
            "unit": "µs",
            "baseline": f"two hops of a bare deque push/pop + call: {best_floor * 1e6:.3f} µs; "
            f"best of {DET_TRIALS} interleaved trials",
            "ratio": round(best_read / best_floor, 1),
            "target": "<= 20 µs",
        }
    ]


DEMO_TRIALS = 5
#: The demo the issue's ">= 5x" is measured against: ``xenpci demo`` before the
#: deterministic executor existed (threaded, ``toolstack/demo_scenario.py``).
OLD_DEMO_COMMIT = "e32642440405ef35f4081d75a4a5dcd7d67f26fd"
REPO = Path(__file__).resolve().parent.parent
#: One timed demo in a fresh interpreter: ``sys.argv`` = [src, module, deterministic].
#: One untimed run first pays the first-use costs, as the figures above do.
_CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
import importlib
run_demo = importlib.import_module(sys.argv[2]).run_demo
kw = {"deterministic": True} if sys.argv[3] == "1" else {}
run_demo(**kw)
t0 = time.perf_counter()
run_demo(**kw)
print(time.perf_counter() - t0)
"""


def demo_figure() -> dict[str, Any]:
    """The deterministic demo against the threaded one of this tree (a same-tree ratio)."""
    run_demo(deterministic=True)  # first-use costs (lazy imports, ctypes types) paid here
    best = {True: float("inf"), False: float("inf")}
    for _ in range(DEMO_TRIALS):
        for deterministic in (True, False):
            t0 = time.perf_counter()
            run_demo(deterministic=deterministic)
            best[deterministic] = min(best[deterministic], time.perf_counter() - t0)
    return {
        "name": "xenpci demo, deterministic vs threaded (this tree)",
        "value": round(best[True] * 1e3, 1),
        "unit": "ms",
        "baseline": f"threaded run_demo() of this tree: {best[False] * 1e3:.1f} ms; best of "
        f"{DEMO_TRIALS} interleaved runs each (not the issue's baseline: see the next row)",
        "ratio": round(best[True] / best[False], 2),
        "target": "",
    }


def _old_demo_src() -> Path:
    """``src`` of :data:`OLD_DEMO_COMMIT`, unpacked once under ``.cache/bench`` (git archive)."""
    dest = REPO / ".cache" / "bench" / f"demo-{OLD_DEMO_COMMIT[:7]}"
    if not (dest / "src" / "xenpci").is_dir():
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", OLD_DEMO_COMMIT, "src"],
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return dest / "src"


def _timed_child(src: Path, module: str, deterministic: bool) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), module, "1" if deterministic else "0"],
        capture_output=True,  # the old demo's threads print shutdown noise on stderr
        text=True,
        check=True,
        timeout=600,
    )
    return float(out.stdout.split()[-1])


def old_demo_figure() -> dict[str, Any]:
    """``xenpci demo --deterministic`` against the demo of :data:`OLD_DEMO_COMMIT` (the
    issue's ">= 5x"): each in a fresh interpreter, alternated, best of each."""
    name, target = "xenpci demo --deterministic vs the demo of e326424", "<= 0.2 (5x faster)"
    try:
        old_src = _old_demo_src()
    except (OSError, subprocess.CalledProcessError) as e:
        # A checkout without that commit (a shallow clone): say so in the row.
        why = (
            e.stderr.decode(errors="replace").strip()
            if isinstance(e, subprocess.CalledProcessError)
            else e
        )
        return {
            "name": name,
            "value": "n/a",
            "unit": "ms",
            "baseline": f"not measured: no {OLD_DEMO_COMMIT[:7]} in this checkout ({why})",
            "ratio": "",
            "target": target,
        }
    best = {True: float("inf"), False: float("inf")}
    for _ in range(DEMO_TRIALS):
        best[True] = min(best[True], _timed_child(REPO / "src", "xenpci.demo", True))
        best[False] = min(
            best[False], _timed_child(old_src, "xenpci.toolstack.demo_scenario", False)
        )
    return {
        "name": name,
        "value": round(best[True] * 1e3, 1),
        "unit": "ms",
        "baseline": f"run_demo() at e326424 (threaded): {best[False] * 1e3:.1f} ms; best of "
        f"{DEMO_TRIALS} alternated fresh-interpreter runs each",
        "ratio": round(best[True] / best[False], 2),
        "target": target,
    }


def run() -> list[dict[str, Any]]:
    with Machine() as m:
        domid = _boot(m, 32)
        floor_med, floor_p99 = _summary(evtchn_rtt(m))
        med, p99 = _summary(conf_read_rtt(m, domid))
        split, base, n = scans(m, domid)
    floor = f"event-channel round trip guest->dom0->guest: median {floor_med:.1f} us"
    return [
        {
            "name": "conf_read round trip, median",
            "value": med,
            "unit": "us",
            "baseline": floor,
            "ratio": med / floor_med,
            "target": "<= 2x",
        },
        {
            "name": "conf_read round trip, p99",
            "value": p99,
            "unit": "us",
            "baseline": f"event-channel round trip p99 {floor_p99:.1f} us",
            "ratio": p99 / floor_p99,
            "target": "",
        },
        *deterministic_figures(),
        demo_figure(),
        old_demo_figure(),
        {
            "name": f"full scan of {n} devices (256 devfns, BAR sizing)",
            "value": split * 1e3,
            "unit": "ms",
            "baseline": f"same scan calling pciback's handler directly: {base * 1e3:.1f} ms",
            "ratio": split / base,
            "target": "",
        },
    ]


if __name__ == "__main__":
    for fig in run():
        print(fig)
