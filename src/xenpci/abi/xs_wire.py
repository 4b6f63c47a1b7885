"""The XenStore wire protocol of ``xen/include/public/io/xs_wire.h``.

Mirrors the header one to one: the message types of ``enum xsd_sockmsg_type``,
the ``xsd_errors`` table (whose order is part of the ABI: new errors go at the
end), the 16-byte ``xsd_sockmsg`` header, the ``xenstore_domain_interface``
ring page and its constants. The names are the C names so a reader can grep
the header. Behaviour lives in :mod:`xenpci.xenstore`; nothing here acts.
"""

from __future__ import annotations

import ctypes
import enum
import errno
from typing import Final


class xsd_sockmsg_type(enum.IntEnum):
    """``enum xsd_sockmsg_type``: the ``type`` field of every message."""

    XS_CONTROL = 0
    XS_DIRECTORY = 1
    XS_READ = 2
    XS_GET_PERMS = 3
    XS_WATCH = 4
    XS_UNWATCH = 5
    XS_TRANSACTION_START = 6
    XS_TRANSACTION_END = 7
    XS_INTRODUCE = 8
    XS_RELEASE = 9
    XS_GET_DOMAIN_PATH = 10
    XS_WRITE = 11
    XS_MKDIR = 12
    XS_RM = 13
    XS_SET_PERMS = 14
    XS_WATCH_EVENT = 15
    XS_ERROR = 16
    XS_IS_DOMAIN_INTRODUCED = 17
    XS_RESUME = 18
    XS_SET_TARGET = 19
    # 20 was XS_RESTRICT, removed from the protocol; the number stays unused.
    XS_RESET_WATCHES = 21
    XS_DIRECTORY_PART = 22
    XS_TYPE_COUNT = 23
    XS_INVALID = 0xFFFF


XS_CONTROL: Final = xsd_sockmsg_type.XS_CONTROL
XS_DEBUG: Final = xsd_sockmsg_type.XS_CONTROL  # the header's old alias
XS_DIRECTORY: Final = xsd_sockmsg_type.XS_DIRECTORY
XS_READ: Final = xsd_sockmsg_type.XS_READ
XS_GET_PERMS: Final = xsd_sockmsg_type.XS_GET_PERMS
XS_WATCH: Final = xsd_sockmsg_type.XS_WATCH
XS_UNWATCH: Final = xsd_sockmsg_type.XS_UNWATCH
XS_TRANSACTION_START: Final = xsd_sockmsg_type.XS_TRANSACTION_START
XS_TRANSACTION_END: Final = xsd_sockmsg_type.XS_TRANSACTION_END
XS_INTRODUCE: Final = xsd_sockmsg_type.XS_INTRODUCE
XS_RELEASE: Final = xsd_sockmsg_type.XS_RELEASE
XS_GET_DOMAIN_PATH: Final = xsd_sockmsg_type.XS_GET_DOMAIN_PATH
XS_WRITE: Final = xsd_sockmsg_type.XS_WRITE
XS_MKDIR: Final = xsd_sockmsg_type.XS_MKDIR
XS_RM: Final = xsd_sockmsg_type.XS_RM
XS_SET_PERMS: Final = xsd_sockmsg_type.XS_SET_PERMS
XS_WATCH_EVENT: Final = xsd_sockmsg_type.XS_WATCH_EVENT
XS_ERROR: Final = xsd_sockmsg_type.XS_ERROR
XS_IS_DOMAIN_INTRODUCED: Final = xsd_sockmsg_type.XS_IS_DOMAIN_INTRODUCED
XS_RESUME: Final = xsd_sockmsg_type.XS_RESUME
XS_SET_TARGET: Final = xsd_sockmsg_type.XS_SET_TARGET
XS_RESET_WATCHES: Final = xsd_sockmsg_type.XS_RESET_WATCHES
XS_DIRECTORY_PART: Final = xsd_sockmsg_type.XS_DIRECTORY_PART
XS_TYPE_COUNT: Final = xsd_sockmsg_type.XS_TYPE_COUNT
XS_INVALID: Final = xsd_sockmsg_type.XS_INVALID

# Values of the optional flag argument of the old XS_WRITE form.
XS_WRITE_NONE: Final = "NONE"
XS_WRITE_CREATE: Final = "CREATE"
XS_WRITE_CREATE_EXCL: Final = "CREATE|EXCL"

# ``xsd_errors[]``: (errno, name), in the header's order. An XS_ERROR reply
# carries the name as a NUL-terminated string; clients map it back to errno by
# searching this table, so a name outside it (EQUOTA, say) cannot be decoded.
xsd_errors: Final[tuple[tuple[int, str], ...]] = tuple(
    (getattr(errno, name), name)
    for name in (
        "EINVAL",
        "EACCES",
        "EEXIST",
        "EISDIR",
        "ENOENT",
        "ENOMEM",
        "ENOSPC",
        "EIO",
        "ENOTEMPTY",
        "ENOSYS",
        "EROFS",
        "EBUSY",
        "EAGAIN",
        "EISCONN",
        "E2BIG",
        "EPERM",
    )
)
XSD_ERROR_NAMES: Final[frozenset[str]] = frozenset(name for _, name in xsd_errors)


class xsd_sockmsg(ctypes.LittleEndianStructure):
    """``struct xsd_sockmsg``: the 16-byte header before every payload."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("req_id", ctypes.c_uint32),
        ("tx_id", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
    )


class xs_watch_type(enum.IntEnum):
    """``enum xs_watch_type``: field order of an XS_WATCH_EVENT payload."""

    XS_WATCH_PATH = 0
    XS_WATCH_TOKEN = 1


XS_WATCH_PATH: Final = xs_watch_type.XS_WATCH_PATH
XS_WATCH_TOKEN: Final = xs_watch_type.XS_WATCH_TOKEN

XENSTORE_RING_SIZE: Final = 1024
XENSTORE_RING_IDX = ctypes.c_uint32


def MASK_XENSTORE_IDX(idx: int) -> int:
    """The header's ``MASK_XENSTORE_IDX``: a free-running index to a ring offset."""
    return idx & (XENSTORE_RING_SIZE - 1)


class xenstore_domain_interface(ctypes.LittleEndianStructure):
    """``struct xenstore_domain_interface``: the ring page shared with xenstored."""

    _fields_ = (
        ("req", ctypes.c_char * XENSTORE_RING_SIZE),
        ("rsp", ctypes.c_char * XENSTORE_RING_SIZE),
        ("req_cons", XENSTORE_RING_IDX),
        ("req_prod", XENSTORE_RING_IDX),
        ("rsp_cons", XENSTORE_RING_IDX),
        ("rsp_prod", XENSTORE_RING_IDX),
        ("server_features", ctypes.c_uint32),
        ("connection", ctypes.c_uint32),
        ("error", ctypes.c_uint32),
    )


XENSTORE_PAYLOAD_MAX: Final = 4096
XENSTORE_ABS_PATH_MAX: Final = 3072
XENSTORE_REL_PATH_MAX: Final = 2048

XENSTORE_SERVER_FEATURE_RECONNECTION: Final = 1
XENSTORE_SERVER_FEATURE_ERROR: Final = 2

XENSTORE_CONNECTED: Final = 0
XENSTORE_RECONNECT: Final = 1

XENSTORE_ERROR_NONE: Final = 0
XENSTORE_ERROR_COMM: Final = 1
XENSTORE_ERROR_RINGIDX: Final = 2
XENSTORE_ERROR_PROTO: Final = 3
