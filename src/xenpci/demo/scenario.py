"""The whole passthrough story in one run: what ``xenpci demo`` does, as a list of steps.

There is no real counterpart: this is the script a Xen engineer would follow
on a test box to show PCI passthrough to PV guests end to end. It boots a
machine (Xen, dom0 with xenstored and pciback), makes the NIC, the NVMe-like
disk and the legacy UART assignable, creates ``guest1`` and ``guest2`` from
the shipped ``xl.cfg`` files through the toolstack (:class:`Libxl`), runs the
guest drivers' workloads with data checked end to end, hot-plugs the UART
into guest 1 and removes it, and then plays the attacks a hostile guest 2
would try: map guest 1's BAR, DMA outside its memory, redirect an MSI-X
message. MSI-X tables are protected by pciback itself when it seizes a
device, as in Linux.

The story is :data:`STEPS`: each :class:`Step` has a name, an action (does
the work, returns the line to show) and a check (says what went wrong, or
nothing). With ``deterministic=True`` the machine runs on the caller's thread
on a virtual clock, and two runs record byte-identical traces.
"""

from __future__ import annotations

import contextlib
import gc
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import xenpci.toolstack
from xenpci.demo.paths import PathCount, path_counts
from xenpci.devices import nvme as nvme_hw
from xenpci.errors import XenpciError
from xenpci.guest.drivers.base import PciDriver
from xenpci.guest.drivers.nic import NicDriver
from xenpci.guest.drivers.nvme import NvmeDriver
from xenpci.guest.drivers.serial import SerialDriver
from xenpci.guest.kernel import GuestKernel
from xenpci.hv import PAGE_SHIFT
from xenpci.hv.errors import HvError
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.toolstack.errors import Refused
from xenpci.toolstack.host import HostDescription, boot_machine
from xenpci.toolstack.libxl import Libxl
from xenpci.toolstack.machine import Machine
from xenpci.toolstack.xlcfg import PciSpec, load_domain_config_file
from xenpci.trace import Kind, Trace

EXAMPLES = Path(xenpci.toolstack.__file__).parent / "examples"
NIC = SBDF.parse("0000:03:00.0")
NVME = SBDF.parse("0000:04:00.0")
UART = SBDF.parse("0000:07:00.0")
DOM0_SECRET = b"dom0 private data: must never be reachable by a guest".ljust(64, b".")


class DemoError(XenpciError):
    """A step of the demo did not do what it must (the message names the step)."""


@dataclass(frozen=True, slots=True)
class Check:
    """One isolation probe: what was tried, what happened, and whether that is right."""

    what: str
    outcome: str
    ok: bool
    error: str | None = None


@dataclass
class DemoReport:
    """Everything the run established; the CLI prints it, tests assert on it."""

    iommu: bool
    trace: Trace
    domids: dict[str, int] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    nic_frames: int = 0
    nvme_bytes: int = 0
    uart_bytes: int = 0
    hotplug: list[str] = field(default_factory=list)
    dom0_overwritten: bool = False
    counts: list[PathCount] = field(default_factory=list)
    seconds: float = 0.0

    def check(self, what: str) -> Check:
        for c in self.checks:
            if c.what == what:
                return c
        raise KeyError(what)


