"""Names from the PCI ID database (``pci.ids``, as Debian ships it).

Models pciutils ``lib/names-parse.c``: vendor lines ``VVVV  name``, device
lines ``\\tDDDD  name``, subsystem lines ``\\t\\tSSSS SSSS  name``, and the class
section ``C CC  name`` / ``\\tSS  name`` / ``\\t\\tPP  name``; ``#`` starts a
comment. Differences: no hwdb or DNS lookups, and an unknown ID falls back
to lspci's own wording (``Device 1234``, ``Class 0c80``). Parsed once per
path and cached.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from xenpci.pci.errors import SourceError

#: Debian's location (package ``pci.ids``).
PCI_IDS_PATH = Path("/usr/share/misc/pci.ids")


@dataclass(frozen=True)
class PciIds:
    """The parsed database: lookups by numeric ID."""

    vendors: dict[int, str] = field(default_factory=dict)
    devices: dict[tuple[int, int], str] = field(default_factory=dict)
    subsystems: dict[tuple[int, int, int, int], str] = field(default_factory=dict)
    classes: dict[int, str] = field(default_factory=dict)
    subclasses: dict[tuple[int, int], str] = field(default_factory=dict)
    prog_ifs: dict[tuple[int, int, int], str] = field(default_factory=dict)

    def vendor_name(self, vendor: int) -> str:
        return self.vendors.get(vendor, f"Vendor {vendor:04x}")

    def subsystem_vendor_name(self, vendor: int) -> str:
        """A subsystem vendor's name; lspci words the unknown case differently."""
        return self.vendors.get(vendor, f"Unknown vendor {vendor:04x}")

    def device_name(self, vendor: int, device: int) -> str:
        return self.devices.get((vendor, device), f"Device {device:04x}")

    def subsystem_name(self, vendor: int, device: int, sub_vendor: int, sub_device: int) -> str:
        """Name of a subsystem (card) of ``vendor:device``, as lspci prints it.

        Like pciutils ``pci_lookup_name``: the exact entry, else the device's own
        name when the subsystem IDs repeat the device IDs, else ``Device SSSS``.
        """
        key = (vendor, device, sub_vendor, sub_device)
        if key in self.subsystems:
            return self.subsystems[key]
        if (sub_vendor, sub_device) == (vendor, device) and (vendor, device) in self.devices:
            return self.devices[(vendor, device)]
        return f"Device {sub_device:04x}"

    def class_name(self, class_code: int) -> str:
        """Name of a 24-bit class code's class/subclass, as lspci's first column."""
        base, sub = class_code >> 16, (class_code >> 8) & 0xFF
        if (base, sub) in self.subclasses:
            return self.subclasses[(base, sub)]
        if base in self.classes:  # lspci adds the numbers when only the class is known
            return f"{self.classes[base]} [{base:02x}{sub:02x}]"
        return f"Class {base:02x}{sub:02x}"


def _hex(text: str, width: int, where: str) -> int:
    if len(text) != width or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise SourceError(where, f"expected {width} hex digits, got {text!r}")
    return int(text, 16)


def parse_pci_ids(text: str, name: str = "pci.ids") -> PciIds:
    """Parse the text of a ``pci.ids`` file."""
    ids = PciIds()
    vendor: int | None = None
    device: int | None = None
    klass: int | None = None
    sub: int | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{name}:{lineno}"
        depth = len(line) - len(line.lstrip("\t"))
        body = line[depth:]
        ident, _, label = body.partition(" ")
        label = label.strip()
        if depth == 0:
            device = sub = None
            if ident == "C":
                cid, _, label = label.partition(" ")
                klass = _hex(cid, 2, where)
                vendor = None
                ids.classes[klass] = label.strip()
            else:
                vendor = _hex(ident, 4, where)
                klass = None
                ids.vendors[vendor] = label
        elif depth == 1:
            if vendor is not None:
                device = _hex(ident, 4, where)
                ids.devices[(vendor, device)] = label
            elif klass is not None:
                sub = _hex(ident, 2, where)
                ids.subclasses[(klass, sub)] = label
            else:
                raise SourceError(where, "indented entry before any vendor or class")
        elif depth == 2:
            if vendor is not None and device is not None:
                sdev, _, label = label.partition(" ")
                ids.subsystems[(vendor, device, _hex(ident, 4, where), _hex(sdev, 4, where))] = (
                    label.strip()
                )
            elif klass is not None and sub is not None:
                ids.prog_ifs[(klass, sub, _hex(ident, 2, where))] = label
            else:
                raise SourceError(where, "doubly indented entry without a parent")
        else:
            raise SourceError(where, f"indentation depth {depth} is not 0, 1 or 2")
    return ids


@functools.cache
def _load(path: str) -> PciIds:
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise SourceError(path, f"cannot read: {e.strerror or e}") from None
    return parse_pci_ids(raw.decode("utf-8", errors="replace"), path)


def load_pci_ids(path: str | Path = PCI_IDS_PATH) -> PciIds:
    """Parse (once, then cached) the ``pci.ids`` file at ``path``."""
    return _load(str(path))
