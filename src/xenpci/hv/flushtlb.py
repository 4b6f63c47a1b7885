"""The TLB-flush clock: when a cached translation of a guest's MMIO mapping goes stale.

Mirrors the idea of ``tlbflush_clock`` in ``xen/arch/x86/flushtlb.c``: one
machine-wide clock that moves on every change that must invalidate cached
translations; a holder of a translation stamped before the current tick
throws it away and walks the tables again. Here the "translation" is an
:class:`~xenpci.hv.hypercalls.MmioMapping`'s fast path (the domain may reach
these frames, none is MSI-X protected or decode-off, and this device window
answers them), and the "tables" are the permission rangesets, the MSI-X
protected frames, the decode-off frames and the I/O bus.

Deliberate difference: the clock is an object identity, not a 32-bit counter,
so a stamp never wraps and comparing it is a single ``is``.
"""

from __future__ import annotations


class FlushClock:
    """A tick that any invalidating change moves on (``tick``); readers compare ``now``."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now: object = object()

    def tick(self) -> None:
        # A fresh object: every stamp taken before is now different by identity.
        self.now = object()
