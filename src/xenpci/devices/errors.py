"""Errors raised by the device models (layer 6).

Every error carries the data that explains it. A DMA fault is what a real
device sees as a master abort or an IOMMU fault; the models record it in their
own status registers (the protocol's code, e.g. NVMe "Data Transfer Error")
and keep running, so a hostile DMA address never crashes the platform.
"""

from __future__ import annotations

from xenpci.errors import XenpciError


class DeviceError(XenpciError):
    """Base class of every error raised by ``xenpci.devices``."""


class DmaFault(DeviceError):
    """A DMA access the port refused (unmapped, read-only, bus mastering off)."""

    def __init__(self, bus_addr: int, length: int, *, write: bool, reason: str) -> None:
        self.bus_addr = bus_addr
        self.length = length
        self.write = write
        self.reason = reason
        kind = "write" if write else "read"
        super().__init__(f"DMA {kind} of {length} bytes at {bus_addr:#x} faulted: {reason}")


class MmioError(DeviceError):
    """An MMIO or port-IO access a register block cannot decode."""

    def __init__(self, region: str, offset: int, size: int, reason: str) -> None:
        self.region = region
        self.offset = offset
        self.size = size
        self.reason = reason
        super().__init__(f"{region}: access of {size} bytes at {offset:#x}: {reason}")


class CatalogError(DeviceError):
    """An unknown device model name was asked for."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"no device model {name!r}; known: {', '.join(known)}")