class DemoRun:
    """The state one run threads through its steps (set by the steps, in order)."""

    machine: Machine
    lx: Libxl
    kernels: dict[str, GuestKernel]
    nic: NicDriver
    disk: NvmeDriver
    victim_gfn: int
    victim_bus: int
    nic_sent: list[bytes]
    nic_got: list[bytes]
    nvme_written: bytes
    nvme_back: bytes
    uart_echo: bytes

    def __init__(self, *, iommu: bool, frames: int, blocks: int, timeout: float, seed: int) -> None:
        self.iommu = iommu
        self.frames = frames
        self.blocks = blocks
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.drivers: list[PciDriver] = []

    @property
    def report(self) -> DemoReport:
        return self._report

    def start(self, machine: Machine) -> None:
        self.machine = machine
        self._report = DemoReport(iommu=self.iommu, trace=machine.trace)

    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait (on the machine's clock) until ``predicate`` holds, or fail the step."""
        ex = self.machine.hv.scheduler
        if ex is not None:
            ok = ex.wait_until(predicate, self.timeout)
        else:
            # Threaded: the guests' vCPUs move the state; poll it against real time.
            deadline = time.monotonic() + self.timeout
            while not (ok := predicate()) and time.monotonic() < deadline:
                time.sleep(0.002)
        if not ok:
            raise DemoError(f"timed out waiting for {what}")


Action = Callable[[DemoRun], "str | None"]
Verdict = Callable[[DemoRun], "str | None"]


def _fine(_run: DemoRun) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the story: ``action`` does it and returns the line to show (or None);
    ``check`` returns what went wrong (None: the step did what it must)."""

    name: str
    action: Action
    check: Verdict = _fine


# -- the steps -------------------------------------------------------------------------
def _boot(run: DemoRun) -> str:
    return f"booted Xen (IOMMU {'on' if run.iommu else 'OFF'}), dom0, xenstored, pciback"


def _assignable(run: DemoRun) -> str:
    machine = run.machine
    run.lx = Libxl(machine, machine.xs, trace=machine.trace, timeout=run.timeout)
    for sbdf in (NIC, NVME, UART):
        run.lx.assignable_add(sbdf)  # pciback protects the MSI-X table at seize
    # A page of dom0's own memory: the target of guest 2's stray DMA later.
    run.victim_gfn = machine.dom0.alloc_page()
    machine.dom0.write(run.victim_gfn << PAGE_SHIFT, DOM0_SECRET)
    run.victim_bus = machine.hv.dom0.p2m.mfn(run.victim_gfn) << PAGE_SHIFT  # machine address
    return "dom0: NIC, NVMe and UART made assignable; MSI-X tables protected"


def _all_assignable(run: DemoRun) -> str | None:
    missing = {NIC, NVME, UART} - run.machine.pciback_bound()
    return f"not seized by pciback: {sorted(map(str, missing))}" if missing else None


def _create_guests(run: DemoRun) -> str:
    run.kernels = {}
    for name in ("guest1", "guest2"):
        cfg = load_domain_config_file(EXAMPLES / f"{name}.cfg")
        try:
            domid = run.lx.domain_create(cfg)
        except Refused as e:
            if e.reason != "no-iommu":
                raise
            run.report.warnings.append(str(e))
            line = f"toolstack refused {name}: {e.reason}; retrying with --allow-unsafe"
            run.report.steps.append(line)
            domid = run.lx.domain_create(cfg, allow_unsafe=True)
        run.report.domids[name] = domid
        run.kernels[name] = run.machine.guest(domid)
    for name, cls in (("guest1", NicDriver), ("guest2", NvmeDriver)):
        kernel = run.kernels[name]
        kernel.wait_for_pcifront(run.timeout).wait_connected(1, run.timeout)
        run.wait_for(lambda k=kernel, c=cls: _has(k, c), f"{name}'s device")  # type: ignore[misc]
    return "guest1 (NIC) and guest2 (NVMe) created from xl.cfg; pcifront connected"


def _nic_loopback(run: DemoRun) -> str:
    run.nic = NicDriver(run.kernels["guest1"])
    run.drivers.append(run.nic)
    run.nic.probe()
    run.nic_sent = [run.rng.randbytes(run.rng.randint(60, 1514)) for _ in range(run.frames)]
    run.nic_got = run.nic.loopback(run.nic_sent, run.timeout)
    run.report.nic_frames = len(run.nic_got)
    n = len(run.nic_got)
    return f"guest1: {n} frames sent and received through the NIC's rings, bytes match"


def _nic_bytes_match(run: DemoRun) -> str | None:
    if run.nic_got == run.nic_sent:
        return None
    return f"{len(run.nic_got)} frames back, contents differ from the {run.frames} sent"


def _nvme_rw(run: DemoRun) -> str:
    run.disk = disk = NvmeDriver(run.kernels["guest2"])
    run.drivers.append(disk)
    disk.probe(run.timeout)
    per = 16  # blocks per command: two pages, PRP1 + PRP2
    written = b""
    for lba in range(0, run.blocks, per):
        chunk = run.rng.randbytes(per * nvme_hw.BLOCK_SIZE)
        disk.write_blocks(lba, chunk)
        written += chunk
    run.nvme_written = written
    run.nvme_back = b"".join(disk.read_blocks(lba, per) for lba in range(0, run.blocks, per))
    run.report.nvme_bytes = len(run.nvme_back)
    return f"guest2: {run.blocks} blocks written and read back through the NVMe queues, bytes match"


def _nvme_bytes_match(run: DemoRun) -> str | None:
    return None if run.nvme_back == run.nvme_written else "blocks read back differ from written"


def _msix(run: DemoRun) -> None:
    """Guest 1 reads its MSI-X table, tries to redirect a vector, masks one."""
    table = run.nic.iomap(3)  # BAR3 holds the NIC's MSI-X table at offset 0
    vec = 2
    base = vec * regs.PCI_MSIX_ENTRY_SIZE
    data = table.read(base + regs.PCI_MSIX_ENTRY_DATA, 4)
    table.write(base + regs.PCI_MSIX_ENTRY_DATA, 4, data ^ 0x5A)  # aim it elsewhere
    after = table.read(base + regs.PCI_MSIX_ENTRY_DATA, 4)
    run.report.checks.append(
        Check(
            "guest1 rewrites its MSI-X message data",
            f"dropped by Xen (data stays {after:#x})"
            if after == data
            else f"CHANGED to {after:#x}",
            after == data,
        )
    )
    ctrl = base + regs.PCI_MSIX_ENTRY_VECTOR_CTRL
    table.write(ctrl, 4, regs.PCI_MSIX_ENTRY_CTRL_MASKBIT)
    masked = table.read(ctrl, 4) & regs.PCI_MSIX_ENTRY_CTRL_MASKBIT
    table.write(ctrl, 4, 0)
    unmasked = not table.read(ctrl, 4) & regs.PCI_MSIX_ENTRY_CTRL_MASKBIT
    run.report.checks.append(
        Check(
            "guest1 masks and unmasks an MSI-X vector",
            "allowed (mediated by Xen)" if masked and unmasked else "mask bit did not follow",
            bool(masked and unmasked),
        )
    )


def _hotplug(run: DemoRun) -> str:
    g1, report = run.kernels["guest1"], run.report
    run.lx.pci_attach("guest1", PciSpec(UART))
    run.wait_for(lambda: _has(g1, SerialDriver), "the UART in guest1")
    report.hotplug.append(f"{UART} attached to guest1")
    uart = SerialDriver(g1)
    uart.probe()
    run.uart_echo = uart.loopback(b"hello through port IO")
    report.uart_bytes = len(run.uart_echo)
    uart_port = uart.bar(0).address
    uart.remove()
    run.lx.pci_detach("guest1", PciSpec(UART))
    run.wait_for(lambda: not _has(g1, SerialDriver), "the UART to leave guest1")
    report.hotplug.append(f"{UART} detached from guest1")
    report.checks.append(
        _expect_refused(
            "guest1 uses the UART's ports after detach",
            lambda: g1.domain.hypercalls.ioport_read(uart_port, 1),
        )
    )
    return f"hot-plug: UART into guest1, {len(run.uart_echo)} bytes by port IO, then removed"


def _uart_echoed(run: DemoRun) -> str | None:
    text = b"hello through port IO"
    return None if run.uart_echo == text else f"UART loopback returned {run.uart_echo!r}"


def _isolation(run: DemoRun) -> str:
    g2 = run.kernels["guest2"].domain.hypercalls
    nic_bar = run.nic.bar(0)
    run.report.checks.append(
        _expect_refused(
            "guest2 maps guest1's NIC BAR0",
            lambda: g2.mmio_map(nic_bar.address >> PAGE_SHIFT, 1),
        )
    )
    run.report.checks.append(
        _expect_refused(
            "guest2 grants itself guest1's BAR (iomem_permission)",
            lambda: g2.iomem_permission(g2.domid, nic_bar.address >> PAGE_SHIFT, 1, True),
        )
    )
    _dma_attack(run)
    dma = "faulted in the IOMMU" if run.iommu else "REACHED dom0's memory (no IOMMU)"
    return f"isolation: guest2's BAR mapping and port access refused; its stray DMA {dma}"


def _teardown(run: DemoRun) -> str:
    for drv in reversed(run.drivers):
        drv.remove()
    run.drivers.clear()
    for name in ("guest2", "guest1"):
        run.lx.domain_destroy(name)
    return "guests destroyed; devices reset and back with pciback"


def _devices_back(run: DemoRun) -> str | None:
    missing = {NIC, NVME, UART} - run.machine.pciback_bound()
    return f"not back with pciback: {sorted(map(str, missing))}" if missing else None


#: The story, in order.
STEPS: tuple[Step, ...] = (
    Step("boot", _boot),
    Step("assignable", _assignable, _all_assignable),
    Step("guests", _create_guests),
    Step("NIC", _nic_loopback, _nic_bytes_match),
    Step("NVMe", _nvme_rw, _nvme_bytes_match),
    Step("MSI-X", _msix),
    Step("hot-plug", _hotplug, _uart_echoed),
    Step("isolation", _isolation),
    Step("teardown", _teardown, _devices_back),
)

Progress = Callable[[str], None]


def run_demo(
    *,
    iommu: bool = True,
    frames: int = 32,
    blocks: int = 64,
    progress: Progress | None = None,
    timeout: float = 10.0,
    seed: int = 7,
    deterministic: bool = False,
) -> DemoReport:
    """Run :data:`STEPS`; raise :class:`DemoError` if any step misbehaves."""
    with _batch_gc():
        return _run_steps(iommu, frames, blocks, progress, timeout, seed, deterministic)


#: Allocations between young-generation collections while the demo runs.
DEMO_GC_GEN0 = 50_000


@contextlib.contextmanager
def _batch_gc() -> Iterator[None]:
    """Fewer young-generation collections while the demo runs, restored after.

    A machine is mostly long-lived objects (its frames, device models, trace
    records): at CPython's default (one young collection per 700 allocations)
    the demo spent ~2 ms a run scanning them for nothing. Garbage is still
    collected, just in fewer passes; the caller's thresholds come back
    whatever happens.
    """
    old = gc.get_threshold()
    gc.set_threshold(DEMO_GC_GEN0, old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def _run_steps(
    iommu: bool,
    frames: int,
    blocks: int,
    progress: Progress | None,
    timeout: float,
    seed: int,
    deterministic: bool,
) -> DemoReport:
    say = progress or (lambda _s: None)
    run = DemoRun(iommu=iommu, frames=frames, blocks=blocks, timeout=timeout, seed=seed)
    t0 = time.perf_counter()
    run.start(boot_machine(HostDescription(iommu=iommu), deterministic=deterministic))
    report = run.report
    try:
        for step in STEPS:
            shown = len(report.steps)
            line = step.action(run)
            problem = step.check(run)
            if problem is not None:
                raise DemoError(f"{step.name}: {problem}")
            for extra in report.steps[shown:]:
                say(extra)  # lines a step added on its way (a refusal and its retry)
            if line is not None:
                report.steps.append(line)
                say(line)
    finally:
        for drv in run.drivers:
            with contextlib.suppress(XenpciError):
                drv.remove()
        run.machine.shutdown()
    report.counts = path_counts(report.trace)
    report.seconds = time.perf_counter() - t0
    return report


# -- helpers ---------------------------------------------------------------------------
def _has(kernel: GuestKernel, cls: type[PciDriver]) -> bool:
    return any((d.vendor, d.device) == (cls.VENDOR, cls.DEVICE) for d in kernel.pci.devices())


def _expect_refused(what: str, attempt: Callable[[], object]) -> Check:
    try:
        attempt()
    except HvError as e:
        return Check(what, f"refused: {e.errno}", True, str(e))
    return Check(what, "ALLOWED", False)


def _dma_attack(run: DemoRun) -> None:
    """Guest 2 aims an NVMe read (device -> memory) at a bus address beyond its memory."""
    report = run.report
    status = run.disk.submit_io(nvme_hw.NVM_READ, 0, 1, run.victim_bus)
    now = run.machine.dom0.read(run.victim_gfn << PAGE_SHIFT, len(DOM0_SECRET))
    report.dom0_overwritten = now != DOM0_SECRET
    what = f"guest2's NVMe DMAs to bus address {run.victim_bus:#x} (dom0's memory)"
    if report.iommu:
        ok = status == nvme_hw.SC_DATA_TRANSFER_ERROR and not report.dom0_overwritten
        outcome = f"IOMMU fault; command failed with NVMe status {status:#x} (Data Transfer Error)"
        report.checks.append(Check(what, outcome, ok, Kind.DMA_FAULT))
    else:
        outcome = (
            "landed in dom0's memory (no IOMMU): dom0's page overwritten"
            if report.dom0_overwritten
            else f"status {status:#x}, dom0's page unchanged"
        )
        # Without an IOMMU the attack succeeding is the expected (and shown) outcome.
        report.checks.append(Check(what, outcome, report.dom0_overwritten))
