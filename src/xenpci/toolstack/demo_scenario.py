"""The whole passthrough story in one run: what ``xenpci demo`` does, as a library.

There is no real counterpart: this is the script a Xen engineer would follow
on a test box to show PCI passthrough to PV guests end to end. It boots a
machine (Xen, dom0 with xenstored and pciback), makes the NIC, the NVMe-like
disk and the legacy UART assignable, creates ``guest1`` and ``guest2`` from
the shipped ``xl.cfg`` files through the toolstack (:class:`Libxl`), runs the
guest drivers' workloads with data checked end to end, hot-plugs the UART
into guest 1 and removes it, and then plays the attacks a hostile guest 2
would try: map guest 1's BAR, DMA outside its memory, redirect an MSI-X
message. The trace of the run gives the proof that the data plane never
touches dom0 (:func:`path_counts`), and a sequence diagram of the connect
handshake and one op (:func:`sequence`). MSI-X tables are protected by
pciback itself when it seizes a device, as in Linux.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
from xenpci.trace import Trace

EXAMPLES = Path(__file__).parent / "examples"
NIC = SBDF.parse("0000:03:00.0")
NVME = SBDF.parse("0000:04:00.0")
UART = SBDF.parse("0000:07:00.0")
DOM0_SECRET = b"dom0 private data: must never be reachable by a guest".ljust(64, b".")

#: Trace kinds per row of the path table.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "XenStore": ("xenstore_request",),
    "pci ops": ("pci_op",),
    "MMIO": ("mmio_read", "mmio_write", "mmio_mediated", "mmio_unmapped"),
    "port IO": ("ioport_read", "ioport_write"),
    "DMA": ("dma_read", "dma_write", "dma_fault"),
    "interrupts": ("pirq",),
}


class DemoError(XenpciError):
    """A step of the demo did not do what it must (the message names the step)."""


@dataclass(frozen=True, slots=True)
class PathCount:
    """One row of the table: operations of a category by the path they took."""

    category: str
    dom0: int
    direct: int
    hypervisor: int

    def __post_init__(self) -> None:
        if min(self.dom0, self.direct, self.hypervisor) < 0:
            raise ValueError("counts are non-negative")


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


# -- the run -------------------------------------------------------------------------
Progress = Callable[[str], None]


def _wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, machine: Machine | None = None
) -> None:
    ex = machine.hv.scheduler if machine is not None else None
    if ex is not None:
        if not ex.wait_until(predicate, timeout):
            raise DemoError(f"timed out waiting for {what}")
        return
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out waiting for {what}")
        time.sleep(0.002)


def _has(kernel: GuestKernel, cls: type[PciDriver]) -> bool:
    return any((d.vendor, d.device) == (cls.VENDOR, cls.DEVICE) for d in kernel.pci.devices())


def _frames(n: int, rng: random.Random) -> list[bytes]:
    return [rng.randbytes(rng.randint(60, 1514)) for _ in range(n)]


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
    """Run the whole story; raise :class:`DemoError` if any step misbehaves."""
    say = progress or (lambda _s: None)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    machine = boot_machine(HostDescription(iommu=iommu), deterministic=deterministic)
    trace = machine.trace
    report = DemoReport(iommu=iommu, trace=trace)

    def step(text: str) -> None:
        report.steps.append(text)
        say(text)

    drivers: list[PciDriver] = []
    try:
        step(f"booted Xen (IOMMU {'on' if iommu else 'OFF'}), dom0, xenstored, pciback")
        lx = Libxl(machine, machine.xs, trace=trace, timeout=timeout)
        for sbdf in (NIC, NVME, UART):
            lx.assignable_add(sbdf)  # pciback protects the MSI-X table at seize
        step("dom0: NIC, NVMe and UART made assignable; MSI-X tables protected")

        # A page of dom0's own memory: the target of guest 2's stray DMA later.
        dom0 = machine.hv.dom0
        victim_gfn = machine.dom0.alloc_page()
        machine.dom0.write(victim_gfn << PAGE_SHIFT, DOM0_SECRET)
        victim_bus = dom0.p2m.mfn(victim_gfn) << PAGE_SHIFT  # its machine address

        kernels: dict[str, GuestKernel] = {}
        for name in ("guest1", "guest2"):
            cfg = load_domain_config_file(EXAMPLES / f"{name}.cfg")
            try:
                domid = lx.domain_create(cfg)
            except Refused as e:
                if e.reason != "no-iommu":
                    raise
                report.warnings.append(str(e))
                step(f"toolstack refused {name}: {e.reason}; retrying with --allow-unsafe")
                domid = lx.domain_create(cfg, allow_unsafe=True)
            report.domids[name] = domid
            kernels[name] = machine.guest(domid)
        for name, cls in (("guest1", NicDriver), ("guest2", NvmeDriver)):
            kernel = kernels[name]
            kernel.wait_for_pcifront(timeout).wait_connected(1, timeout)
            _wait_for(lambda k=kernel, c=cls: _has(k, c), timeout, f"{name}'s device", machine)  # type: ignore[misc]
        step("guest1 (NIC) and guest2 (NVMe) created from xl.cfg; pcifront connected")

        # -- workloads -------------------------------------------------------------
        nic = NicDriver(kernels["guest1"])
        drivers.append(nic)
        nic.probe()
        sent = _frames(frames, rng)
        got = nic.loopback(sent, timeout)
        if got != sent:
            raise DemoError(f"NIC: {len(got)} frames back, contents differ from the {frames} sent")
        report.nic_frames = len(got)
        step(f"guest1: {len(got)} frames sent and received through the NIC's rings, bytes match")

        disk = NvmeDriver(kernels["guest2"])
        drivers.append(disk)
        disk.probe(timeout)
        per = 16  # blocks per command: two pages, PRP1 + PRP2
        written = b""
        for lba in range(0, blocks, per):
            chunk = rng.randbytes(per * nvme_hw.BLOCK_SIZE)
            disk.write_blocks(lba, chunk)
            written += chunk
        back = b"".join(disk.read_blocks(lba, per) for lba in range(0, blocks, per))
        if back != written:
            raise DemoError("NVMe: blocks read back differ from those written")
        report.nvme_bytes = len(back)
        step(f"guest2: {blocks} blocks written and read back through the NVMe queues, bytes match")

        # -- MSI-X table: mediated ---------------------------------------------------------
        _msix_checks(report, nic)

        # -- hot-plug ---------------------------------------------------------------------
        g1 = kernels["guest1"]
        lx.pci_attach("guest1", PciSpec(UART))
        _wait_for(lambda: _has(g1, SerialDriver), timeout, "the UART in guest1", machine)
        report.hotplug.append(f"{UART} attached to guest1")
        uart = SerialDriver(g1)
        uart.probe()
        text = b"hello through port IO"
        echoed = uart.loopback(text)
        if echoed != text:
            raise DemoError(f"UART loopback returned {echoed!r}")
        report.uart_bytes = len(echoed)
        uart_port = uart.bar(0).address
        uart.remove()
        lx.pci_detach("guest1", PciSpec(UART))
        _wait_for(lambda: not _has(g1, SerialDriver), timeout, "the UART to leave guest1", machine)
        report.hotplug.append(f"{UART} detached from guest1")
        step(f"hot-plug: UART into guest1, {len(echoed)} bytes by port IO, then removed")
        report.checks.append(
            _expect_refused(
                "guest1 uses the UART's ports after detach",
                lambda: g1.domain.hypercalls.ioport_read(uart_port, 1),
            )
        )

        # -- isolation ---------------------------------------------------------------------
        g2 = kernels["guest2"].domain.hypercalls
        nic_bar = nic.bar(0)
        report.checks.append(
            _expect_refused(
                "guest2 maps guest1's NIC BAR0",
                lambda: g2.mmio_map(nic_bar.address >> PAGE_SHIFT, 1),
            )
        )
        report.checks.append(
            _expect_refused(
                "guest2 grants itself guest1's BAR (iomem_permission)",
                lambda: g2.iomem_permission(g2.domid, nic_bar.address >> PAGE_SHIFT, 1, True),
            )
        )
        _dma_attack(report, machine, disk, victim_gfn, victim_bus)
        dma = "faulted in the IOMMU" if iommu else "REACHED dom0's memory (no IOMMU)"
        step(f"isolation: guest2's BAR mapping and port access refused; its stray DMA {dma}")

        # -- teardown -----------------------------------------------------------------------
        for drv in reversed(drivers):
            drv.remove()
        drivers.clear()
        for name in ("guest2", "guest1"):
            lx.domain_destroy(name)
        step("guests destroyed; devices reset and back with pciback")
    finally:
        for drv in drivers:
            with contextlib.suppress(XenpciError):
                drv.remove()
        machine.shutdown()
    report.counts = path_counts(trace)
    report.seconds = time.perf_counter() - t0
    return report


def _expect_refused(what: str, attempt: Callable[[], object]) -> Check:
    try:
        attempt()
    except HvError as e:
        return Check(what, f"refused: {e.errno}", True, str(e))
    return Check(what, "ALLOWED", False)


def _msix_checks(report: DemoReport, nic: NicDriver) -> None:
    """Guest 1 reads its MSI-X table, tries to redirect a vector, masks one."""
    table = nic.iomap(3)  # BAR3 holds the NIC's MSI-X table at offset 0
    vec = 2
    base = vec * regs.PCI_MSIX_ENTRY_SIZE
    data = table.read(base + regs.PCI_MSIX_ENTRY_DATA, 4)
    table.write(base + regs.PCI_MSIX_ENTRY_DATA, 4, data ^ 0x5A)  # aim it elsewhere
    after = table.read(base + regs.PCI_MSIX_ENTRY_DATA, 4)
    report.checks.append(
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
    report.checks.append(
        Check(
            "guest1 masks and unmasks an MSI-X vector",
            "allowed (mediated by Xen)" if masked and unmasked else "mask bit did not follow",
            bool(masked and unmasked),
        )
    )


def _dma_attack(
    report: DemoReport, machine: Machine, disk: NvmeDriver, victim_gfn: int, victim_bus: int
) -> None:
    """Guest 2 aims an NVMe read (device -> memory) at a bus address beyond its memory."""
    status = disk.submit_io(nvme_hw.NVM_READ, 0, 1, victim_bus)
    now = machine.dom0.read(victim_gfn << PAGE_SHIFT, len(DOM0_SECRET))
    report.dom0_overwritten = now != DOM0_SECRET
    what = f"guest2's NVMe DMAs to bus address {victim_bus:#x} (dom0's memory)"
    if report.iommu:
        ok = status == nvme_hw.SC_DATA_TRANSFER_ERROR and not report.dom0_overwritten
        outcome = f"IOMMU fault; command failed with NVMe status {status:#x} (Data Transfer Error)"
        report.checks.append(Check(what, outcome, ok, "dma_fault"))
    else:
        outcome = (
            "landed in dom0's memory (no IOMMU): dom0's page overwritten"
            if report.dom0_overwritten
            else f"status {status:#x}, dom0's page unchanged"
        )
        # Without an IOMMU the attack succeeding is the expected (and shown) outcome.
        report.checks.append(Check(what, outcome, report.dom0_overwritten))


# -- counting ------------------------------------------------------------------------
def path_counts(trace: Trace) -> list[PathCount]:
    """Per category: operations through dom0, direct, and mediated by the hypervisor.

    Stored kinds are counted by their recorded path; count-only kinds (MMIO,
    port IO) record ``direct`` for guests, so dom0's own accesses are those of
    domid 0.
    """
    by_kind: dict[str, dict[str, int]] = {}
    for ev in trace.events:
        slot = by_kind.setdefault(ev.kind, {})
        slot[ev.path] = slot.get(ev.path, 0) + 1
    rows = []
    for category, kinds in CATEGORIES.items():
        tally = {"dom0": 0, "direct": 0, "hypervisor": 0}
        for kind in kinds:
            if kind in trace.count_only:
                mine = trace.count(kind, 0)
                tally["dom0"] += mine
                tally["direct"] += trace.count(kind) - mine
            else:
                for path, n in by_kind.get(kind, {}).items():
                    tally[path] += n
        rows.append(PathCount(category, tally["dom0"], tally["direct"], tally["hypervisor"]))
    return rows


# -- the sequence diagram ------------------------------------------------------------
PARTICIPANTS = ("guest1", "xenstored", "dom0", "Xen", "device")


@dataclass(frozen=True, slots=True)
class Message:
    """One arrow of the diagram."""

    src: str
    dst: str
    label: str
    section: str

    def __post_init__(self) -> None:
        if self.src not in PARTICIPANTS or self.dst not in PARTICIPANTS:
            raise ValueError(f"unknown participant in {self.src} -> {self.dst}")
        if self.section not in ("connect", "op", "data"):
            raise ValueError(f"unknown section {self.section!r}")


_XS_OPS = ("XS_WRITE", "XS_WATCH", "XS_MKDIR")


def sequence(trace: Trace, guest: int) -> list[Message]:
    """Arrows for ``guest``'s pcifront connect handshake, its first pci op, first data path.

    Read from the trace: the guest's XenStore ring set-up (before it watches
    ``device/pci/0``) is left out, as are events of other domains.
    """
    front = f"/local/domain/{guest}/device/pci/0"
    back = f"/backend/pci/{guest}/0"
    out: list[Message] = []
    labels: set[str] = set()
    watching = False
    port: int | None = None
    op_state = 0  # 0: none yet, 1: request seen, 2: served, 3: answered
    data_seen: set[str] = set()

    def add(src: str, dst: str, label: str, section: str) -> None:
        key = f"{src}>{dst}:{label}"
        if key not in labels:
            labels.add(key)
            out.append(Message(src, dst, label, section))

    for ev in trace.events:
        a = ev.args
        kind = ev.kind
        if kind == "xenstore_request" and ev.domid in (0, guest):
            path = str(a.get("arg", ""))
            if a.get("op") not in _XS_OPS or not (path.startswith(front) or back in path):
                continue
            if op_state:
                continue  # the handshake is over; later writes are hot-plug
            if ev.domid == guest and a.get("op") == "XS_WATCH":
                watching = True
            short = path.replace("/local/domain/", "")
            add(
                "guest1" if ev.domid == guest else "dom0",
                "xenstored",
                f"{a['op']} {short}",
                "connect",
            )
        elif not watching or ev.domid not in (0, guest):
            continue
        elif kind == "evtchn_alloc_unbound" and ev.domid == guest and port is None:
            port = a.get("result")
            add("guest1", "Xen", "evtchn_alloc_unbound (pcifront port)", "connect")
        elif kind == "gnttab_grant_foreign_access" and ev.domid == guest:
            add("guest1", "Xen", "grant the pci_op page to dom0", "connect")
        elif kind in ("gnttab_map_grant_ref", "evtchn_bind_interdomain") and ev.domid == 0:
            if a.get("granter", a.get("remote_domid")) == guest:
                add("dom0", "Xen", kind, "connect")
        elif kind == "evtchn_send" and port is not None and op_state < 3:
            if ev.domid == guest and a.get("port") == port and op_state == 0:
                add("guest1", "dom0", "event: pci_op posted", "op")
                op_state = 1
            elif (
                op_state == 2
                and ev.domid == 0
                and a.get("to_domid") == guest
                and a.get("to_port") == port
            ):
                add("dom0", "guest1", "event: pci_op answered", "op")
                op_state = 3
        elif kind == "pci_op" and ev.domid == guest and op_state == 1:
            where = f" at {a['offset']:#x}" if isinstance(a.get("offset"), int) else ""
            add("dom0", "device", f"{a.get('cmd')}{where} (through the config filter)", "op")
            op_state = 2
        elif ev.domid == guest and kind not in data_seen and op_state == 3:
            label = {
                "mmio_map": "mmio_map BAR (checked against the iomem grant)",
                "assign_device": "",
                "evtchn_bind_pirq": "evtchn_bind_pirq (MSI-X vector)",
                "dma_read": "DMA read, translated by the IOMMU",
                "dma_write": "DMA write, translated by the IOMMU",
                "pirq": "MSI-X -> pirq -> event channel",
            }.get(kind)
            if not label:
                continue
            data_seen.add(kind)
            src, dst = {
                "mmio_map": ("guest1", "Xen"),
                "evtchn_bind_pirq": ("guest1", "Xen"),
                "dma_read": ("device", "Xen"),
                "dma_write": ("device", "Xen"),
                "pirq": ("Xen", "guest1"),
            }[kind]
            add(src, dst, label, "data")
    return out


def mermaid(messages: list[Message]) -> str:
    lines = ["sequenceDiagram"]
    for p in PARTICIPANTS:
        lines.append(f"    participant {p}")
    section = ""
    for m in messages:
        if m.section != section:
            section = m.section
            lines.append(f"    Note over guest1,device: {section}")
        label = m.label.replace(";", ",").replace("#", "")
        lines.append(f"    {m.src}->>{m.dst}: {label}")
    return "\n".join(lines) + "\n"


def _esc(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def html(messages: list[Message], title: str = "xenpci: connect handshake and one op") -> str:
    """A self-contained HTML page with the diagram as inline SVG (no scripts, no fetches)."""
    col, top, step = 190, 60, 26
    width = col * len(PARTICIPANTS) + 40
    x = {p: 20 + col // 2 + i * col for i, p in enumerate(PARTICIPANTS)}
    height = top + step * (len(messages) + 2) + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="11">',
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="8" refY="4" '
        'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#333"/></marker></defs>',
    ]
    for p, px in x.items():
        parts.append(
            f'<rect x="{px - 80}" y="10" width="160" height="28" fill="#eef" stroke="#336"/>'
            f'<text x="{px}" y="29" text-anchor="middle">{_esc(p)}</text>'
            f'<line x1="{px}" y1="38" x2="{px}" y2="{height - 10}" stroke="#99a" '
            'stroke-dasharray="4,3"/>'
        )
    y = top
    for m in messages:
        x1, x2 = x[m.src], x[m.dst]
        colour = {"connect": "#225", "op": "#552", "data": "#252"}[m.section]
        parts.append(
            f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{colour}" '
            'marker-end="url(#arrow)"/>'
            f'<text x="{(x1 + x2) / 2}" y="{y - 4}" text-anchor="middle" fill="{colour}">'
            f"{_esc(m.label)}</text>"
        )
        y += step
    parts.append("</svg>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title></head><body>\n<h1>{_esc(title)}</h1>\n"
        "<p>Blue: XenBus connect handshake; olive: one pcifront op through dom0; "
        "green: the data plane, straight between guest, Xen and the device.</p>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def write_diagram(trace: Trace, guest: int, path: str | Path) -> int:
    """Write the diagram (Mermaid if ``path`` ends in ``.mmd``, else HTML); return arrows."""
    messages = sequence(trace, guest)
    p = Path(path)
    text = mermaid(messages) if p.suffix == ".mmd" else html(messages)
    p.write_text(text, encoding="utf-8")
    return len(messages)
