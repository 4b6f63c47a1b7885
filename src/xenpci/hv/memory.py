"""Machine memory in 4 KiB frames and each domain's guest-frame -> machine-frame map.

Models Xen's page allocator (``common/page_alloc.c``) and the PV phys-to-machine
table (``arch/x86/mm.c``'s ``get_page``/``put_page`` reference counting) in the
small: machine RAM is a sparse set of ``bytearray(4096)`` frames indexed by
machine frame number (mfn), allocated lazily; a domain's memory is a dense
gfn -> mfn sequence fixed at creation (a ``range`` when its frames were fresh, so a
guest of tens of thousands of pages holds no int per frame). Deliberate
differences: no ballooning, no superpages, and frames are scrubbed (zeroed)
when allocated rather than freed.

RAM mfns start at ``RAM_BASE_MFN`` so that machine addresses of RAM never
collide with the MMIO window devices register on the I/O bus (below 4 GiB,
``MMIO_BASE``), as on a PC where BARs sit in the PCI hole.
"""

from __future__ import annotations

import sys
import threading
from array import array
from collections.abc import Collection, Sequence

from xenpci.hv.errors import InvalidArgument, OutOfMemory

#: The owner of a free frame in :class:`MachineMemory`'s owner table.
_FREE = -1
#: The largest owner the table holds (a C int; domids are 16-bit).
_MAX_OWNER = 0x7FFFFFFF
#: Where the sign bit of each owner-table entry sits in the table's bytes: owners are
#: non-negative, so an entry is ``_FREE`` exactly when this byte has its top bit set.
_ITEM = array("i").itemsize
_SIGN_BYTE = _ITEM - 1 if sys.byteorder == "little" else 0

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
#: First machine frame handed out as RAM (4 GiB): BARs live below, in the PCI hole.
RAM_BASE_MFN = 0x100000
#: Default machine RAM (in frames): 1 GiB; frames only cost memory once touched.
DEFAULT_RAM_FRAMES = 1 << 18
#: The PCI hole where device BARs are placed.
MMIO_BASE = 0xE000_0000


class MachineMemory:
    """All machine RAM frames: allocation, freeing and access by mfn (thread-safe).

    Who owns each frame is one ``array`` of C ints indexed by ``mfn - RAM_BASE_MFN``
    (``_FREE`` for a free frame), as Xen's ``frame_table`` keeps a ``page_info`` per
    frame: a guest's tens of thousands of fresh frames are handed out, and a dying
    guest's contiguous RAM given back, as slice operations in C (no dict entry per
    frame to build or pop). The table covers the frames ever handed out (up to
    ``_next``) and grows with fresh allocations: a frame beyond it was never
    allocated, so it is free.
    """

    def __init__(self, nr_frames: int = DEFAULT_RAM_FRAMES) -> None:
        if nr_frames <= 0:
            raise InvalidArgument("machine needs at least one RAM frame")
        self.nr_frames = nr_frames
        self._lock = threading.Lock()
        self._frames: dict[int, bytearray] = {}
        self._next = RAM_BASE_MFN
        self._freed: list[int] = []
        self._own = array("i")
        self._nr_owned = 0

    @property
    def end_mfn(self) -> int:
        return RAM_BASE_MFN + self.nr_frames

    def is_ram(self, mfn: int) -> bool:
        return RAM_BASE_MFN <= mfn < self.end_mfn

    def allocate(self, count: int, owner: int) -> Sequence[int]:
        """``count`` zeroed frames for domain ``owner`` (all or nothing).

        A run of fresh frames only (a guest's memory, as a rule) comes back as a
        ``range``: no int object per frame, and :meth:`free` knows it is one run
        without comparing it frame by frame. Otherwise a list.
        """
        if count < 0:
            raise InvalidArgument(f"negative frame count {count}")
        if not 0 <= owner <= _MAX_OWNER:
            raise InvalidArgument(f"owner {owner} is not a domain id")
        with self._lock:
            available = len(self._freed) + (self.end_mfn - self._next)
            if count > available:
                raise OutOfMemory(f"{count} frames requested, {available} free", requested=count)
            # Reused frames first, most recently freed first; then fresh ones. Whole
            # slices, no per-frame Python step for the fresh ones: a guest's RAM is
            # tens of thousands of them.
            freed, own = self._freed, self._own
            take = min(count, len(freed))
            if not take:
                own.extend(array("i", (owner,)) * count)  # the table's end: fresh frames
                run = range(self._next, self._next + count)
                self._next += count
                self._nr_owned += count
                return run  # fresh frames never had bytes: nothing to scrub
            out = freed[len(freed) - take :][::-1]
            del freed[len(freed) - take :]
            for mfn in out:
                own[mfn - RAM_BASE_MFN] = owner
            fresh = count - take
            own.extend(array("i", (owner,)) * fresh)  # fresh frames start at the table's end
            out.extend(range(self._next, self._next + fresh))
            self._next += fresh
            self._nr_owned += count
            # Scrub on allocation: a new owner never sees the previous owner's bytes.
            # Only frames ever touched have bytes, and only allocated frames can be
            # touched (``frame`` refuses others): of ``out`` only the reused ones may
            # have bytes (``keys() & ...`` walks them in C); fresh ones never had any.
            frames = self._frames
            if take:
                for mfn in frames.keys() & out[:take]:
                    frames[mfn][:] = bytes(PAGE_SIZE)
            return out

    def free(self, mfns: Sequence[int], keep: Collection[int] = ()) -> None:
        """Give back the owned frames of ``mfns`` except those in ``keep`` (which stay
        with their owner: a dying domain's frames still mapped by another one).

        Frames not owned (or not RAM) are ignored. Freed frames are reused later
        in the reverse of this order (the most recently freed first).
        """
        with self._lock:
            if not self._free_range(mfns, keep):
                own, freed = self._own, self._freed
                n = len(own)
                for mfn in mfns:
                    i = mfn - RAM_BASE_MFN
                    if 0 <= i < n and own[i] != _FREE and mfn not in keep:
                        own[i] = _FREE
                        freed.append(mfn)
                        self._nr_owned -= 1

    def _free_range(self, mfns: Sequence[int], keep: Collection[int]) -> bool:
        """:meth:`free`'s fast path (caller holds the lock): ``mfns`` is one run of
        consecutive owned RAM frames, as a domain's memory is when it was allocated
        fresh. False (nothing done) when it is not."""
        count = len(mfns)
        if not count:
            return True
        lo = mfns[0]
        first = lo - RAM_BASE_MFN
        own = self._own
        if first < 0 or first + count > len(own) or mfns[-1] != lo + count - 1:
            return False
        # One run, no duplicates or gaps: a step-1 range is one by construction (what
        # ``allocate`` hands out fresh); a list is compared in C.
        if not (type(mfns) is range and mfns.step == 1) and mfns != list(range(lo, lo + count)):
            return False
        was = own[first : first + count]
        # Any entry ``_FREE``? Its sign byte, read for all entries at once in C.
        if not was.tobytes()[_SIGN_BYTE::_ITEM].isascii():
            return False
        own[first : first + count] = array("i", (_FREE,)) * count
        # Slices of ``mfns`` (its int objects, not new ones) around the kept frames.
        kept = sorted(k - lo for k in keep if lo <= k < lo + count)
        start = 0
        for k in kept:
            own[first + k] = was[k]
            self._freed.extend(mfns[start:k])
            start = k + 1
        self._freed.extend(mfns[start:])
        self._nr_owned -= count - len(kept)
        return True

    def owner(self, mfn: int) -> int | None:
        """The domain owning RAM frame ``mfn`` (``None`` if free or not RAM)."""
        i = mfn - RAM_BASE_MFN
        with self._lock:
            own = self._own
            who = own[i] if 0 <= i < len(own) else _FREE
        return None if who == _FREE else who

    def frame(self, mfn: int) -> bytearray:
        """The live bytes of an allocated frame (created on first touch)."""
        frame = self._frames.get(mfn)
        if frame is not None:
            return frame
        with self._lock:
            i = mfn - RAM_BASE_MFN
            own = self._own
            if not 0 <= i < len(own) or own[i] == _FREE:
                raise InvalidArgument(f"mfn {mfn:#x} is not allocated RAM", mfn=mfn)
            return self._frames.setdefault(mfn, bytearray(PAGE_SIZE))

    @property
    def allocated(self) -> int:
        with self._lock:
            return self._nr_owned


