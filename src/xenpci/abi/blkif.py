"""The PV block protocol's ring entries, ``xen/include/public/io/blkif.h``.

``struct blkif_request`` (112 bytes on x86-64: operation, nr_segments,
handle, id, sector_number, 11 segments of ``{gref, first_sect, last_sect}``),
``struct blkif_response`` (16 bytes), and the shared ring
``DEFINE_RING_TYPES(blkif, ...)`` built with :func:`xenpci.abi.ring.sring_type`:
32 entries in one 4 KiB page. Sectors are 512 bytes whatever the disk's
sector size (``feature-large-sector-size`` is not offered), so a 4 KiB frame
holds sectors 0..7.
"""

from __future__ import annotations

import ctypes
from typing import Final

from xenpci.abi.ring import ring_size, sring_type

BLKIF_OP_READ: Final = 0
BLKIF_OP_WRITE: Final = 1
BLKIF_OP_WRITE_BARRIER: Final = 2
BLKIF_OP_FLUSH_DISKCACHE: Final = 3
BLKIF_OP_RESERVED_1: Final = 4
BLKIF_OP_DISCARD: Final = 5
BLKIF_OP_INDIRECT: Final = 6

BLKIF_MAX_SEGMENTS_PER_REQUEST: Final = 11
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: Final = 8
BLKIF_DISCARD_SECURE: Final = 1 << 0

BLKIF_RSP_EOPNOTSUPP: Final = -2
BLKIF_RSP_ERROR: Final = -1
BLKIF_RSP_OKAY: Final = 0

VDISK_CDROM: Final = 0x1
VDISK_REMOVABLE: Final = 0x2
VDISK_READONLY: Final = 0x4

#: The protocol's sector: 512 bytes (``blkif.h``: "sector-based quantities").
SECTOR_SIZE: Final = 512
SECTORS_PER_PAGE: Final = 4096 // SECTOR_SIZE

BLKIF_OP_NAMES: Final[dict[int, str]] = {
    value: name.removeprefix("BLKIF_OP_").lower()
    for name, value in dict(globals()).items()
    if name.startswith("BLKIF_OP_") and isinstance(value, int)
}


class blkif_request_segment(ctypes.LittleEndianStructure):
    """One data frame of a request: a grant and the sectors used in it (inclusive)."""

    _fields_ = (
        ("gref", ctypes.c_uint32),
        ("first_sect", ctypes.c_uint8),
        ("last_sect", ctypes.c_uint8),
    )


class blkif_request(ctypes.LittleEndianStructure):
    """``struct blkif_request``: a read or write of up to 11 segments."""

    _fields_ = (
        ("operation", ctypes.c_uint8),
        ("nr_segments", ctypes.c_uint8),
        ("handle", ctypes.c_uint16),
        ("id", ctypes.c_uint64),
        ("sector_number", ctypes.c_uint64),
        ("seg", blkif_request_segment * BLKIF_MAX_SEGMENTS_PER_REQUEST),
    )


class blkif_response(ctypes.LittleEndianStructure):
    """``struct blkif_response``: the request's id and operation, and a status."""

    _fields_ = (
        ("id", ctypes.c_uint64),
        ("operation", ctypes.c_uint8),
        ("status", ctypes.c_int16),
    )


blkif_sring_entry, blkif_sring = sring_type("blkif", blkif_request, blkif_response)
#: ``__CONST_RING_SIZE(blkif, 4096)``.
BLKIF_RING_SIZE: Final = ring_size(blkif_sring_entry, 4096)
