"""One workload through the three IO models on one host: the numbers behind the seed.

The seed thread's point: with emulation every register access of the guest
is a round trip through dom0 (an ioreq to the device model); with PV split
drivers every request batch is (a ring push and a notification to blkback);
with passthrough nothing is -- the guest drives the device itself and dom0
only set it up. :func:`run_compare` runs the same workload (a sequential
write of ``size`` bytes and its read-back, each chunk's SHA-256 checked; then
4 KiB reads at random offsets, each checked) through each model on one
:class:`~xenpci.toolstack.iomodels.IoModelsHost`, and reads every count from
the trace (or the hypervisor's own per-thread CPU clocks for dom0's time),
measured over the workload only.

With ``deterministic=True`` the host runs on the caller's thread as tasks of
the machine's one executor (no thread is started) and the traces of two runs
are byte-identical. dom0's CPU time is then the CPU time of the device
model's and ``xenblkd``'s tasks (what they wait on runs nested inside them,
dom0's disk interrupts included), since no dom0 thread exists to have a clock.

Diagrams are drawn from the trace's typed records with the demo's writers
(:func:`xenpci.demo.diagram.mermaid` / ``html``): the first
command of each model, from the guest to the device and back.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from xenpci.blkback.blkback import TRACE_REQUEST
from xenpci.blkfront.blkfront import Blkfront
from xenpci.demo.diagram import Message, html, mermaid
from xenpci.devices import nvme as hw
from xenpci.emu.device_model import TRACE_DM_IOREQ, TRACE_INJECT
from xenpci.guest.drivers.nvme import MAX_BLOCKS_PER_CMD, NvmeDriver
from xenpci.hv.ioreq import TRACE_BUF_IOREQ, TRACE_IOREQ
from xenpci.toolstack.iomodels import DOM0_DISK, IoModelsHost, boot_iomodels_host
from xenpci.trace import Trace, TraceEvent

MODELS = ("emulated", "pv", "passthrough")
SECTOR = hw.BLOCK_SIZE
CHUNK = 1 << 20  # checksum granularity, and the PV frontend's batch per call
RANDOM_READ = 4096
DEFAULT_SIZE = 64 << 20

_GRANT_KINDS = (
    "gnttab_grant_foreign_access",
    "gnttab_end_foreign_access",
    "gnttab_map_grant_ref",
    "gnttab_unmap_grant_ref",
)


class _Disk:
    """What the workload needs of a model: whole-sector writes and reads."""

    def __init__(
        self,
        write: Callable[[int, bytes], None],
        read: Callable[[int, int], bytes],
        domid: int,
    ) -> None:
        self.write = write
        self.read = read
        self.domid = domid


def _nvme_disk(drv: NvmeDriver) -> _Disk:
    step = MAX_BLOCKS_PER_CMD * SECTOR

    def write(sector: int, data: bytes) -> None:
        for pos in range(0, len(data), step):
            drv.write_blocks(sector + pos // SECTOR, data[pos : pos + step])

    def read(sector: int, count: int) -> bytes:
        out = []
        for done in range(0, count, MAX_BLOCKS_PER_CMD):
            out.append(drv.read_blocks(sector + done, min(MAX_BLOCKS_PER_CMD, count - done)))
        return b"".join(out)

    return _Disk(write, read, drv.domid)


def _pv_disk(front: Blkfront) -> _Disk:
    return _Disk(front.write, front.read, front.domid)


@dataclass(frozen=True, slots=True)
class ModelResult:
    """One model's run: times, checks, and the counts read from the trace."""

    model: str
    size: int
    random_reads: int
    write_s: float
    read_s: float
    random_s: float
    verified: bool
    dom0_round_trips: int
    dom0_disk_commands: int
    ioreqs: int
    evtchn_sends: int
    interrupts: int
    grant_ops: int
    foreign_maps: int
    guest_register_accesses: int
    frontend_notifications: int
    dom0_cpu_s: float

    @property
    def write_mbps(self) -> float:
        return self.size / 1e6 / self.write_s

    @property
    def read_mbps(self) -> float:
        return self.size / 1e6 / self.read_s

    @property
    def random_iops(self) -> float:
        return self.random_reads / self.random_s


