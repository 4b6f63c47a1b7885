"""PCI addresses: segment/bus/device/function and xl's BDF syntax.

Models Linux's ``DDDD:BB:DD.F`` naming (``pci_name()``, sysfs directory names),
the ``PCI_DEVFN``/``PCI_SLOT``/``PCI_FUNC`` macros of ``include/uapi/linux/pci.h``,
and the BDF strings of ``xl.cfg(5)`` (``[DDDD:]BB:DD.F[@VSLOT]``, parsed by
libxl's ``xlu_pci_parse_bdf``). Differences: parsing is strict (exactly two hex
digits for bus and device, one for the function, four for the domain) and
every error names what was wrong instead of returning -1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xenpci.pci.errors import AddressError

_SBDF_RE = re.compile(
    r"^(?:(?P<seg>[0-9a-fA-F]{4}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<dev>[0-9a-fA-F]{2})"
    r"\.(?P<fn>[0-9a-fA-F])$"
)


def PCI_DEVFN(slot: int, func: int) -> int:
    """Encode a device (slot) and function number as a devfn byte."""
    return ((slot & 0x1F) << 3) | (func & 0x07)


def PCI_SLOT(devfn: int) -> int:
    """Device (slot) number of a devfn byte."""
    return (devfn >> 3) & 0x1F


def PCI_FUNC(devfn: int) -> int:
    """Function number of a devfn byte."""
    return devfn & 0x07


@dataclass(frozen=True, slots=True, order=True)
class SBDF:
    """A PCI function address: segment (domain), bus, device, function."""

    segment: int
    bus: int
    device: int
    function: int

    def __post_init__(self) -> None:
        for name, value, limit in (
            ("segment", self.segment, 0xFFFF),
            ("bus", self.bus, 0xFF),
            ("device", self.device, 0x1F),
            ("function", self.function, 0x7),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
                raise AddressError(repr(self._raw()), f"{name} {value!r} not in 0..0x{limit:x}")

    def _raw(self) -> tuple[object, object, object, object]:
        return (self.segment, self.bus, self.device, self.function)

    @property
    def devfn(self) -> int:
        """``PCI_DEVFN(device, function)``."""
        return PCI_DEVFN(self.device, self.function)

    @property
    def sbdf_int(self) -> int:
        """The 32-bit ``seg << 16 | bus << 8 | devfn`` form Xen uses (``pci_sbdf_t``)."""
        return (self.segment << 16) | (self.bus << 8) | self.devfn

    @property
    def bdf(self) -> str:
        """The short form without segment: ``BB:DD.F``."""
        return f"{self.bus:02x}:{self.device:02x}.{self.function:x}"

    @classmethod
    def from_devfn(cls, segment: int, bus: int, devfn: int) -> SBDF:
        """Build from a devfn byte."""
        if not 0 <= devfn <= 0xFF:
            raise AddressError(str(devfn), "devfn not in 0..0xff")
        return cls(segment, bus, PCI_SLOT(devfn), PCI_FUNC(devfn))

    @classmethod
    def from_int(cls, value: int) -> SBDF:
        """Inverse of :attr:`sbdf_int`."""
        if not 0 <= value <= 0xFFFFFFFF:
            raise AddressError(str(value), "sbdf integer not in 0..0xffffffff")
        return cls.from_devfn(value >> 16, (value >> 8) & 0xFF, value & 0xFF)

    @classmethod
    def parse(cls, text: str) -> SBDF:
        """Parse ``DDDD:BB:DD.F`` or ``BB:DD.F`` (segment 0), hex, case-insensitive."""
        if not isinstance(text, str):
            raise AddressError(repr(text), "not a string")
        m = _SBDF_RE.match(text)
        if m is None:
            raise AddressError(text, _diagnose(text))
        dev = int(m["dev"], 16)
        fn = int(m["fn"], 16)
        if dev > 0x1F:
            raise AddressError(text, f"device 0x{dev:02x} > 0x1f")
        if fn > 7:
            raise AddressError(text, f"function {fn:x} > 7")
        seg = int(m["seg"], 16) if m["seg"] else 0
        return cls(seg, int(m["bus"], 16), dev, fn)

    def __str__(self) -> str:
        return f"{self.segment:04x}:{self.bus:02x}:{self.device:02x}.{self.function:x}"


def _diagnose(text: str) -> str:
    """Say which part of a would-be BDF is wrong (the regex only says 'no')."""
    if not text:
        return "empty"
    if "." not in text:
        return "missing '.F' function part"
    head, _, fn = text.rpartition(".")
    if len(fn) != 1 or not _is_hex(fn):
        return f"function {fn!r} is not one hex digit"
    parts = head.split(":")
    if len(parts) not in (2, 3):
        return "expected [DDDD:]BB:DD.F"
    names = ("domain", "bus", "device")[3 - len(parts) :]
    widths = (4, 2, 2)[3 - len(parts) :]
    for name, width, part in zip(names, widths, parts, strict=True):
        if len(part) != width or not _is_hex(part):
            return f"{name} {part!r} is not {width} hex digits"
    return "expected [DDDD:]BB:DD.F"


def _is_hex(s: str) -> bool:
    return bool(s) and all(c in "0123456789abcdefABCDEF" for c in s)


def parse_xl_bdf(text: str) -> tuple[SBDF, int | None]:
    """Parse xl.cfg's ``[DDDD:]BB:DD.F[@VSLOT]``; VSLOT is hex, 0..0x1f.

    Returns the address and the requested virtual slot (``None`` when absent).
    """
    if not isinstance(text, str):
        raise AddressError(repr(text), "not a string")
    bdf, sep, vslot_text = text.partition("@")
    sbdf = SBDF.parse(bdf)
    if not sep:
        return sbdf, None
    if not vslot_text or len(vslot_text) > 2 or not _is_hex(vslot_text):
        raise AddressError(text, f"virtual slot {vslot_text!r} is not 1-2 hex digits")
    vslot = int(vslot_text, 16)
    if vslot > 0x1F:
        raise AddressError(text, f"virtual slot 0x{vslot:x} > 0x1f")
    return sbdf, vslot
