"""The shared-ring layout and index arithmetic of ``xen/include/public/io/ring.h``.

``DEFINE_RING_TYPES(name, req, rsp)`` declares ``struct name_sring``: four
free-running 32-bit indices (``req_prod``, ``req_event``, ``rsp_prod``,
``rsp_event``), a 4-byte private union, 44 bytes of padding (64 bytes of
header in all), then a power-of-two array of request/response unions filling
the rest of the page. :func:`sring_type` builds the same ctypes structure for
any request/response pair; :func:`ring_size` is ``__CONST_RING_SIZE``.

The index rules (``RING_PUSH_*_AND_CHECK_NOTIFY``, ``RING_FINAL_CHECK_FOR_*``)
are pure functions of the indices here; the front/back ring objects that apply
them to a live page are in :mod:`xenpci.blkfront.ring` and
:mod:`xenpci.blkback.ring`. Deliberate difference: none in layout; the
private union is kept as its 4 raw bytes (``pvt_pad``), as no ring here uses
netif's ``smartpoll_active`` or the ``msg`` byte.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Final

RING_IDX = ctypes.c_uint32
#: ``offsetof(struct X_sring, ring)``: the header before the entries.
SRING_HEADER_SIZE: Final = 64
RING_IDX_MASK: Final = 0xFFFF_FFFF


_LITTLE_ENDIAN: Final = sys.byteorder == "little"


def store_idx(page: memoryview | bytearray, off: int, value: int) -> None:
    """Publish a 32-bit ring index (little-endian, as the page is) in ONE aligned store.

    What C does with ``sring->req_prod = idx``. The page may be mapped by a
    peer process (C xenstored through the xs-oracle shim, a gcc-built blkfront)
    that reads the index while we write it, so this is not
    ``struct.pack_into``: CPython's pack zeroes the destination bytes before it
    stores the value, and a peer reading in between sees an index of 0, a
    producer a whole ring (or more) away. A typed memoryview item assignment
    is a single ``unsigned int`` store.
    """
    value &= RING_IDX_MASK
    if not _LITTLE_ENDIAN:
        value = int.from_bytes(value.to_bytes(4, "little"), sys.byteorder)
    memoryview(page)[off : off + 4].cast("I")[0] = value


class sring_pvt(ctypes.Union):
    """The private union of the ring header (4 bytes)."""

    _fields_ = (("pvt_pad", ctypes.c_uint8 * 4),)


def sring_type(
    name: str, req: type[ctypes.Structure], rsp: type[ctypes.Structure]
) -> tuple[type[ctypes.Union], type[ctypes.Structure]]:
    """``DEFINE_RING_TYPES``: the entry union and the shared ring (with ``ring[1]``)."""
    entry: type[ctypes.Union] = type(
        f"{name}_sring_entry", (ctypes.Union,), {"_fields_": (("req", req), ("rsp", rsp))}
    )
    sring = type(
        f"{name}_sring",
        (ctypes.LittleEndianStructure,),
        {
            "_fields_": (
                ("req_prod", RING_IDX),
                ("req_event", RING_IDX),
                ("rsp_prod", RING_IDX),
                ("rsp_event", RING_IDX),
                ("pvt", sring_pvt),
                ("__pad", ctypes.c_uint8 * 44),
                ("ring", entry * 1),
            )
        },
    )
    return entry, sring


def rounddown_pow2(n: int) -> int:
    """``__RD32``: the largest power of two not above ``n`` (0 for 0)."""
    return 1 << (n.bit_length() - 1) if n > 0 else 0


def ring_size(entry: type[ctypes.Union], space: int) -> int:
    """``__CONST_RING_SIZE``: entries that fit in ``space`` bytes, rounded down to 2**k."""
    return rounddown_pow2((space - SRING_HEADER_SIZE) // ctypes.sizeof(entry))


def idx(value: int) -> int:
    """A ``RING_IDX`` value: indices are free-running and wrap at 2**32."""
    return value & RING_IDX_MASK


def push_check_notify(old: int, new: int, event: int) -> bool:
    """``RING_PUSH_*_AND_CHECK_NOTIFY``'s test: did the producer pass the consumer's event
    index with this push (``(RING_IDX)(new - event) < (RING_IDX)(new - old)``)?"""
    return idx(new - event) < idx(new - old)


def unconsumed_requests(req_prod: int, req_cons: int, rsp_prod_pvt: int, size: int) -> int:
    """``XEN_RING_NR_UNCONSUMED_REQUESTS``: bounded by the free response slots, so a
    frontend that pushes a wild ``req_prod`` cannot make the backend overrun."""
    req = idx(req_prod - req_cons)
    rsp = idx(size - idx(req_cons - rsp_prod_pvt))
    return min(req, rsp)


def unconsumed_responses(rsp_prod: int, rsp_cons: int) -> int:
    """``XEN_RING_NR_UNCONSUMED_RESPONSES``."""
    return idx(rsp_prod - rsp_cons)


def request_cons_overflow(cons: int, rsp_prod_pvt: int, size: int) -> bool:
    """``RING_REQUEST_CONS_OVERFLOW``: consuming ``cons`` would overrun the ring."""
    return idx(cons - rsp_prod_pvt) >= size


def request_prod_overflow(prod: int, rsp_prod_pvt: int, size: int) -> bool:
    """``RING_REQUEST_PROD_OVERFLOW``: the frontend claims more requests than can exist."""
    return idx(prod - rsp_prod_pvt) > size


#: Offsets of the shared indices in every ``X_sring`` (the header test checks them
#: against ``offsetof(struct blkif_sring, ...)``).
SRING_REQ_PROD: Final = 0
SRING_REQ_EVENT: Final = 4
SRING_RSP_PROD: Final = 8
SRING_RSP_EVENT: Final = 12
