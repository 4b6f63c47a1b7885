"""Passthrough-readiness rules: one table, one row per check per device.

In the spirit of libvirt's ``virt-host-validate`` (``virt-host-validate-common.c``:
each check prints PASS/WARN/FAIL with a reason), but per device and for Xen PV
passthrough. The facts behind each rule:

* ``iommu``: without an IOMMU a guest driving a DMA-capable device reaches all
  machine memory (Xen's ``SUPPORT.md``; libxl refuses ``pci=`` then).
* ``iommu-group``: the IOMMU cannot tell the members of a group apart, so all of
  them go to the same guest (Linux ``drivers/iommu/iommu.c``).
* ``acs``: a root or downstream port without ACS Source Validation, Request and
  Completion Redirect and Upstream Forwarding (Linux ``REQ_ACS_FLAGS`` in
  ``drivers/pci/pci.c``) lets devices below it talk peer to peer past the IOMMU;
  a PCIe-to-PCI(-X) or conventional bridge takes ownership of its secondary
  side's requests, so every device behind it shares one requester ID
  (``pci_for_each_dma_alias``).
* ``reset``: Linux's ``pci_reset_fn_methods`` order -- FLR (Express DevCap),
  AF FLR, PM (D3hot->D0, only when No_Soft_Reset is clear), secondary bus reset
  (which resets every function on that bus).
* ``shared-page``: a memory BAR smaller than a page that shares its page with
  another device's BAR hands the guest that neighbour's registers (XSA-461).
* ``msix-page``: Xen write-protects the pages of the MSI-X table and PBA; other
  registers in those pages become read-only or trapped for the guest.
* ``dom0-use``: a bound dom0 driver, the boot VGA (dom0's console) or a mounted
  filesystem behind the device.
* ``pciback``: bound to pciback (or claimed by pci-stub) already.
* ``config``: pciback can build the guest's view of the config space only
  from a header type it handles (0 and 1, ``xen_pcibk_config_init_dev``) and
  known BAR sizes; from a dump without ``Region`` lines that view would be a
  guess.

The toolstack refuses ``pci-attach``/``xl create`` and ``xenpci pci
guest-view`` leaves devices out through one table, :data:`REFUSALS` (which of
these rules refuse, and which ``--allow-unsafe`` overrides), read by
:func:`refusals`, so the reason text is the same everywhere. Deliberate
difference from virt-host-validate: a warning is not a pass, so the CLI
exits non-zero on warnings too (2; 1 on failures).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from xenpci.check.host import HostFacts
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.capabilities import find_capability, find_ext_capability
from xenpci.pci.function import PciFunction

Status = Literal["pass", "warn", "fail"]
PAGE_SHIFT = 12  # x86 pages: what Xen grants a PV guest's iomem permissions in
PAGE_SIZE = 1 << PAGE_SHIFT

# ACS capability (PCIe Base §7.7.8): control register and Linux's REQ_ACS_FLAGS.
PCI_ACS_CAP = 0x04
PCI_ACS_CTRL = 0x06
PCI_ACS_SV = 0x01
PCI_ACS_RR = 0x04
PCI_ACS_CR = 0x08
PCI_ACS_UF = 0x10
REQ_ACS_FLAGS = {"SV": PCI_ACS_SV, "RR": PCI_ACS_RR, "CR": PCI_ACS_CR, "UF": PCI_ACS_UF}
#: Express types whose multifunction devices need ACS between functions (pci_acs_enabled).
_MF_ACS_TYPES = (
    regs.PCI_EXP_TYPE_ENDPOINT,
    regs.PCI_EXP_TYPE_UPSTREAM,
    regs.PCI_EXP_TYPE_LEG_END,
    regs.PCI_EXP_TYPE_RC_END,
)
#: Drivers that hold a device for passthrough rather than use it.
PASSTHROUGH_DRIVERS = ("pciback", "xen-pciback", "pci-stub")


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule's verdict on one device."""

    status: Status
    reason: str


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the report."""

    device: SBDF
    rule: str
    status: Status
    reason: str


RuleFn = Callable[[HostFacts, PciFunction], Finding]


@dataclass(frozen=True, slots=True)
class CheckRule:
    """A row of the rule table: name, function, what a failure means.

    ``refusal`` is the toolstack's reason code when it refuses on this rule.
    """

    name: str
    check: RuleFn
    meaning: str
    refusal: str | None = None


# --- shared reason texts (the toolstack's refusals say exactly these) --------------------
def no_iommu_reason(sbdf: SBDF) -> str:
    return (
        f"PCI device {sbdf} can DMA and this machine has no IOMMU: the guest could "
        "read and write all memory and would be as trusted as dom0"
    )


def shared_page_reason(sbdf: SBDF, hits: Sequence[str]) -> str:
    return (
        f"PCI device {sbdf} has a BAR smaller than a page sharing it with another "
        f"device ({'; '.join(hits)}); the guest would be granted the neighbour's "
        "registers (XSA-461)"
    )


# --- topology -----------------------------------------------------------------------------
def is_dma_capable(fn: PciFunction) -> bool:
    """Any endpoint can master the bus; a bridge forwards, it does not master."""
    return fn.config.header_type == regs.PCI_HEADER_TYPE_NORMAL


def _express_type(fn: PciFunction) -> int | None:
    exp = find_capability(fn.config, regs.PCI_CAP_ID_EXP)
    if exp is None or exp + 4 > fn.config.known_size:
        return None
    return (fn.config.read(exp + regs.PCI_EXP_FLAGS, 2) & regs.PCI_EXP_FLAGS_TYPE) >> 4


def _bus_range(fn: PciFunction) -> tuple[int, int] | None:
    cs = fn.config
    if cs.header_type != regs.PCI_HEADER_TYPE_BRIDGE or cs.known_size <= regs.PCI_SUBORDINATE_BUS:
        return None
    return cs.read(regs.PCI_SECONDARY_BUS, 1), cs.read(regs.PCI_SUBORDINATE_BUS, 1)


def upstream_bridges(fn: PciFunction, functions: Iterable[PciFunction]) -> list[PciFunction]:
    """Bridges between the root complex and ``fn``, outermost first (from bus numbers)."""
    chain = []
    for b in functions:
        rng = _bus_range(b)
        if (
            rng
            and b.sbdf != fn.sbdf
            and b.sbdf.segment == fn.sbdf.segment
            and 0 < rng[0] <= fn.sbdf.bus <= rng[1]
        ):
            chain.append((rng[0], b))
    return [b for _, b in sorted(chain, key=lambda t: t[0])]


def bus_siblings(fn: PciFunction, functions: Iterable[PciFunction]) -> list[SBDF]:
    """Other functions on ``fn``'s bus: what a secondary bus reset also resets."""
    return sorted(
        f.sbdf
        for f in functions
        if f.sbdf != fn.sbdf and (f.sbdf.segment, f.sbdf.bus) == (fn.sbdf.segment, fn.sbdf.bus)
    )


