"""The host description: which PCI devices a machine has, and whether it has an IOMMU.

There is no single real counterpart: on a real host this is the hardware
itself (``/sys/bus/pci/devices``) plus the ``iommu=`` Xen command line. A small
TOML file (stdlib ``tomllib``) lists device sources in the syntax of
:func:`xenpci.pci.sources.open_source`::

    iommu = true          # optional, default true
    catalog = true        # include the default catalog devices (default true)
    # dom0's kernel command line; only xen-pciback.hide= is read: the devices
    # pciback seizes at boot, assignable from the start (as after a reboot on Xen)
    cmdline = "xen-pciback.hide=(0000:03:00.0)(04:00.0)"

    [[device]]
    source = "model:gpu@0000:08:00.0"   # a catalog model at an address

    [[device]]
    source = "/path/dump.txt@0000:00:1f.3"   # a function of an lspci -xxxx dump

    [[device]]
    source = "sysfs:0000:00:02.0"       # this host's device, read-only

Unknown keys, wrong types and duplicate addresses are errors naming the key.
``hide=`` takes what Linux's ``pcistub_init`` takes: ``(DDDD:BB:SS.F)``,
``(DDDD:BB:SS.*)``, ``(DDDD:BB:*.*)`` or the same without the domain, hex, with
blanks around groups; anything else is an error naming the group (Linux logs
"Error parsing pci_devs_to_hide" and seizes nothing). Other command-line words
are ignored, as the kernel ignores parameters it does not know.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from xenpci.devices.base import DeviceModel
from xenpci.errors import XenpciError
from xenpci.hv.scheduler import Scheduler
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.function import PciFunction
from xenpci.toolstack.errors import LibxlErrorCode, ToolstackError
from xenpci.toolstack.machine import Machine

#: The devices a machine has when no host file says otherwise: the demo's NIC and
#: NVMe-like disk, the sub-page device twice (their BARs share a page: XSA-461), a
#: two-function device, and the legacy IO/INTx device.
DEFAULT_SOURCES: tuple[str, ...] = (
    "model:nic@0000:03:00.0",
    "model:nvme@0000:04:00.0",
    "model:subpage@0000:05:00.0",
    "model:subpage@0000:05:01.0",
    "model:multifunction@0000:06:00.0",
    "model:legacy@0000:07:00.0",
)

_TOP_KEYS = frozenset({"iommu", "catalog", "device", "cmdline"})
#: the module parameter's names: xen-pciback / xen_pciback (pvops), pciback (xenlinux)
_HIDE_PARAMS = ("xen-pciback.hide=", "xen_pciback.hide=", "pciback.hide=")
_HEX = r"[0-9a-fA-F]+"
_HIDE_GROUP = re.compile(
    rf"\s*\(\s*(?:(?P<seg>{_HEX}):)?(?P<bus>{_HEX}):"
    rf"(?:(?P<slot>{_HEX})\.(?P<fn>{_HEX}|\*)|(?P<anyslot>\*)\.\*)\s*\)\s*"
)
_DEVICE_KEYS = frozenset({"source"})


class HostConfigError(ToolstackError):
    """A host description file is malformed; ``where`` names the file and key."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}", LibxlErrorCode.ERROR_INVAL)


@dataclass(frozen=True, slots=True)
class HidePattern:
    """One ``(DDDD:BB:SS.F)`` group of ``hide=``; ``None`` is a ``*``."""

    segment: int
    bus: int
    slot: int | None
    function: int | None

    def matches(self, sbdf: SBDF) -> bool:
        return (
            (sbdf.segment, sbdf.bus) == (self.segment, self.bus)
            and self.slot in (None, sbdf.device)
            and self.function in (None, sbdf.function)
        )


def parse_hide(value: str, where: str = "hide") -> tuple[HidePattern, ...]:
    """Parse the value of ``xen-pciback.hide=`` (``pcistub_init``'s grammar)."""
    out: list[HidePattern] = []
    pos = 0
    while pos < len(value):
        m = _HIDE_GROUP.match(value, pos)
        if m is None:
            raise HostConfigError(where, f'error parsing pci_devs_to_hide at "{value[pos:]}"')
        seg = int(m["seg"], 16) if m["seg"] else 0
        bus = int(m["bus"], 16)
        slot = None if m["anyslot"] else int(m["slot"], 16)
        fn = None if m["anyslot"] or m["fn"] == "*" else int(m["fn"], 16)
        if seg > 0xFFFF or bus > 0xFF or (slot is not None and slot > 0x1F) or (fn or 0) > 7:
            raise HostConfigError(where, f"address out of range in {m.group().strip()!r}")
        out.append(HidePattern(seg, bus, slot, fn))
        pos = m.end()
    return tuple(out)


def parse_cmdline(cmdline: str, where: str = "cmdline") -> tuple[HidePattern, ...]:
    """The ``hide=`` patterns of a dom0 command line (the last ``hide=`` wins, as
    for any kernel parameter given twice)."""
    hide: tuple[HidePattern, ...] = ()
    for word in cmdline.split():
        for param in _HIDE_PARAMS:
            if word.startswith(param):
                hide = parse_hide(word[len(param) :], where)
    return hide


