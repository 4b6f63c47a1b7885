"""Errors of the PCI core layer (``xenpci.pci``).

Every error carries the data that locates the problem (offset, size, file,
line) so a caller can report it precisely; none of them models a wire code,
because config space has no protocol of its own (pciback maps these onto
``XEN_PCI_ERR_*`` at its boundary).
"""

from __future__ import annotations

from xenpci.errors import XenpciError


class PciError(XenpciError):
    """Base class of every error raised by ``xenpci.pci``."""


class AddressError(PciError, ValueError):
    """A PCI address (SBDF, devfn, xl BDF) could not be parsed or is out of range."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(f"bad PCI address {text!r}: {reason}")


class ConfigError(PciError):
    """An access to a config space was out of range, misaligned or badly sized."""

    def __init__(self, offset: int, size: int, reason: str) -> None:
        self.offset = offset
        self.size = size
        self.reason = reason
        super().__init__(f"config access at 0x{offset:x} size {size}: {reason}")


class CapabilityError(PciError):
    """A capability list is broken (loop, pointer into the header, truncated)."""

    def __init__(self, offset: int, reason: str) -> None:
        self.offset = offset
        self.reason = reason
        super().__init__(f"capability at 0x{offset:x}: {reason}")


class BarError(PciError):
    """A BAR encoding is impossible (e.g. a 64-bit BAR in the last slot)."""

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(f"BAR {index}: {reason}")


class SourceError(PciError):
    """A device source (dump file, sysfs tree, spec string) is unusable.

    ``where`` names the file and line (``FILE:LINE``) or path at fault.
    """

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


class ResetError(PciError):
    """A reset method was requested that the function does not support."""

    def __init__(self, method: str, supported: list[str]) -> None:
        self.method = method
        self.supported = supported
        super().__init__(f"reset method {method!r} not supported (have: {supported or 'none'})")