def _truncated(fn: PciFunction, need: int) -> str | None:
    if fn.config.known_size < need:
        return f"config of {fn.sbdf} known only to byte {fn.config.known_size} (read as root)"
    return None


# --- the rules ------------------------------------------------------------------------------
def check_iommu(facts: HostFacts, fn: PciFunction) -> Finding:
    enabled = facts.iommu_enabled
    if enabled:
        units = ", ".join(facts.iommu_units or []) or "named by the dump's IOMMU groups"
        return Finding("pass", f"IOMMU present and enabled ({units})")
    if enabled is None:
        return Finding("warn", "unknown: the source does not say whether an IOMMU is enabled")
    if not is_dma_capable(fn):
        return Finding("warn", f"no IOMMU; {fn.sbdf} is a bridge (it does not master the bus)")
    if facts.iommu is not None:  # the caller asked the hypervisor itself
        return Finding("fail", no_iommu_reason(fn.sbdf))
    where = "/sys/class/iommu is empty" if not facts.iommu_units else "no IOMMU groups"
    xen = (
        " (Xen dom0: Xen owns the IOMMU and dom0's kernel does not list it; see 'xl info')"
        if facts.hypervisor == "xen"
        else ""
    )
    return Finding("fail", f"{no_iommu_reason(fn.sbdf)} ({where}){xen}")


