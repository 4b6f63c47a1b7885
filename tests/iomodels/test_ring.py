"""``io/ring.h`` index rules, as properties with an independent formulation.

The C frontend test checks the rules against the real macros on a live page;
these check the pure helpers over the whole 32-bit index space, wrap
included, against a plain restatement of what each macro means.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from xenpci.abi import ring as r
from xenpci.abi.blkif import BLKIF_RING_SIZE, blkif_sring

M = 0xFFFF_FFFF
idx = st.integers(0, M)


def test_shared_index_offsets_are_the_checked_struct_offsets() -> None:
    # blkif_sring's offsets are compared with the C compiler's in tests/abi.
    assert blkif_sring.req_prod.offset == r.SRING_REQ_PROD
    assert blkif_sring.req_event.offset == r.SRING_REQ_EVENT
    assert blkif_sring.rsp_prod.offset == r.SRING_RSP_PROD
    assert blkif_sring.rsp_event.offset == r.SRING_RSP_EVENT
    assert blkif_sring.ring.offset == r.SRING_HEADER_SIZE


@given(old=idx, pushed=st.integers(0, 64), event_delta=st.integers(-100, 100))
def test_notify_exactly_when_the_push_passes_the_event_index(
    old: int, pushed: int, event_delta: int
) -> None:
    new = (old + pushed) & M
    event = (old + event_delta) & M
    # The consumer asked to be woken at `event`: notify iff this push produced it.
    produced = {(old + i) & M for i in range(1, pushed + 1)}
    assert r.push_check_notify(old, new, event) == (event in produced)


@given(cons=idx, behind=st.integers(0, BLKIF_RING_SIZE), prod=idx)
def test_a_wild_req_prod_never_yields_more_than_the_free_slots(
    cons: int, behind: int, prod: int
) -> None:
    rsp_prod_pvt = (cons - behind) & M  # responses not yet produced for `behind` requests
    n = r.unconsumed_requests(prod, cons, rsp_prod_pvt, BLKIF_RING_SIZE)
    assert n <= BLKIF_RING_SIZE - behind
    assert n <= (prod - cons) & M
