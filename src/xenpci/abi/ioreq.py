"""The HVM device-model interface, ``xen/include/public/hvm/ioreq.h``.

Xen forwards an access it cannot handle itself to an ioreq server (QEMU in
dom0) as a ``struct ioreq`` in the vCPU's slot of the shared ioreq page,
signalled on that vCPU's event channel (``vp_eport``); the server answers in
place (``state`` = ``STATE_IORESP_READY``, ``data`` for reads) and signals
back. Writes that need no answer may go to the buffered page instead: a ring
of 511 8-byte ``buf_ioreq`` slots with free-running read/write pointers.

The bitfields are declared as C declares them; ``buf_ioreq`` keeps GCC's
packing (``addr:20`` shares the first 32-bit unit with the 8-bit ``type``
and the 4 flag bits) by declaring every member of that unit as a 32-bit
bitfield, which ctypes lays out the same way. The header test compares the
byte image of each bitfield set to all ones with the C compiler's.
"""

from __future__ import annotations

import ctypes
from typing import Final

IOREQ_READ: Final = 1
IOREQ_WRITE: Final = 0

STATE_IOREQ_NONE: Final = 0
STATE_IOREQ_READY: Final = 1
STATE_IOREQ_INPROCESS: Final = 2
STATE_IORESP_READY: Final = 3

IOREQ_TYPE_PIO: Final = 0
IOREQ_TYPE_COPY: Final = 1
IOREQ_TYPE_PCI_CONFIG: Final = 2
IOREQ_TYPE_TIMEOFFSET: Final = 7
IOREQ_TYPE_INVALIDATE: Final = 8

IOREQ_BUFFER_SLOT_NUM: Final = 511

IOREQ_TYPE_NAMES: Final[dict[int, str]] = {
    value: name.removeprefix("IOREQ_TYPE_").lower()
    for name, value in dict(globals()).items()
    if name.startswith("IOREQ_TYPE_") and isinstance(value, int)
}


class ioreq(ctypes.LittleEndianStructure):
    """``struct ioreq`` (32 bytes): one forwarded access."""

    _fields_ = (
        ("addr", ctypes.c_uint64),
        ("data", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("vp_eport", ctypes.c_uint32),
        ("_pad0", ctypes.c_uint16),
        ("state", ctypes.c_uint8, 4),
        ("data_is_ptr", ctypes.c_uint8, 1),
        ("dir", ctypes.c_uint8, 1),
        ("df", ctypes.c_uint8, 1),
        ("_pad1", ctypes.c_uint8, 1),
        ("type", ctypes.c_uint8),
    )


class shared_iopage(ctypes.LittleEndianStructure):
    """``struct shared_iopage``: one ``ioreq`` per vCPU (declared ``[1]``, as in C)."""

    _fields_ = (("vcpu_ioreq", ioreq * 1),)


class buf_ioreq(ctypes.LittleEndianStructure):
    """``struct buf_ioreq`` (8 bytes): a write the device model need not answer."""

    _fields_ = (
        ("type", ctypes.c_uint32, 8),
        ("pad", ctypes.c_uint32, 1),
        ("dir", ctypes.c_uint32, 1),
        ("size", ctypes.c_uint32, 2),  # 0=>1, 1=>2, 2=>4, 3=>8 (8 takes two slots)
        ("addr", ctypes.c_uint32, 20),
        ("data", ctypes.c_uint32),
    )


class buffered_iopage(ctypes.LittleEndianStructure):
    """``struct buffered_iopage`` as a device model sees it (no ``__XEN__`` union)."""

    _fields_ = (
        ("read_pointer", ctypes.c_uint32),
        ("write_pointer", ctypes.c_uint32),
        ("buf_ioreq", buf_ioreq * IOREQ_BUFFER_SLOT_NUM),
    )


#: ``buf_ioreq.size`` encodes the access size as log2.
BUF_IOREQ_SIZE_CODE: Final[dict[int, int]] = {1: 0, 2: 1, 4: 2, 8: 3}
