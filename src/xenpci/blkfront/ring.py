"""The frontend half of ``io/ring.h`` for the blkif ring (``struct blkif_front_ring``).

``XEN_FRONT_RING_INIT`` (``SHARED_RING_INIT`` + ``FRONT_RING_INIT``) on the
frontend's own page; requests are built in a private copy and written whole
into their slot, then published with ``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY``;
responses are copied out (``RING_COPY_RESPONSE``) and the consumer re-arms
``rsp_event`` with ``RING_FINAL_CHECK_FOR_RESPONSES``. Index arithmetic is
:mod:`xenpci.abi.ring`'s.
"""

from __future__ import annotations

import ctypes
import struct

from xenpci.abi import ring as r
from xenpci.abi.blkif import BLKIF_RING_SIZE, blkif_request, blkif_response, blkif_sring_entry

_IDX = struct.Struct("<I")
_ENTRY = ctypes.sizeof(blkif_sring_entry)
_RING = r.SRING_HEADER_SIZE
REQ_PROD, REQ_EVENT = r.SRING_REQ_PROD, r.SRING_REQ_EVENT
RSP_PROD, RSP_EVENT = r.SRING_RSP_PROD, r.SRING_RSP_EVENT


class FrontRing:
    """``XEN_FRONT_RING_INIT`` over ``page``."""

    def __init__(self, page: memoryview, size: int = BLKIF_RING_SIZE) -> None:
        if len(page) < _RING + size * _ENTRY:
            raise ValueError(f"a {len(page)}-byte page cannot hold {size} entries")
        self.page = page
        self.nr_ents = size
        # SHARED_RING_INIT: producers 0, events 1, private and padding bytes zeroed.
        page[:_RING] = bytes(_RING)
        for off, value in ((REQ_PROD, 0), (RSP_PROD, 0), (REQ_EVENT, 1), (RSP_EVENT, 1)):
            r.store_idx(page, off, value)
        self.req_prod_pvt = 0
        self.rsp_cons = 0

    def _get(self, off: int) -> int:
        value: int = _IDX.unpack_from(self.page, off)[0]
        return value

    def free_requests(self) -> int:
        """``RING_FREE_REQUESTS``."""
        return self.nr_ents - r.idx(self.req_prod_pvt - self.rsp_cons)

    def put_request(self, req: blkif_request) -> None:
        """Write ``req`` into the next slot (``RING_GET_REQUEST`` + fill), unpublished."""
        if self.free_requests() <= 0:
            raise OverflowError("ring full")
        off = _RING + (self.req_prod_pvt & (self.nr_ents - 1)) * _ENTRY
        self.page[off : off + ctypes.sizeof(req)] = bytes(req)
        self.req_prod_pvt = r.idx(self.req_prod_pvt + 1)

    def push_requests_and_check_notify(self) -> bool:
        """``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY``."""
        old = self._get(REQ_PROD)
        new = self.req_prod_pvt
        r.store_idx(self.page, REQ_PROD, new)  # one store: the backend may be reading
        return r.push_check_notify(old, new, self._get(REQ_EVENT))

    def unconsumed_responses(self) -> int:
        return r.unconsumed_responses(self._get(RSP_PROD), self.rsp_cons)

    def response_overflow(self) -> bool:
        """``RING_RESPONSE_PROD_OVERFLOW``: a backend claiming impossible responses."""
        return r.idx(self._get(RSP_PROD) - self.rsp_cons) > self.nr_ents

    def take_response(self) -> blkif_response:
        """``RING_COPY_RESPONSE`` of the next response, consumed."""
        off = _RING + (self.rsp_cons & (self.nr_ents - 1)) * _ENTRY
        rsp = blkif_response.from_buffer_copy(self.page, off)
        self.rsp_cons = r.idx(self.rsp_cons + 1)
        return rsp

    def final_check_for_responses(self) -> bool:
        """``RING_FINAL_CHECK_FOR_RESPONSES``."""
        if self.unconsumed_responses():
            return True
        r.store_idx(self.page, RSP_EVENT, self.rsp_cons + 1)
        return bool(self.unconsumed_responses())
