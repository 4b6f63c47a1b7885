"""RangeSet against a plain Python set of integers (the independent truth)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenpci.hv import InvalidArgument, RangeSet

ops = st.lists(st.tuples(st.booleans(), st.integers(0, 60), st.integers(0, 8)), max_size=30)


@given(ops, st.integers(0, 70), st.integers(0, 10))
def test_matches_a_set_model(script: list[tuple[bool, int, int]], q: int, qlen: int) -> None:
    rs, model = RangeSet(), set[int]()
    for add, first, length in script:
        last = first + length
        if add:
            rs.add_range(first, last)
            model |= set(range(first, last + 1))
        else:
            rs.remove_range(first, last)
            model -= set(range(first, last + 1))
        ranges = rs.ranges()
        # Canonical form: sorted, disjoint, not even adjacent.
        assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(ranges))
        assert {i for a, b in ranges for i in range(a, b + 1)} == model
    window = set(range(q, q + qlen + 1))
    assert rs.contains_range(q, q + qlen) == (window <= model)
    assert rs.overlaps(q, q + qlen) == bool(window & model)
    assert len(rs) == len(model)
    assert (q in rs) == (q in model)


def test_bad_ranges() -> None:
    rs = RangeSet()
    for first, last in ((5, 4), (-1, 3)):
        with pytest.raises(InvalidArgument):
            rs.add_range(first, last)
    assert rs.is_empty()
