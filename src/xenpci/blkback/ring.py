"""The backend half of ``io/ring.h`` for the blkif ring (``struct blkif_back_ring``).

A live view of the shared page: the four shared indices are read and written
in place, the private ones (``rsp_prod_pvt``, ``req_cons``) are kept here, as
``BACK_RING_INIT`` keeps them in the backend's own memory. Requests are
copied out before use (``RING_COPY_REQUEST``): the frontend can rewrite the
slot at any time, so nothing is read from the page twice. The notification
rules are ``RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`` and
``RING_FINAL_CHECK_FOR_REQUESTS`` from :mod:`xenpci.abi.ring`.

Works over any writable buffer: a grant mapping of the frontend's page, or an
``mmap`` shared with a C frontend built on the real macros.
"""

from __future__ import annotations

import ctypes
import struct

from xenpci.abi import ring as r
from xenpci.abi.blkif import BLKIF_RING_SIZE, blkif_request, blkif_sring_entry

_IDX = struct.Struct("<I")
_RSP = struct.Struct("<QBxh")  # struct blkif_response: id, operation, (pad), status
_ENTRY = ctypes.sizeof(blkif_sring_entry)
_RING = r.SRING_HEADER_SIZE
REQ_PROD, REQ_EVENT = r.SRING_REQ_PROD, r.SRING_REQ_EVENT
RSP_PROD, RSP_EVENT = r.SRING_RSP_PROD, r.SRING_RSP_EVENT


class BackRing:
    """``BACK_RING_ATTACH`` over ``page`` at index ``start`` (``BACK_RING_INIT``: 0); the
    frontend initialised the shared header."""

    def __init__(self, page: memoryview, size: int = BLKIF_RING_SIZE, start: int = 0) -> None:
        if len(page) < _RING + size * _ENTRY:
            raise ValueError(f"a {len(page)}-byte page cannot hold {size} entries")
        self.page = page
        self.nr_ents = size
        self.rsp_prod_pvt = r.idx(start)
        self.req_cons = r.idx(start)

    def _get(self, off: int) -> int:
        value: int = _IDX.unpack_from(self.page, off)[0]
        return value

    def _set(self, off: int, value: int) -> None:
        r.store_idx(self.page, off, value)  # one store: the frontend may be reading

    @property
    def req_prod(self) -> int:
        return self._get(REQ_PROD)

    def unconsumed_requests(self) -> int:
        """``RING_HAS_UNCONSUMED_REQUESTS`` (the count, bounded by free response slots)."""
        return r.unconsumed_requests(self.req_prod, self.req_cons, self.rsp_prod_pvt, self.nr_ents)

    def prod_overflow(self, prod: int) -> bool:
        """``RING_REQUEST_PROD_OVERFLOW``: a frontend claiming impossible requests."""
        return r.request_prod_overflow(prod, self.rsp_prod_pvt, self.nr_ents)

    def cons_overflow(self, cons: int) -> bool:
        return r.request_cons_overflow(cons, self.rsp_prod_pvt, self.nr_ents)

    def copy_request(self, index: int) -> blkif_request:
        """``RING_COPY_REQUEST``: a private copy of slot ``index``."""
        off = _RING + (index & (self.nr_ents - 1)) * _ENTRY
        return blkif_request.from_buffer_copy(self.page, off)

    def put_response(self, req_id: int, operation: int, status: int) -> None:
        """Fill the next response slot (``make_response``) without publishing it."""
        off = _RING + (self.rsp_prod_pvt & (self.nr_ents - 1)) * _ENTRY
        _RSP.pack_into(self.page, off, req_id, operation, status)
        self.rsp_prod_pvt = r.idx(self.rsp_prod_pvt + 1)

    def push_responses_and_check_notify(self) -> bool:
        """``RING_PUSH_RESPONSES_AND_CHECK_NOTIFY``: publish, and say if the front waits."""
        old = self._get(RSP_PROD)
        new = self.rsp_prod_pvt
        self._set(RSP_PROD, new)
        return r.push_check_notify(old, new, self._get(RSP_EVENT))

    def final_check_for_requests(self) -> bool:
        """``RING_FINAL_CHECK_FOR_REQUESTS``: re-arm ``req_event``, then look once more."""
        if self.unconsumed_requests():
            return True
        self._set(REQ_EVENT, self.req_cons + 1)
        return bool(self.unconsumed_requests())
