"""``xenpci.abi.ring.store_idx``: a ring index published in one store."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from xenpci.abi.ring import store_idx


@given(st.integers(0, 2**40), st.integers(0, 15))
def test_store_idx_writes_the_little_endian_index_and_nothing_else(value: int, slot: int) -> None:
    """The page ends up exactly as ``struct.pack_into`` would leave it (the masked
    little-endian value), and only the index's own 4 bytes change. That a peer
    process never sees a torn or zeroed index is tested against a C reader in
    tests/xenstore/test_attacks_transport.py."""
    page = bytearray(range(64))
    want = bytearray(page)
    struct.pack_into("<I", want, slot * 4, value & 0xFFFFFFFF)
    store_idx(memoryview(page), slot * 4, value)
    assert page == want