class P2M:
    """One domain's guest-physical memory: gfn -> mfn, plus which gfns are handed out.

    ``alloc_page`` gives the guest kernel a free frame of its own memory (as its
    page allocator would); the map itself never changes after creation.
    """

    def __init__(self, machine: MachineMemory, mfns: Sequence[int]) -> None:
        self.machine = machine
        self.mfns = mfns
        self._lock = threading.Lock()
        # Lowest free gfn first, like a fresh buddy allocator; a freed gfn is given
        # again first (a stack). Never-used gfns are the range from ``_unused`` on,
        # so a domain of tens of thousands of pages builds no list of them.
        self._unused = 0
        self._free: list[int] = []
        self._in_use: set[int] = set()

    @property
    def nr_pages(self) -> int:
        return len(self.mfns)

    def mfn(self, gfn: int) -> int:
        if not 0 <= gfn < len(self.mfns):
            raise InvalidArgument(
                f"gfn {gfn:#x} outside the domain's {len(self.mfns)} pages", gfn=gfn
            )
        return self.mfns[gfn]

    def frame(self, gfn: int) -> bytearray:
        return self.machine.frame(self.mfn(gfn))

    def alloc_page(self) -> int:
        with self._lock:
            if self._free:
                gfn = self._free.pop()
            elif self._unused < len(self.mfns):
                gfn = self._unused
                self._unused += 1
            else:
                raise OutOfMemory("no free page left in the domain's memory")
            self._in_use.add(gfn)
        self.frame(gfn)[:] = bytes(PAGE_SIZE)
        return gfn

    def free_page(self, gfn: int) -> None:
        self.mfn(gfn)
        with self._lock:
            if gfn not in self._in_use:
                raise InvalidArgument(f"gfn {gfn:#x} was not allocated", gfn=gfn)
            self._in_use.remove(gfn)
            self._free.append(gfn)

    def spans(self, gpaddr: int, n: int) -> list[tuple[int, int, int]]:
        """Split ``[gpaddr, gpaddr+n)`` into ``(gfn, offset, length)`` pieces, all checked."""
        if gpaddr < 0 or n < 0:
            raise InvalidArgument("negative address or length", gpaddr=gpaddr, n=n)
        out: list[tuple[int, int, int]] = []
        addr, end = gpaddr, gpaddr + n
        while addr < end:
            gfn, off = addr >> PAGE_SHIFT, addr & (PAGE_SIZE - 1)
            length = min(PAGE_SIZE - off, end - addr)
            self.mfn(gfn)
            out.append((gfn, off, length))
            addr += length
        return out

    def read(self, gpaddr: int, n: int) -> bytes:
        pieces = self.spans(gpaddr, n)
        return b"".join(bytes(self.frame(g)[o : o + ln]) for g, o, ln in pieces)

    def write(self, gpaddr: int, data: bytes) -> None:
        pieces = self.spans(gpaddr, len(data))
        pos = 0
        for g, o, ln in pieces:
            self.frame(g)[o : o + ln] = data[pos : pos + ln]
            pos += ln
