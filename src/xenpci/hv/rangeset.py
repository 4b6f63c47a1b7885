"""Sets of inclusive integer ranges, as Xen's ``common/rangeset.c``.

Xen keeps one rangeset per domain for each capability (``iomem_caps``,
``arch.ioport_caps``, ``irq_caps``); ``iomem_access_permitted(d, s, e)`` is
``rangeset_contains_range(d->iomem_caps, s, e)``. Here the ranges are a sorted
list of disjoint, non-adjacent ``(first, last)`` pairs; adding merges, removing
splits. Not thread-safe on its own: the owner (``Permissions``) holds a lock.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from xenpci.hv.errors import InvalidArgument


class RangeSet:
    """A set of integers stored as inclusive ranges."""

    __slots__ = ("_firsts", "_lasts", "name")

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._firsts: list[int] = []
        self._lasts: list[int] = []

    @staticmethod
    def _check(first: int, last: int) -> None:
        if first < 0 or last < first:
            raise InvalidArgument(f"bad range [{first:#x}, {last:#x}]", first=first, last=last)

    def add_range(self, first: int, last: int) -> None:
        self._check(first, last)
        # Every stored range that overlaps or touches [first, last] merges into it.
        lo = bisect.bisect_left(self._lasts, first - 1)
        hi = bisect.bisect_right(self._firsts, last + 1)
        if lo < hi:
            first = min(first, self._firsts[lo])
            last = max(last, self._lasts[hi - 1])
        self._firsts[lo:hi] = [first]
        self._lasts[lo:hi] = [last]

    def remove_range(self, first: int, last: int) -> None:
        self._check(first, last)
        lo = bisect.bisect_left(self._lasts, first)
        hi = bisect.bisect_right(self._firsts, last)
        if lo >= hi:
            return
        keep_f: list[int] = []
        keep_l: list[int] = []
        if self._firsts[lo] < first:
            keep_f.append(self._firsts[lo])
            keep_l.append(first - 1)
        if self._lasts[hi - 1] > last:
            keep_f.append(last + 1)
            keep_l.append(self._lasts[hi - 1])
        self._firsts[lo:hi] = keep_f
        self._lasts[lo:hi] = keep_l

    def contains_range(self, first: int, last: int) -> bool:
        """True iff every integer of ``[first, last]`` is in the set."""
        self._check(first, last)
        i = bisect.bisect_right(self._firsts, first) - 1
        return i >= 0 and self._lasts[i] >= last

    def overlaps(self, first: int, last: int) -> bool:
        """True iff some integer of ``[first, last]`` is in the set."""
        self._check(first, last)
        i = bisect.bisect_left(self._lasts, first)
        return i < len(self._firsts) and self._firsts[i] <= last

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and value >= 0 and self.contains_range(value, value)

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._firsts, self._lasts, strict=True))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.ranges())

    def __len__(self) -> int:
        return sum(b - a + 1 for a, b in zip(self._firsts, self._lasts, strict=True))

    def is_empty(self) -> bool:
        return not self._firsts

    def __repr__(self) -> str:
        body = ", ".join(f"[{a:#x}, {b:#x}]" for a, b in self.ranges())
        return f"RangeSet({self.name!r}: {body})"
