"""The PV PCI shared page of ``xen/include/public/io/pciif.h``.

pcifront grants one page holding a ``struct xen_pci_sharedinfo``; it fills
``op`` and sets ``_XEN_PCIF_active`` in ``flags``, pciback answers in place
and clears the bit. ``aer_op`` runs the other way under ``_XEN_PCIB_active``.
The C names are kept (including the lower-case ``XEN_PCI_OP_*`` suffixes) so
the header and this module can be read side by side.

``flags`` is manipulated with Linux's atomic bit operations on a 32-bit word;
we keep the bit numbers (``_XEN_PCIF_active``) as well as the masks.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Final

XEN_PCI_MAGIC: Final = "7"

_XEN_PCIF_active: Final = 0
XEN_PCIF_active: Final = 1 << _XEN_PCIF_active
_XEN_PCIB_AERHANDLER: Final = 1
XEN_PCIB_AERHANDLER: Final = 1 << _XEN_PCIB_AERHANDLER
_XEN_PCIB_active: Final = 2
XEN_PCIB_active: Final = 1 << _XEN_PCIB_active

XEN_PCI_OP_conf_read: Final = 0
XEN_PCI_OP_conf_write: Final = 1
XEN_PCI_OP_enable_msi: Final = 2
XEN_PCI_OP_disable_msi: Final = 3
XEN_PCI_OP_enable_msix: Final = 4
XEN_PCI_OP_disable_msix: Final = 5
XEN_PCI_OP_aer_detected: Final = 6
XEN_PCI_OP_aer_resume: Final = 7
XEN_PCI_OP_aer_mmio: Final = 8
XEN_PCI_OP_aer_slotreset: Final = 9
XEN_PCI_OP_enable_multi_msi: Final = 10

XEN_PCI_ERR_success: Final = 0
XEN_PCI_ERR_dev_not_found: Final = -1
XEN_PCI_ERR_invalid_offset: Final = -2
XEN_PCI_ERR_access_denied: Final = -3
XEN_PCI_ERR_not_implemented: Final = -4
XEN_PCI_ERR_op_failed: Final = -5

SH_INFO_MAX_VEC: Final = 128

#: Command and error names by value, for traces and error messages.
XEN_PCI_OP_NAMES: Final[dict[int, str]] = {
    value: name.removeprefix("XEN_PCI_OP_")
    for name, value in dict(globals()).items()
    if name.startswith("XEN_PCI_OP_") and isinstance(value, int)
}
XEN_PCI_ERR_NAMES: Final[dict[int, str]] = {
    value: name
    for name, value in dict(globals()).items()
    if name.startswith("XEN_PCI_ERR_") and isinstance(value, int)
}


class xen_msix_entry(ctypes.LittleEndianStructure):
    """``struct xen_msix_entry``: one MSI-X table entry and the vector it got."""

    _fields_ = (
        ("vector", ctypes.c_uint16),
        ("entry", ctypes.c_uint16),
    )


class xen_pci_op(ctypes.LittleEndianStructure):
    """``struct xen_pci_op``: one request from pcifront, answered in place."""

    _fields_ = (
        ("cmd", ctypes.c_uint32),
        ("err", ctypes.c_int32),
        ("domain", ctypes.c_uint32),
        ("bus", ctypes.c_uint32),
        ("devfn", ctypes.c_uint32),
        ("offset", ctypes.c_int32),
        ("size", ctypes.c_int32),
        ("value", ctypes.c_uint32),
        ("info", ctypes.c_uint32),
        ("msix_entries", xen_msix_entry * SH_INFO_MAX_VEC),
    )


class xen_pcie_aer_op(ctypes.LittleEndianStructure):
    """``struct xen_pcie_aer_op``: an AER request from pciback to pcifront."""

    _fields_ = (
        ("cmd", ctypes.c_uint32),
        ("err", ctypes.c_int32),
        ("domain", ctypes.c_uint32),
        ("bus", ctypes.c_uint32),
        ("devfn", ctypes.c_uint32),
    )


class xen_pci_sharedinfo(ctypes.LittleEndianStructure):
    """``struct xen_pci_sharedinfo``: the layout of the granted page."""

    _fields_ = (
        ("flags", ctypes.c_uint32),
        ("op", xen_pci_op),
        ("aer_op", xen_pcie_aer_op),
    )


# -- the same layout as ``struct`` views, for code that reads and writes the page
#    in place (one op per event-channel round trip: no ctypes object per op).
#: Where ``op`` and ``aer_op`` start in the shared page, and the size of ``op``.
OP_OFFSET: Final = xen_pci_sharedinfo.op.offset
AER_OP_OFFSET: Final = xen_pci_sharedinfo.aer_op.offset
OP_SIZE: Final = ctypes.sizeof(xen_pci_op)
#: ``flags``: the 32-bit word Linux's bit operations act on.
FLAGS: Final = struct.Struct("<I")
#: ``op``'s header (cmd, err, domain, bus, devfn, offset, size, value) with C's types...
OP_HEADER: Final = struct.Struct("<IiIIIiiI")
#: ...and as pcifront stores it: each field as the 32 bits written (the writer masks).
OP_HEADER_U32: Final = struct.Struct("<8I")
#: The two answer fields pciback writes back: ``err`` (int32) and ``value`` (uint32).
OP_ERR: Final = struct.Struct("<i")
OP_VALUE: Final = struct.Struct("<I")
OP_ERR_AT: Final = OP_OFFSET + xen_pci_op.err.offset
OP_VALUE_AT: Final = OP_OFFSET + xen_pci_op.value.offset