def check_iommu_group(facts: HostFacts, fn: PciFunction) -> Finding:
    groups = facts.iommu_groups
    group = fn.iommu_group
    if group is None and groups:
        group = next((g for g, m in groups.items() if fn.sbdf in m), None)
    if groups is None and group is None:
        return Finding("warn", "unknown: the source names no IOMMU group")
    if group is None:
        return Finding("fail", f"{fn.sbdf} is in no IOMMU group: nothing isolates its DMA")
    members = (groups or {}).get(group, [fn.sbdf])
    others = [m for m in members if m != fn.sbdf]
    if not others:
        return Finding("pass", f"IOMMU group {group}: {fn.sbdf} alone")
    endpoints = [m for m in others if (o := facts.function(m)) is None or o.config.header_type != 1]
    text = ", ".join(str(m) for m in others)
    if not endpoints:
        return Finding("pass", f"IOMMU group {group} also holds bridge(s) {text}")
    return Finding("warn", f"IOMMU group {group} also holds {text}: all must go to the same guest")


def check_acs(facts: HostFacts, fn: PciFunction) -> Finding:
    problems: list[str] = []
    chain = upstream_bridges(fn, facts.functions)
    for b in chain:
        t = _express_type(b)
        if t is None and _truncated(b, 0x100):
            problems.append(f"bridge {b.sbdf}: {_truncated(b, 0x100)}")
        elif t is None or t == regs.PCI_EXP_TYPE_PCI_BRIDGE:
            kind = "PCIe-to-PCI(-X)" if t is not None else "conventional PCI"
            problems.append(
                f"{kind} bridge {b.sbdf} aliases requester IDs: every device behind it "
                "is one source to the IOMMU"
            )
        elif t in (regs.PCI_EXP_TYPE_ROOT_PORT, regs.PCI_EXP_TYPE_DOWNSTREAM):
            problems.extend(_acs_problems(b, "port"))
    slot = (fn.sbdf.segment, fn.sbdf.bus, fn.sbdf.device)
    others = [
        f
        for f in facts.functions
        if f.sbdf != fn.sbdf and (f.sbdf.segment, f.sbdf.bus, f.sbdf.device) == slot
    ]
    if fn.config.multifunction and others:
        # pci_acs_enabled: a multifunction endpoint (or upstream port) needs ACS to keep
        # its functions apart; conventional PCI never has it (a shared bus snoops DMA).
        t = _express_type(fn)
        if t in _MF_ACS_TYPES:
            problems.extend(_acs_problems(fn, "multifunction device"))
        elif t is None and not _truncated(fn, regs.PCI_CFG_SPACE_SIZE):
            problems.append(f"conventional PCI multifunction device {fn.sbdf} has no ACS")
    if problems:
        return Finding("warn", "; ".join(problems))
    if not chain:
        return Finding("pass", "no bridge above it (on a root bus, as far as the source shows)")
    return Finding("pass", f"ACS SV RR CR UF on every port above it ({len(chain)} bridge(s))")


def _acs_problems(fn: PciFunction, what: str) -> list[str]:
    if fn.config.known_size <= regs.PCI_CFG_SPACE_SIZE:
        # A PCIe function always has extended space; the source just did not give it.
        return [f"{what} {fn.sbdf}: ACS unknown (extended config space not in the source)"]
    acs = find_ext_capability(fn.config, regs.PCI_EXT_CAP_ID_ACS)
    if acs is None:
        return [f"{what} {fn.sbdf} has no ACS capability"]
    # pci_acs_flags_enabled: a feature the capability lacks counts as hard-wired on.
    cap = fn.config.read(acs + PCI_ACS_CAP, 2)
    ctrl = fn.config.read(acs + PCI_ACS_CTRL, 2)
    missing = [n for n, bit in REQ_ACS_FLAGS.items() if cap & bit and not ctrl & bit]
    if missing:
        return [f"{what} {fn.sbdf}: ACS {' '.join(missing)} not enabled"]
    return []


