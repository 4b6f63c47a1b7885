"""Grant tables, version 1: sharing a frame with one named domain.

Models ``xen/common/grant_table.c``: each domain owns a grant table whose
entries are real ``grant_entry_v1`` structures (``xen/include/public/grant_table.h``,
from ``xenpci.abi.grant_table``) in 4 KiB grant-table frames. Granting fills an
entry (``GTF_permit_access``, optionally ``GTF_readonly``, the grantee domid and
the frame); mapping checks the entry, sets ``GTF_reading``/``GTF_writing`` while
mapped, and records the mapping in the grantee's maptrack under a handle.
Ending access fails while either flag is set, as ``gnttab_end_foreign_access_ref``
does in Linux.

Deliberate differences: the entry's ``frame`` is the granter's *gfn* translated
at map time (an auto-translated guest; PV Linux writes an mfn there); the guest
does not write its entries directly but through ``grant``/``end_access`` here
(Linux's ``gnttab_grant_foreign_access``), so a guest cannot corrupt flags; a
map hands back a live ``memoryview`` of the frame instead of a PTE, released on
unmap. When a granter dies with frames still mapped, those frames stay
allocated until the last unmap (Xen keeps such a domain as a zombie).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections import Counter
from dataclasses import dataclass, field

from xenpci.abi import grant_table as gt
from xenpci.hv.errors import GrantError, NoSuchDomain
from xenpci.hv.memory import P2M, MachineMemory

#: Linux keeps the first refs for the toolstack (console, xenstore ring).
GNTTAB_NR_RESERVED_ENTRIES = 8
#: Grant-table frames per domain (Xen's default ``max_grant_frames`` is 64; 4 is plenty here).
NR_GRANT_FRAMES = 4
NR_GRANT_ENTRIES = NR_GRANT_FRAMES * gt.GRANT_ENTRIES_PER_FRAME_V1


@dataclass(frozen=True, slots=True, eq=False)
class GrantMapping:
    """A live mapping of another domain's granted frame.

    ``view`` is the granter's frame itself (writes are seen both ways),
    read-only iff ``readonly``; it is released on unmap and then raises on use.
    """

    handle: int
    granter: int
    gref: int
    readonly: bool
    view: memoryview = field(repr=False)


class _Table:
    """One domain's grant table: entries in real grant-table frames."""

    def __init__(self, domid: int, p2m: P2M) -> None:
        self.domid = domid
        self.p2m = p2m
        self.dead = False
        self.frames = [bytearray(4096) for _ in range(NR_GRANT_FRAMES)]
        #: The ctypes view of each entry ever touched, made on first use: a fresh
        #: table is all zeros (``GTF_invalid``), and building 2048 views per domain
        #: up front cost more than all the grants a run makes.
        self.touched: dict[int, gt.grant_entry_v1] = {}
        self.free = list(range(NR_GRANT_ENTRIES - 1, GNTTAB_NR_RESERVED_ENTRIES - 1, -1))
        # Mappings per ref: (readers, writers); the flags mirror "count > 0".
        self.maps: dict[int, list[int]] = {}
        # Frame each mapped ref pins (so a dying granter's frame outlives it).
        self.pinned_mfn: dict[int, int] = {}

    def entry(self, gref: int) -> gt.grant_entry_v1:
        """Entry ``gref`` (in range: callers check) as a live ``grant_entry_v1``."""
        entry = self.touched.get(gref)
        if entry is None:
            per = gt.GRANT_ENTRIES_PER_FRAME_V1
            entry = self.touched[gref] = gt.grant_entry_v1.from_buffer(
                self.frames[gref // per], (gref % per) * ctypes.sizeof(gt.grant_entry_v1)
            )
        return entry


@dataclass(slots=True)
class _MapTrack:
    table: _Table
    gref: int
    mfn: int
    mapping: GrantMapping
    base: memoryview


class GrantTables:
    """Every domain's grant table and maptrack, under one lock."""

    def __init__(self, machine: MachineMemory) -> None:
        self.machine = machine
        self._lock = threading.Lock()
        self._tables: dict[int, _Table] = {}
        self._maptrack: dict[int, dict[int, _MapTrack]] = {}
        self._next_handle: dict[int, int] = {}
        self._pins: Counter[int] = Counter()
        self._orphans: set[int] = set()

    # -- domain lifecycle -------------------------------------------------
    def add_domain(self, domid: int, p2m: P2M) -> None:
        with self._lock:
            self._tables[domid] = _Table(domid, p2m)
            self._maptrack[domid] = {}
            self._next_handle[domid] = 0

    def remove_domain(self, domid: int) -> set[int]:
        """Tear down ``domid``'s grants and mappings; return its mfns still mapped by others.

        The caller frees every other frame of the domain; the returned ones are
        freed here when their last foreign mapping goes away.
        """
        with self._lock:
            for track in list(self._maptrack.pop(domid, {}).values()):
                self._unmap_locked(track)
            self._next_handle.pop(domid, None)
            table = self._tables.pop(domid, None)
            if table is None:
                return set()
            table.dead = True
            # Entries never touched are still all zeros, i.e. already GTF_invalid.
            for gref, entry in table.touched.items():
                if gref not in table.maps:
                    entry.flags = gt.GTF_invalid
            pinned = set(table.pinned_mfn.values())
            self._orphans |= pinned
            return pinned

    # -- granter side -----------------------------------------------------
    def grant(self, granter: int, grantee: int, gfn: int, readonly: bool) -> int:
        with self._lock:
            table = self._table(granter, "gnttab_grant_foreign_access")
            if grantee not in self._tables:
                raise NoSuchDomain(
                    f"grantee d{grantee} does not exist",
                    op="gnttab_grant_foreign_access",
                    domid=granter,
                    grantee=grantee,
                )
            if grantee == granter:
                raise GrantError(
                    "a domain cannot grant to itself",
                    status=gt.GNTST_bad_domain,
                    op="gnttab_grant_foreign_access",
                    domid=granter,
                )
            table.p2m.mfn(gfn)  # raises EINVAL for a frame the granter does not own
            if gfn > 0xFFFFFFFF:
                raise GrantError("frame does not fit grant_entry_v1.frame", gfn=gfn)
            if not table.free:
                raise GrantError(
                    "grant table full",
                    status=gt.GNTST_no_space,
                    errno="ENOSPC",
                    op="gnttab_grant_foreign_access",
                    domid=granter,
                )
            gref = table.free.pop()
            entry = table.entry(gref)
            entry.domid = grantee
            entry.frame = gfn
            # Flags last, as Linux does after a wmb(): the entry is valid only once complete.
            entry.flags = gt.GTF_permit_access | (gt.GTF_readonly if readonly else 0)
            return gref

    def end_access(self, granter: int, gref: int) -> None:
        op = "gnttab_end_foreign_access"
        with self._lock:
            table = self._table(granter, op)
            entry = self._entry(table, gref, op, granter)
            if entry.flags & (gt.GTF_reading | gt.GTF_writing):
                raise GrantError(
                    f"gref {gref} is still mapped",
                    status=gt.GNTST_general_error,
                    errno="EBUSY",
                    op=op,
                    domid=granter,
                    gref=gref,
                )
            entry.flags = gt.GTF_invalid
            entry.domid = 0
            entry.frame = 0
            table.free.append(gref)

    def entry(self, granter: int, gref: int) -> tuple[int, int, int]:
        """``(flags, domid, frame)`` of an entry, for inspection and tests."""
        with self._lock:
            e = self._entry(self._table(granter, "query"), gref, "query", granter)
            return int(e.flags), int(e.domid), int(e.frame)

    # -- grantee side -----------------------------------------------------
    def map(self, grantee: int, granter: int, gref: int, readonly: bool) -> GrantMapping:
        op = "gnttab_map_grant_ref"
        with self._lock:
            if grantee not in self._maptrack:
                raise NoSuchDomain(f"d{grantee} does not exist", op=op, domid=grantee)
            table = self._tables.get(granter)
            if table is None:
                raise GrantError(
                    f"granter d{granter} does not exist",
                    status=gt.GNTST_bad_domain,
                    errno="ESRCH",
                    op=op,
                    domid=grantee,
                    granter=granter,
                )
            entry = self._entry(table, gref, op, grantee)
            kind = entry.flags & gt.GTF_type_mask
            if kind != gt.GTF_permit_access or entry.domid != grantee:
                # Xen: "Bad flags or dom; expected dN" -> GNTST_general_error.
                raise GrantError(
                    f"gref {gref} of d{granter} is not granted to d{grantee}",
                    status=gt.GNTST_general_error,
                    errno="EPERM",
                    op=op,
                    domid=grantee,
                    granter=granter,
                    gref=gref,
                )
            if not readonly and entry.flags & gt.GTF_readonly:
                raise GrantError(
                    f"gref {gref} of d{granter} is read-only",
                    status=gt.GNTST_general_error,
                    errno="EPERM",
                    op=op,
                    domid=grantee,
                    granter=granter,
                    gref=gref,
                )
            mfn = table.p2m.mfn(int(entry.frame))
            base = memoryview(self.machine.frame(mfn))
            view = base.toreadonly() if readonly else base
            handle = self._next_handle[grantee]
            self._next_handle[grantee] = handle + 1
            mapping = GrantMapping(handle, granter, gref, readonly, view)
            self._maptrack[grantee][handle] = _MapTrack(table, gref, mfn, mapping, base)
            counts = table.maps.setdefault(gref, [0, 0])
            counts[0 if readonly else 1] += 1
            entry.flags |= gt.GTF_reading if readonly else gt.GTF_writing
            table.pinned_mfn[gref] = mfn
            self._pins[mfn] += 1
            return mapping

    def unmap(self, grantee: int, handle: int) -> GrantMapping:
        with self._lock:
            tracks = self._maptrack.get(grantee)
            track = tracks.get(handle) if tracks is not None else None
            if tracks is None or track is None:
                raise GrantError(
                    f"no mapping with handle {handle}",
                    status=gt.GNTST_bad_handle,
                    op="gnttab_unmap_grant_ref",
                    domid=grantee,
                    handle=handle,
                )
            del tracks[handle]
            self._unmap_locked(track)
            return track.mapping

    def mappings(self, grantee: int) -> list[GrantMapping]:
        with self._lock:
            return [t.mapping for t in self._maptrack.get(grantee, {}).values()]

    def mapped_mfns(self, grantee: int) -> set[int]:
        """Machine frames ``grantee`` currently reaches through live mappings."""
        with self._lock:
            return {t.mfn for t in self._maptrack.get(grantee, {}).values()}

    # -- internals --------------------------------------------------------
    def _unmap_locked(self, track: _MapTrack) -> None:
        table, gref, ro = track.table, track.gref, track.mapping.readonly
        counts = table.maps[gref]
        counts[0 if ro else 1] -= 1
        entry = table.entry(gref)
        if counts[0] == 0:
            entry.flags &= ~gt.GTF_reading
        if counts[1] == 0:
            entry.flags &= ~gt.GTF_writing
        if counts == [0, 0]:
            del table.maps[gref]
            del table.pinned_mfn[gref]
            if table.dead:
                entry.flags = gt.GTF_invalid
        # Revoke the view: any later use of it raises ValueError. A view with live
        # exports (a slice kept by the grantee) cannot be released; those outlive the
        # mapping, a limit of modelling PTEs with Python objects.
        for mv in (track.mapping.view, track.base):
            with contextlib.suppress(BufferError):
                mv.release()
        self._pins[track.mfn] -= 1
        if self._pins[track.mfn] <= 0:
            del self._pins[track.mfn]
            if track.mfn in self._orphans:
                self._orphans.discard(track.mfn)
                self.machine.free([track.mfn])

    def _table(self, domid: int, op: str) -> _Table:
        table = self._tables.get(domid)
        if table is None:
            raise NoSuchDomain(f"d{domid} does not exist", op=op, domid=domid)
        return table

    @staticmethod
    def _entry(table: _Table, gref: int, op: str, caller: int) -> gt.grant_entry_v1:
        if not GNTTAB_NR_RESERVED_ENTRIES <= gref < NR_GRANT_ENTRIES:
            raise GrantError(
                f"gref {gref} out of range",
                status=gt.GNTST_bad_gntref,
                op=op,
                domid=caller,
                gref=gref,
            )
        entry = table.entry(gref)
        if entry.flags & gt.GTF_type_mask == gt.GTF_invalid:
            raise GrantError(
                f"gref {gref} of d{table.domid} is not in use",
                status=gt.GNTST_bad_gntref,
                op=op,
                domid=caller,
                gref=gref,
            )
        return entry
