"""The host description: which PCI devices a machine has, and whether it has an IOMMU.

There is no single real counterpart: on a real host this is the hardware
itself (``/sys/bus/pci/devices``) plus the ``iommu=`` Xen command line. A small
TOML file (stdlib ``tomllib``) lists device sources in the syntax of
:func:`xenpci.pci.sources.open_source`::

    iommu = true          # optional, default true
    catalog = true        # include the default catalog devices (default true)

    [[device]]
    source = "model:gpu@0000:08:00.0"   # a catalog model at an address

    [[device]]
    source = "/path/dump.txt@0000:00:1f.3"   # a function of an lspci -xxxx dump

    [[device]]
    source = "sysfs:0000:00:02.0"       # this host's device, read-only

Unknown keys, wrong types and duplicate addresses are errors naming the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from xenpci.devices.base import DeviceModel
from xenpci.errors import XenpciError
from xenpci.pci import regs
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

_TOP_KEYS = frozenset({"iommu", "catalog", "device"})
_DEVICE_KEYS = frozenset({"source"})


class HostConfigError(ToolstackError):
    """A host description file is malformed; ``where`` names the file and key."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}", LibxlErrorCode.ERROR_INVAL)


@dataclass(frozen=True, slots=True)
class HostDescription:
    """A machine's hardware: IOMMU present or not, and device source specs in order."""

    iommu: bool = True
    sources: tuple[str, ...] = DEFAULT_SOURCES

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
    return HostDescription(iommu=iommu, sources=tuple(sources))


def load_host(path: str | Path) -> HostDescription:
    """Read and parse a host description file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise HostConfigError(str(p), f"cannot read: {e.strerror}") from None
    return parse_host(text, str(p))


def boot_machine(host: HostDescription, *, deterministic: bool = False) -> Machine:
    """A :class:`Machine` with the host's IOMMU setting and every listed device on it.

    ``deterministic``: the machine runs on the caller's thread (one executor,
    a virtual clock), see :class:`Machine`."""
    # Importing the catalog registers the ``model:`` source scheme.
    import xenpci.devices.catalog  # noqa: F401
    from xenpci.pci.sources import open_source

    machine = Machine(iommu=host.iommu, deterministic=deterministic)
    try:
        for src in host.sources:
            try:
                added = machine.add_host_devices(open_source(src))
            except XenpciError as e:
                raise HostConfigError(src, str(e)) from None
            _route_intx(machine, added)
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