@dataclass(frozen=True, slots=True)
class HostDescription:
    """A machine's hardware: IOMMU present or not, device source specs in order,
    and the devices dom0's pciback seizes at boot (``xen-pciback.hide=``)."""

    iommu: bool = True
    sources: tuple[str, ...] = DEFAULT_SOURCES
    hide: tuple[HidePattern, ...] = ()

    def __post_init__(self) -> None:
        for s in self.sources:
            if not isinstance(s, str) or not s:
                raise ValueError(f"bad device source {s!r}")


def parse_host(text: str, where: str = "<host>") -> HostDescription:
    """Parse a host description (TOML text)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise HostConfigError(where, f"not valid TOML: {e}") from None
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise HostConfigError(where, f"unknown key {unknown[0]!r} (known: {sorted(_TOP_KEYS)})")
    iommu = data.get("iommu", True)
    catalog = data.get("catalog", True)
    for key, value in (("iommu", iommu), ("catalog", catalog)):
        if not isinstance(value, bool):
            raise HostConfigError(f"{where}:{key}", f"must be true or false, not {value!r}")
    cmdline = data.get("cmdline", "")
    if not isinstance(cmdline, str):
        raise HostConfigError(f"{where}:cmdline", f"must be a string, not {cmdline!r}")
    hide = parse_cmdline(cmdline, f"{where}:cmdline")
    devices = data.get("device", [])
    if not isinstance(devices, list):
        raise HostConfigError(f"{where}:device", "must be an array of tables ([[device]])")
    sources: list[str] = list(DEFAULT_SOURCES) if catalog else []
    for i, dev in enumerate(devices):
        at = f"{where}:device[{i}]"
        if not isinstance(dev, dict):
            raise HostConfigError(at, "must be a table")
        bad = sorted(set(dev) - _DEVICE_KEYS)
        if bad:
            raise HostConfigError(at, f"unknown key {bad[0]!r} (known: {sorted(_DEVICE_KEYS)})")
        src = dev.get("source")
        if not isinstance(src, str) or not src:
            raise HostConfigError(f"{at}.source", "a non-empty string is required")
        if src in sources:
            raise HostConfigError(f"{at}.source", f"{src!r} listed twice")
        sources.append(src)
    return HostDescription(iommu=iommu, sources=tuple(sources), hide=hide)


def load_host(path: str | Path) -> HostDescription:
    """Read and parse a host description file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise HostConfigError(str(p), f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise HostConfigError(str(p), f"not UTF-8 (byte at offset {e.start})") from None
    return parse_host(text, str(p))


def boot_machine(
    host: HostDescription, *, deterministic: bool = False, executor: Scheduler | None = None
) -> Machine:
    """A :class:`Machine` with the host's IOMMU setting and every listed device on it.

    ``deterministic``: the machine runs on the caller's thread (one executor,
    a virtual clock); ``executor``: on that one (the daemon's real-time
    executor), see :class:`Machine`."""
    # Importing the catalog registers the ``model:`` source scheme.
    import xenpci.devices.catalog  # noqa: F401
    from xenpci.pci.sources import open_source

    machine = Machine(iommu=host.iommu, deterministic=deterministic, executor=executor)
    try:
        for src in host.sources:
            try:
                added = machine.add_host_devices(open_source(src))
            except XenpciError as e:
                raise HostConfigError(src, str(e)) from None
            _route_intx(machine, added)
        # dom0 boots: pciback seizes what hide= names (pcistub_init, then probe)
        for fn in machine.host_functions():
            if any(h.matches(fn.sbdf) for h in host.hide):
                try:
                    machine.pciback_bind(fn.sbdf)
                except XenpciError as e:
                    raise HostConfigError(f"hide {fn.sbdf}", str(e)) from None
    except BaseException:
        machine.shutdown()
        raise
    return machine


#: The first IOAPIC input left for PCI INTx on a PC (0-15 are the ISA IRQs).
FIRST_PCI_GSI = 16


def _route_intx(machine: Machine, functions: list[PciFunction]) -> None:
    """Firmware's INTx routing for model devices: each gets its own GSI in INTERRUPT_LINE.

    Real firmware swizzles pins onto four shared lines; a line of its own per
    device keeps guests from sharing an interrupt (sharing is not security
    supported, XSA-461). Dump and sysfs devices keep the line they came with.
    """
    used = {
        fn.config.read(regs.PCI_INTERRUPT_LINE, 1)
        for fn in machine.host_functions()
        if fn.config.known_size > regs.PCI_INTERRUPT_PIN
    }
    gsi = FIRST_PCI_GSI
    for fn in functions:
        if not isinstance(fn, DeviceModel) or not fn.config.read(regs.PCI_INTERRUPT_PIN, 1):
            continue
        if fn.config.read(regs.PCI_INTERRUPT_LINE, 1):
            continue
        while gsi in used:
            gsi += 1
        if gsi >= 0xFF:
            raise HostConfigError(str(fn.sbdf), "no GSI left for its INTx")
        fn.config_write(regs.PCI_INTERRUPT_LINE, 1, gsi)
        used.add(gsi)
