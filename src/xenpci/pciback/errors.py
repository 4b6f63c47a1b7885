"""Errors of the pciback layer (``xenpci.pciback``).

Models the failures Linux ``drivers/xen/xen-pciback`` reports: to the guest
they travel as the ``err`` field of ``struct xen_pci_op`` (an ``XEN_PCI_ERR_*``
code or a raw negative Linux errno, exactly as Linux sends them); to the
toolstack (seize, assign, quirks, bus slots) they are raised as exceptions
carrying the Linux errno the sysfs write or xenbus call would have failed with.
"""

from __future__ import annotations

import errno

from xenpci.errors import XenpciError

# Linux errnos that reach the guest raw in ``op.err`` (x86 values).
EINVAL = -errno.EINVAL  # -22
EALREADY = -errno.EALREADY  # -114
ENXIO = -errno.ENXIO  # -6
ENOMEM = -errno.ENOMEM  # -12
ENODEV = -errno.ENODEV  # -19
EIO = -errno.EIO  # -5
EBUSY = -errno.EBUSY  # -16
ENOENT = -errno.ENOENT  # -2
ENOSYS = -errno.ENOSYS  # -38


class PcibackError(XenpciError):
    """Base of every pciback error; ``code`` is the negative Linux errno."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(f"{message} (errno {code})")


class SeizeError(PcibackError):
    """A device could not be seized or released by the pool (``pci_stub``)."""

    def __init__(self, sbdf: str, code: int, reason: str) -> None:
        self.sbdf = sbdf
        self.reason = reason
        super().__init__(code, f"pciback {sbdf}: {reason}")


class AssignError(PcibackError):
    """A seized device cannot be handed to a guest (not seized, already in use)."""

    def __init__(self, sbdf: str, code: int, reason: str) -> None:
        self.sbdf = sbdf
        self.reason = reason
        super().__init__(code, f"pciback {sbdf}: {reason}")


class SysfsError(PcibackError):
    """A write to a pciback sysfs attribute (quirks, permissive, new_slot) was refused."""

    def __init__(self, attribute: str, text: str, code: int, reason: str) -> None:
        self.attribute = attribute
        self.text = text
        self.reason = reason
        super().__init__(code, f"pciback/{attribute} {text!r}: {reason}")


class BusError(PcibackError):
    """The guest-visible bus (vpci or passthrough) cannot take a device."""

    def __init__(self, sbdf: str, code: int, reason: str) -> None:
        self.sbdf = sbdf
        self.reason = reason
        super().__init__(code, f"pciback bus, {sbdf}: {reason}")


class FieldError(PcibackError):
    """A config field table entry is malformed (a bug in a table, not guest input)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(EINVAL, f"config field {name!r}: {reason}")