@dataclass
class CompareReport:
    results: dict[str, ModelResult] = field(default_factory=dict)
    seconds: float = 0.0


def _cpu_time(idents: Iterable[int | None]) -> float:
    """CPU seconds used so far by dom0's threads (Linux per-thread clocks)."""
    total = 0.0
    for ident in idents:
        if ident is None:
            continue
        try:
            total += time.clock_gettime(time.pthread_getcpuclockid(ident))
        except (OSError, ProcessLookupError):
            continue  # the thread has ended
    return total


def _dom0_cpu(host: IoModelsHost) -> float:
    """dom0's CPU seconds so far: its threads' clocks, or its executor tasks' time."""
    if host.machine.hv.scheduler is not None:
        tasks = [d.task_cpu_s for d in host.blkback.devices.values()]
        return sum(tasks) + sum(dm.task_cpu_s for dm in host.models)
    return _cpu_time(_dom0_threads(host))


def _dom0_threads(host: IoModelsHost) -> list[int | None]:
    idents: list[int | None] = [host.machine.hv.dom0.vcpu.ident]
    idents += [d.thread_ident for d in host.blkback.devices.values()]
    idents += [dm.thread_ident for dm in host.models]
    return idents


def _measure(
    host: IoModelsHost,
    model: str,
    disk: _Disk,
    data: bytes,
    offsets: list[int],
    frontend_port: int | None,
    trace_dir: Path | None,
    diagram_dir: Path | None,
) -> ModelResult:
    t = host.trace
    t.clear()
    cpu0 = _dom0_cpu(host)
    sums = [hashlib.sha256(data[p : p + CHUNK]).digest() for p in range(0, len(data), CHUNK)]
    start = time.perf_counter()
    for p in range(0, len(data), CHUNK):
        disk.write(p // SECTOR, data[p : p + CHUNK])
    wrote = time.perf_counter()
    ok = True
    for i, p in enumerate(range(0, len(data), CHUNK)):
        n = min(CHUNK, len(data) - p)
        ok &= hashlib.sha256(disk.read(p // SECTOR, n // SECTOR)).digest() == sums[i]
    read = time.perf_counter()
    for off in offsets:
        got = disk.read(off // SECTOR, RANDOM_READ // SECTOR)
        ok &= got == data[off : off + RANDOM_READ]
    done = time.perf_counter()
    cpu = _dom0_cpu(host) - cpu0
    domid = disk.domid
    counts = t.counts_by_domain()  # one snapshot: each count below is a lookup

    def count(kind: str, dom: int | None = None) -> int:
        if dom is not None:
            return counts.get((kind, dom), 0)
        return sum(n for (k, _d), n in counts.items() if k == kind)

    result = ModelResult(
        model=model,
        size=len(data),
        random_reads=len(offsets),
        write_s=wrote - start,
        read_s=read - wrote,
        random_s=done - read,
        verified=ok,
        dom0_round_trips=count(TRACE_DM_IOREQ, 0) + count(TRACE_REQUEST, 0),
        # Each of dom0's own NVMe commands completes with one interrupt to dom0.
        dom0_disk_commands=count("pirq", 0),
        ioreqs=count(TRACE_IOREQ, domid) + count(TRACE_BUF_IOREQ, domid),
        evtchn_sends=count("evtchn_send"),
        interrupts=count("pirq") + count(TRACE_INJECT),
        grant_ops=sum(count(k) for k in _GRANT_KINDS),
        foreign_maps=count("foreign_map"),
        guest_register_accesses=count("mmio_write", domid) + count("mmio_read", domid),
        frontend_notifications=_sends(t.events, domid, frontend_port) if frontend_port else 0,
        dom0_cpu_s=cpu,
    )
    if trace_dir is not None:
        t.to_jsonl(trace_dir / f"{model}.jsonl")
    if diagram_dir is not None:
        write_model_diagram(t, model, domid, diagram_dir)
    return result


def _sends(events: list[TraceEvent], domid: int, port: int | None) -> int:
    if port is None:
        return 0
    return sum(
        1
        for e in events
        if e.kind == "evtchn_send" and e.domid == domid and e.args.get("port") == port
    )


def run_compare(
    size: int = DEFAULT_SIZE,
    *,
    random_reads: int = 256,
    seed: int = 1,
    trace_dir: Path | None = None,
    diagram_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    deterministic: bool = False,
) -> CompareReport:
    """Run the workload through every model on one host; see the module doc."""
    if size <= 0 or size % RANDOM_READ:
        raise ValueError(f"size {size} must be a positive multiple of 4 KiB")
    rng = random.Random(seed)
    data = rng.randbytes(size)
    offsets = [rng.randrange(size // RANDOM_READ) * RANDOM_READ for _ in range(random_reads)]
    for d in (trace_dir, diagram_dir):
        if d is not None:
            d.mkdir(parents=True, exist_ok=True)
    report = CompareReport()
    started = time.perf_counter()
    say = progress or (lambda _text: None)
    with boot_iomodels_host(deterministic=deterministic) as host:
        say("host booted: dom0 drives the physical NVMe disk, blkback serves it")
        drv, _dm = host.add_hvm_guest("hvm-guest")
        say("HVM guest: emulated NVMe controller (device model in dom0)")
        front = host.add_pv_guest("pv-guest", f"{DOM0_DISK},raw,xvda,rw")
        say("PV guest: blkfront connected to blkback (disk=[...])")
        pt = host.add_passthrough_guest("pt-guest")
        say("passthrough guest: its own NVMe function through pciback")
        for model, disk, port in (
            ("emulated", _nvme_disk(drv), None),
            ("pv", _pv_disk(front), front.evtchn),
            ("passthrough", _nvme_disk(pt), None),
        ):
            report.results[model] = _measure(
                host, model, disk, data, offsets, port, trace_dir, diagram_dir
            )
            say(f"{model}: {size >> 20} MiB written, read back, {random_reads} random reads")
    report.seconds = time.perf_counter() - started
    return report


# -- diagrams ------------------------------------------------------------------------
def model_sequence(trace: Trace, model: str, guest: int) -> list[Message]:
    """The first command of ``model``'s workload as arrows, read from the trace."""
    out: list[Message] = []
    seen: set[str] = set()

    def add(src: str, dst: str, label: str, section: str = "data") -> None:
        if label not in seen:
            seen.add(label)
            out.append(Message(src, dst, label, section))

    if model == "passthrough" or model == "emulated":
        add("guest1", "Xen" if model == "emulated" else "device", "MMIO doorbell write")
    for e in trace.events:
        a = e.args
        k = e.kind
        if k == TRACE_IOREQ and e.domid == guest:
            add("Xen", "dom0", f"ioreq {a.get('type')} {a.get('dir')} (guest vCPU waits)")
        elif k == TRACE_DM_IOREQ:
            add("dom0", "device", "device model emulates the register")
        elif k == "evtchn_send" and e.domid == guest and e.path == "hypervisor":
            add("Xen", "dom0", "event: ioreq posted")
        elif k == "evtchn_send" and e.domid == guest:
            add("guest1", "Xen", "event: requests pushed on the ring")
        elif k == TRACE_REQUEST:
            add("dom0", "Xen", "blkback: request copied, its grants mapped")
        elif k == "pirq" and e.domid == 0:
            add("device", "dom0", "dom0's NVMe command completes (MSI-X -> event)")
        elif k == "dma_read" and e.domid == 0:
            add("dom0", "device", "dom0's NVMe driver: command + doorbell")
            add("device", "Xen", "DMA from dom0's buffer (IOMMU)")
        elif k == "evtchn_send" and e.domid == 0 and a.get("to_domid") == guest:
            add("dom0", "guest1", "event: response / ioreq answered")
        elif k == TRACE_INJECT:
            add("dom0", "guest1", "completion interrupt injected")
        elif k == "dma_read" and e.domid == guest:
            add("device", "Xen", "DMA from guest memory (IOMMU)")
        elif k == "pirq" and e.domid == guest:
            add("Xen", "guest1", "MSI-X -> pirq -> event, straight to the guest")
        if len(out) >= 9:
            break
    return out


def write_model_diagram(trace: Trace, model: str, guest: int, directory: Path) -> Path:
    messages = model_sequence(trace, model, guest)
    path = directory / f"{model}.html"
    path.write_text(html(messages, f"xenpci compare: {model}, first command"), encoding="utf-8")
    (directory / f"{model}.mmd").write_text(mermaid(messages), encoding="utf-8")
    return path