def check_reset(facts: HostFacts, fn: PciFunction) -> Finding:
    methods = fn.reset_methods()
    notes: list[str] = []
    pm = find_capability(fn.config, regs.PCI_CAP_ID_PM)
    if (
        pm is not None
        and pm + 6 <= fn.config.known_size
        and fn.config.read(pm + regs.PCI_PM_CTRL, 2) & regs.PCI_PM_CTRL_NO_SOFT_RESET
    ):
        notes.append("no PM reset: No_Soft_Reset is set (D3hot->D0 keeps state)")
    siblings = bus_siblings(fn, facts.functions)
    below_bridge = bool(upstream_bridges(fn, facts.functions))
    if siblings and below_bridge:
        # pci_parent_bus_reset: only a function alone on its bus may reset it.
        hit = ", ".join(str(s) for s in siblings)
        notes.append(f"no secondary bus reset: it would also reset {hit}")
    elif not fn.reset_methods_listed and below_bridge and fn.config.header_type == 0:
        methods.append("bus")  # what Linux's pci_init_reset_methods would find
    shown = " ".join(methods) or "none"
    tail = "".join(f"; {n}" for n in notes)
    if any(m in methods for m in ("flr", "af_flr")):
        return Finding("pass", f"reset methods: {shown}{tail}")
    if methods:
        return Finding("warn", f"reset methods: {shown} (no function-level reset){tail}")
    trunc = _truncated(fn, regs.PCI_CFG_SPACE_SIZE)
    why = f" ({trunc})" if trunc else ""
    return Finding(
        "fail", f"no reset method{why}: device state would leak from one guest to the next{tail}"
    )


def shared_page_neighbours(fn: PciFunction, others: Iterable[PciFunction]) -> list[str]:
    """Other functions' BARs that share a page with one of ``fn``'s sub-page memory BARs."""
    mine = [
        (b.address >> PAGE_SHIFT, b.index)
        for b in fn.bars
        if b.address and b.size and not b.is_io and not b.is_rom and b.size < PAGE_SIZE
    ]
    hits: list[str] = []
    for other in others:
        if other.sbdf == fn.sbdf:
            continue
        for ob in other.bars:
            if not ob.address or not ob.size or ob.is_io:
                continue
            o_first = ob.address >> PAGE_SHIFT
            o_last = (ob.address + ob.size - 1) >> PAGE_SHIFT
            for page, idx in mine:
                if o_first <= page <= o_last:
                    hit = f"BAR{idx} of {fn.sbdf} shares page 0x{page:x} with {other.sbdf}"
                    if hit not in hits:
                        hits.append(hit)
    return hits


def check_shared_page(facts: HostFacts, fn: PciFunction) -> Finding:
    hits = shared_page_neighbours(fn, facts.functions)
    if hits:
        return Finding("fail", shared_page_reason(fn.sbdf, hits))
    small = [b for b in fn.bars if b.size and not b.is_io and not b.is_rom and b.size < PAGE_SIZE]
    if small:
        which = ", ".join(f"BAR{b.index} ({b.size} bytes)" for b in small)
        return Finding("pass", f"{which} smaller than a page but alone in it")
    unknown = [b for b in fn.bars if b.size is None]
    if unknown:
        return Finding("warn", "BAR sizes unknown: cannot tell (give them with --bar-size)")
    return Finding("pass", "no memory BAR smaller than a page")


def check_msix_page(facts: HostFacts, fn: PciFunction) -> Finding:
    cap = find_capability(fn.config, regs.PCI_CAP_ID_MSIX)
    if cap is None:
        trunc = _truncated(fn, regs.PCI_CFG_SPACE_SIZE)
        return Finding("warn" if trunc else "pass", trunc or "no MSI-X capability")
    cs = fn.config
    nvec = (cs.read(cap + regs.PCI_MSIX_FLAGS, 2) & regs.PCI_MSIX_FLAGS_QSIZE) + 1
    table = cs.read(cap + regs.PCI_MSIX_TABLE, 4)
    pba = cs.read(cap + regs.PCI_MSIX_PBA, 4)
    pba_len = 8 * ((nvec + 63) // 64)
    areas = [
        ("table", table & regs.PCI_MSIX_TABLE_BIR, table & regs.PCI_MSIX_TABLE_OFFSET, 16 * nvec),
        ("PBA", pba & regs.PCI_MSIX_PBA_BIR, pba & regs.PCI_MSIX_PBA_OFFSET, pba_len),
    ]
    sizes = fn.bar_sizes
    shared: list[str] = []
    for name, bir, off, length in areas:
        size = sizes.get(bir)
        if size is None:
            return Finding("warn", f"MSI-X {name} in BAR{bir}, whose size is unknown")
        first, last = off & ~(PAGE_SIZE - 1), (off + length - 1) | (PAGE_SIZE - 1)
        busy = [(o, o + ln) for n, b, o, ln in areas if b == bir]  # MSI-X's own bytes
        span = (first, min(last + 1, size))
        free = (
            span[1] - span[0] - sum(max(0, min(e, span[1]) - max(s, span[0])) for s, e in set(busy))
        )
        if free > 0:
            shared.append(
                f"the MSI-X {name} (BAR{bir} 0x{off:x}+0x{length:x}) shares its page(s) "
                f"with {free} other bytes of the BAR"
            )
    if shared:
        return Finding(
            "warn",
            "; ".join(shared) + ": Xen write-protects MSI-X pages, so the guest's "
            "accesses there are trapped or dropped",
        )
    return Finding("pass", f"MSI-X table and PBA ({nvec} vectors) on pages of their own")


def check_dom0_use(facts: HostFacts, fn: PciFunction) -> Finding:
    fails: list[str] = []
    if fn.sbdf in facts.boot_vga:
        fails.append("it is the boot VGA device (dom0's console)")
    if facts.mounts is not None and facts.block_devices is not None:
        for m in facts.mounts:
            name = m.device.removeprefix("/dev/")
            if fn.sbdf in facts.block_devices.get(name, []):
                fails.append(f"{m.device} behind it is mounted on {m.mountpoint}")
    if fails:
        return Finding("fail", "dom0 uses it: " + "; ".join(fails))
    drv = fn.driver
    if drv and drv not in PASSTHROUGH_DRIVERS:
        return Finding("warn", f"dom0 driver {drv} is bound: unbinding takes it away from dom0")
    if facts.mounts is None:
        return Finding("warn", "unknown whether dom0 mounts a disk behind it (no /proc/mounts)")
    return Finding("pass", f"no dom0 driver bound{', not the boot VGA' if facts.boot_vga else ''}")


def check_pciback(facts: HostFacts, fn: PciFunction) -> Finding:
    drv = fn.driver
    if drv in ("pciback", "xen-pciback"):
        return Finding("pass", "bound to pciback: assignable")
    if drv == "pci-stub":
        return Finding("pass", "claimed by pci-stub: pciback can take it")
    what = f"bound to {drv}" if drv else "no driver bound"
    return Finding("warn", f"{what}, not pciback: run xl pci-assignable-add first")


def check_config(facts: HostFacts, fn: PciFunction) -> Finding:
    htype = fn.config.header_type
    if htype not in (regs.PCI_HEADER_TYPE_NORMAL, regs.PCI_HEADER_TYPE_BRIDGE):
        return Finding(
            "fail", f"header type {htype} cannot be passed through (pciback takes 0 and 1 only)"
        )
    notes = [n for n in fn.notes if n.startswith("BARs not decoded")]
    if notes:
        return Finding("fail", notes[0])
    # A BAR dom0 gave no usable resource (e.g. a ROM Linux ignored) is absent for
    # pciback as for the guest: its size does not matter.
    resources = fn.resources
    unknown = [
        b
        for b in fn.bars
        if b.size is None and (r := resources.get(b.index)) is not None and r.usable
    ]
    if unknown:
        which = ", ".join(
            f"{'ROM' if b.kind == 'rom' else f'BAR{b.index}'} ({b.kind} at {b.address:#x})"
            for b in unknown
        )
        return Finding(
            "fail",
            f"size of {which} unknown (the source has no Region lines): "
            "pciback's virtual BARs would be a guess; give sizes with --bar-size BAR=SIZE",
        )
    return Finding("pass", f"header type {htype}, every BAR's size known")


RULES: tuple[CheckRule, ...] = (
    CheckRule("iommu", check_iommu, "DMA reaches all memory", refusal="no-iommu"),
    CheckRule("iommu-group", check_iommu_group, "group members go to one guest together"),
    CheckRule("acs", check_acs, "peer-to-peer or aliased requests bypass isolation"),
    CheckRule("reset", check_reset, "state leaks between guests"),
    CheckRule(
        "shared-page",
        check_shared_page,
        "the guest gets a neighbour's registers",
        refusal="shared-page",
    ),
    CheckRule("msix-page", check_msix_page, "registers next to MSI-X are trapped"),
    CheckRule("dom0-use", check_dom0_use, "dom0 loses a device it uses"),
    CheckRule("pciback", check_pciback, "not yet assignable"),
    CheckRule(
        "config", check_config, "the guest's config space would be a guess", refusal="config"
    ),
)
RULES_BY_NAME = {r.name: r for r in RULES}

#: The one refusal table of the toolstack (``xl create``/``pci-attach``) and of
#: ``xenpci pci guest-view``: the rules whose failure refuses a device, in the
#: order they are tried, and whether ``--allow-unsafe`` overrides each.
REFUSALS: tuple[tuple[str, bool], ...] = (
    ("config", False),
    ("iommu", True),
    ("shared-page", True),
)


def run_checks(facts: HostFacts, devices: Sequence[SBDF] | None = None) -> list[Row]:
    """Every rule on every selected device (default: every type-0 function)."""
    if devices is None:
        selected = [f for f in facts.functions if f.config.header_type == 0]
    else:
        selected = []
        for d in devices:
            f = facts.function(d)
            if f is None:
                raise LookupError(f"no PCI function {d} in {facts.source}")
            selected.append(f)
    return [Row(fn.sbdf, rule.name, *_run(rule, facts, fn)) for fn in selected for rule in RULES]


def _run(rule: CheckRule, facts: HostFacts, fn: PciFunction) -> tuple[Status, str]:
    f = rule.check(facts, fn)
    return f.status, f.reason


def refusal(rule_name: str, facts: HostFacts, fn: PciFunction) -> tuple[str, str] | None:
    """(reason code, text) when ``rule_name`` fails for ``fn``; the toolstack's refusal."""
    rule = RULES_BY_NAME[rule_name]
    f = rule.check(facts, fn)
    if f.status != "fail":
        return None
    return rule.refusal or rule.name, f.reason


def refusals(
    facts: HostFacts, fn: PciFunction, *, allow_unsafe: bool = False
) -> list[tuple[str, str, bool]]:
    """Every :data:`REFUSALS` row that refuses ``fn``: (reason code, text, overridable).

    With ``allow_unsafe`` the overridable rows are not tried.
    """
    out: list[tuple[str, str, bool]] = []
    for name, overridable in REFUSALS:
        if overridable and allow_unsafe:
            continue
        hit = refusal(name, facts, fn)
        if hit is not None:
            out.append((*hit, overridable))
    return out


def exit_status(rows: Iterable[Row]) -> int:
    """0 when every row passes, 1 with any failure, 2 with warnings only."""
    statuses = {r.status for r in rows}
    if "fail" in statuses:
        return 1
    return 2 if "warn" in statuses else 0
