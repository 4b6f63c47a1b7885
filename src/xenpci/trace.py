"""The machine-wide trace: every cross-domain event, with its time and domain.

Models what ``xentrace``/``xenalyze`` give a Xen engineer (a timestamped record
per hypercall, event-channel send, grant map, DMA and fault), simplified: one
in-process list of frozen records instead of per-CPU trace buffers. Each record
also says which *path* it took (``dom0`` for the control plane, ``direct`` for
the guest's own data plane, ``hypervisor`` for Xen-internal work), so a run
shows the split between control plane and data plane.

Hot data-path kinds (MMIO, port IO) can be put in counter-only mode: they are
counted but not stored, so a benchmark measures the device, not the trace.
The hottest of them (a guest's direct MMIO access) does not even call
:meth:`Trace.record`: it bumps a :class:`Tally`, a plain per-(kind, domain)
integer the trace hands out and sums when counts are read (the way xentrace's
per-CPU buffers are merged by the reader, not by the writer). The hottest
stored kind (``evtchn_send``) goes through a :meth:`Trace.recorder` bound once
to its kind, domain, path and argument names.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from time import perf_counter
from typing import Any

from rich.table import Table

PATHS = frozenset({"dom0", "direct", "hypervisor"})


class Kind(StrEnum):
    """Every kind of trace record, as emitted at its source.

    A ``StrEnum``: a member *is* its string, so JSON lines and comparisons with
    plain strings are unchanged, while the code that reads a trace (the path
    table, the sequence diagram) names kinds it can be checked against.
    """

    # -- hypercalls: the kind is the ``Hypercalls`` method's name
    ALLOC_PAGE = "alloc_page"
    ASSIGN_DEVICE = "assign_device"
    DEASSIGN_DEVICE = "deassign_device"
    DOMCTL_CREATEDOMAIN = "domctl_createdomain"
    DOMCTL_DESTROYDOMAIN = "domctl_destroydomain"
    DOMCTL_PAUSEDOMAIN = "domctl_pausedomain"
    DOMCTL_UNPAUSEDOMAIN = "domctl_unpausedomain"
    EVTCHN_ALLOC_UNBOUND = "evtchn_alloc_unbound"
    EVTCHN_BIND_INTERDOMAIN = "evtchn_bind_interdomain"
    EVTCHN_BIND_PIRQ = "evtchn_bind_pirq"
    EVTCHN_CLOSE = "evtchn_close"
    EVTCHN_MASK = "evtchn_mask"
    EVTCHN_UNMASK = "evtchn_unmask"
    FREE_PAGE = "free_page"
    GNTTAB_END_FOREIGN_ACCESS = "gnttab_end_foreign_access"
    GNTTAB_GRANT_FOREIGN_ACCESS = "gnttab_grant_foreign_access"
    GNTTAB_MAP_GRANT_REF = "gnttab_map_grant_ref"
    GNTTAB_UNMAP_GRANT_REF = "gnttab_unmap_grant_ref"
    IOMEM_PERMISSION = "iomem_permission"
    IOPORT_PERMISSION = "ioport_permission"
    IRQ_PERMISSION = "irq_permission"
    MAP_PIRQ = "map_pirq"
    MEMORY_DECODE = "memory_decode"
    MMIO_MAP = "mmio_map"
    PREPARE_MSIX = "prepare_msix"
    RELEASE_MSIX = "release_msix"
    UNMAP_PIRQ = "unmap_pirq"
    # -- what the model records itself
    #: An event-channel notification (the sender's record).
    EVTCHN_SEND = "evtchn_send"
    #: A guest's direct MMIO read (count-only).
    MMIO_READ = "mmio_read"
    #: A guest's direct MMIO write (count-only).
    MMIO_WRITE = "mmio_write"
    #: A port IO read (count-only).
    IOPORT_READ = "ioport_read"
    #: A port IO write (count-only).
    IOPORT_WRITE = "ioport_write"
    #: An MMIO access Xen emulated (MSI-X table/PBA).
    MMIO_MEDIATED = "mmio_mediated"
    #: An MMIO access to a BAR whose decode is off.
    MMIO_UNMAPPED = "mmio_unmapped"
    #: A BAR mapping torn down.
    MMIO_UNMAP = "mmio_unmap"
    #: A device read guest memory through the IOMMU.
    DMA_READ = "dma_read"
    #: A device wrote guest memory through the IOMMU.
    DMA_WRITE = "dma_write"
    #: The IOMMU refused a DMA.
    DMA_FAULT = "dma_fault"
    #: A device interrupt delivered as an event.
    PIRQ = "pirq"
    #: A destroyed guest's devices went back to dom0.
    DEVICES_RETURNED = "devices_returned"
    #: A handler raised on a vCPU.
    VCPU_EXCEPTION = "vcpu_exception"
    #: One XenStore request and its result.
    XENSTORE_REQUEST = "xenstore_request"
    #: A toolstack step (libxl).
    TOOLSTACK = "toolstack"
    #: One pcifront op served by pciback.
    PCI_OP = "pci_op"
    #: Pcifront scanned its root buses.
    PCIFRONT_SCAN = "pcifront_scan"
    # -- the other two IO models (issue 12): emulation (ioreq) and PV block
    #: dom0 mapped a guest frame it was not granted (the device model's privilege).
    FOREIGN_MAP = "foreign_map"
    #: A guest access trapped and forwarded to the device model as an ioreq.
    IOREQ = "ioreq"
    #: A write posted on the buffered ioreq page.
    BUF_IOREQ = "buf_ioreq"
    #: An ioreq the hypervisor refused (bad size or direction).
    IOREQ_FAILED = "ioreq_failed"
    #: The device model served one ioreq.
    DM_IOREQ = "dm_ioreq"
    #: The device model refused an ioreq.
    DM_IOREQ_REFUSED = "dm_ioreq_refused"
    #: The device model injected an MSI into the HVM guest.
    DM_INJECT_MSI = "dm_inject_msi"
    #: blkback took one blkif request off a ring.
    BLKIF_REQUEST = "blkif_request"
    #: blkback answered BLKIF_RSP_ERROR.
    BLKIF_ERROR = "blkif_error"
    #: blkback halted a ring whose indices made no sense.
    BLKIF_RING_HALTED = "blkif_ring_halted"


#: Kinds counted but not stored unless asked (one record per register access would
#: dwarf everything else and slow the data path).
DEFAULT_COUNT_ONLY = frozenset(
    {Kind.MMIO_READ, Kind.MMIO_WRITE, Kind.IOPORT_READ, Kind.IOPORT_WRITE}
)


#: A recorded string -> its :class:`Kind` (a kind not listed stays a plain string).
_KINDS: dict[str, str] = {k.value: k for k in Kind}


def _jsonable(value: Any) -> Any:
    """Arguments as JSON: bytes as hex, other unknown objects by ``str``."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One record: ``t`` seconds since the trace started, ``seq`` its order.

    ``kind`` is a :class:`Kind` for every kind the model emits (a plain string
    only for one recorded by code that has not declared it).
    """

    t: float
    seq: int
    kind: str
    domid: int
    path: str = "hypervisor"
    args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kind:
            raise ValueError("trace event kind must be non-empty")
        if self.path not in PATHS:
            raise ValueError(f"trace path {self.path!r} not one of {sorted(PATHS)}")
        if self.seq < 0 or self.t < 0:
            raise ValueError("trace time and sequence are non-negative")

    def to_json(self) -> dict[str, Any]:
        return {
            "t": round(self.t, 9),
            "seq": self.seq,
            "kind": self.kind,
            "domid": self.domid,
            "path": self.path,
            "args": _jsonable(dict(self.args)),
        }


#: A stored record from ``record``: perf_counter time, seq, kind, domid, path, arguments.
_Record = tuple[float, int, str, int, str, dict[str, Any]]
#: One from a ``recorder``: time, seq, its (kind, domid, path, names), the values.
_Fields = tuple[float, int, tuple[str, int, str, tuple[str, ...]], tuple[Any, ...]]
_Raw = _Record | _Fields


def _unpack(r: _Raw) -> _Record:
    if len(r) == 6:
        return r
    t, seq, (kind, domid, path, names), values = r
    return t, seq, kind, domid, path, dict(zip(names, values, strict=True))


def _ignore(*_values: Any) -> None:
    return None


class Tally:
    """One count-only kind for one domain, bumped with ``tally.n += 1`` and no lock.

    The owner domain's threads are the only writers. In CPython (3.11, with the
    GIL) ``obj.n += 1`` on an int runs as one uninterrupted sequence of bytecodes
    (no eval-breaker check between the load and the store), so even two threads
    of one domain lose no increment; a test hammers it from several threads.
    """

    __slots__ = ("base", "domid", "kind", "n")

    def __init__(self, kind: str, domid: int) -> None:
        self.kind = kind
        self.domid = domid
        self.n = 0
        #: ``n`` at the last ``Trace.clear``: clearing never writes ``n`` (its writers
        #: hold no lock), it moves the base instead.
        self.base = 0


class Trace:
    """A thread-safe, append-only trace.

    ``enabled=False`` makes ``record`` a no-op (not even counted);
    ``count_only`` kinds are counted but not stored; ``max_events`` bounds memory
    (oldest records are dropped, counts stay exact). All three are fixed at
    construction (handed-out tallies rely on them).
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        count_only: Iterable[str] = DEFAULT_COUNT_ONLY,
        max_events: int | None = None,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        if max_events is not None and max_events <= 0:
            raise ValueError("max_events must be positive")
        self._enabled = enabled
        self._count_only = frozenset(count_only)
        self.max_events = max_events
        self._lock = threading.Lock()
        self._tallies: dict[tuple[str, int], Tally] = {}
        self._raw: deque[_Raw] = deque(maxlen=max_events)
        self._counts: dict[tuple[str, int], int] = {}
        #: Stored records per (kind, path), kept as they are stored (under the lock):
        #: ``record``'s in this dict, each recorder's in its own one-slot counter
        #: (``_recorder_counts``), so :meth:`path_counts` reads totals, not records.
        self._paths: dict[tuple[str, str], int] = {}
        self._recorder_counts: list[tuple[tuple[str, str], list[int]]] = []
        self._seq = itertools.count()  # ``next`` under the lock: seq follows time
        #: Where record times come from: ``perf_counter``, or the machine's virtual
        #: clock in deterministic mode (then two runs give byte-identical traces).
        self._now = clock
        self._t0 = clock()

    @property
    def enabled(self) -> bool:
        return self._enabled

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Take times from ``clock`` from now on (a machine switching to its virtual
        clock right after building its hypervisor); time 0 is its present reading."""
        with self._lock:
            self._now = clock
            self._t0 = clock()

    @property
    def count_only(self) -> frozenset[str]:
        return self._count_only

    def tally(self, kind: str, domid: int) -> Tally | None:
        """The counter a hot path bumps instead of calling :meth:`record`.

        ``None`` when ``kind`` is stored (not count-only): the caller must
        ``record`` it. With the trace disabled, a tally nobody reads (so the
        caller's fast path stays the same and still counts nothing).
        """
        if not self._enabled:
            return Tally(kind, domid)
        if kind not in self._count_only:
            return None
        with self._lock:
            tally = self._tallies.get((kind, domid))
            if tally is None:
                tally = self._tallies[kind, domid] = Tally(kind, domid)
            return tally

    def record(self, kind: str, domid: int, path: str = "hypervisor", /, **args: Any) -> None:
        """Record one event (or just count it, for count-only kinds).

        Cheap by design (it sits on the event-channel path): one lock and a
        tuple appended. A stored record is not also counted here: counts are
        the stored records plus ``_counts`` (count-only kinds and records that
        ``max_events`` pushed out). Timestamps are raw readings of the clock;
        the frozen ``TraceEvent`` objects, relative times included, are built
        when read.
        """
        if not self._enabled:
            return
        if path not in PATHS:
            raise ValueError(f"trace path {path!r} not one of {sorted(PATHS)}")
        lock = self._lock
        lock.acquire()  # explicit acquire/release: cheaper than ``with`` on this path
        try:
            if kind in self._count_only:
                key = (kind, domid)
                self._counts[key] = self._counts.get(key, 0) + 1
            else:
                raw = self._raw
                paths = self._paths
                if len(raw) == self.max_events:
                    _, _, k, d, p, _ = _unpack(raw.popleft())  # keep its count exact
                    self._counts[(k, d)] = self._counts.get((k, d), 0) + 1
                    # No longer stored (a bounded trace has no recorders: all its
                    # records come through here).
                    paths[(k, p)] = paths.get((k, p), 0) - 1
                # Time taken under the lock so that time order and seq order agree.
                raw.append((self._now(), next(self._seq), kind, domid, path, args))
                stored_as = (kind, path)
                paths[stored_as] = paths.get(stored_as, 0) + 1
        finally:
            lock.release()

    def recorder(
        self, kind: str, domid: int, path: str, names: tuple[str, ...]
    ) -> Callable[[tuple[Any, ...]], None]:
        """A ``record`` pre-bound to one kind, domain, path and argument names.

        For the hottest callers (``evtchn_send``): everything that does not change
        between calls is checked once here and kept in one preallocated tuple; a
        call passes its values as one tuple (no keyword dict, no ``*args``
        packing) and the stored record is (time, seq, that tuple, the values).
        Names and values are paired when the record is read.
        """
        if not kind:
            raise ValueError("trace event kind must be non-empty")
        if path not in PATHS:
            raise ValueError(f"trace path {path!r} not one of {sorted(PATHS)}")
        if not self._enabled:
            return _ignore
        lock, raw, seq, counts = self._lock, self._raw, self._seq, self._counts
        key = (kind, domid)
        if kind in self._count_only:

            def count(_values: tuple[Any, ...]) -> None:
                lock.acquire()  # as in ``record``: cheaper than ``with`` on this path
                try:
                    counts[key] = counts.get(key, 0) + 1
                finally:
                    lock.release()

            return count
        if self.max_events is not None:

            def bounded(values: tuple[Any, ...]) -> None:
                self.record(kind, domid, path, **dict(zip(names, values, strict=True)))

            return bounded
        static = (kind, domid, path, names)
        stored = [0]  # this recorder's stored records (see ``_paths``)
        with lock:
            self._recorder_counts.append(((kind, path), stored))

        def rec(values: tuple[Any, ...]) -> None:
            lock.acquire()  # as in ``record``: time taken under the lock, with its seq
            try:
                raw.append((self._now(), next(seq), static, values))
                stored[0] += 1
            finally:
                lock.release()

        return rec

    def _unstored_counts(self) -> Counter[tuple[str, int]]:
        """Per (kind, domid), what is counted but not stored: count-only kinds (from
        ``_counts`` and the tallies) and records ``max_events`` pushed out (caller
        holds the lock)."""
        out = Counter(self._counts)
        for key, tally in self._tallies.items():
            n = tally.n - tally.base  # one read of ``n``: it may move under us
            if n:
                out[key] += n
        return out

    def _all_counts(self) -> Counter[tuple[str, int]]:
        """Per (kind, domid): the unstored counts and the stored records (caller
        holds the lock)."""
        out = self._unstored_counts()
        out.update((r[2], r[3]) if len(r) == 6 else (r[2][0], r[2][1]) for r in self._raw)
        return out

    @property
    def events(self) -> list[TraceEvent]:
        """A snapshot of the stored records, in order."""
        with self._lock:
            raw = list(self._raw)
        t0, kinds = self._t0, _KINDS
        return [
            TraceEvent(t - t0, seq, kinds.get(k, k), d, p, a)
            for t, seq, k, d, p, a in map(_unpack, raw)
        ]

    def count(self, kind: str | None = None, domid: int | None = None) -> int:
        """How many events (stored or count-only) match ``kind`` and ``domid``."""
        with self._lock:
            return sum(
                n
                for (k, d), n in self._all_counts().items()
                if (kind is None or k == kind) and (domid is None or d == domid)
            )

    def counts_by_domain(self) -> dict[tuple[str, int], int]:
        """Totals per (kind, domid), in one pass (many :meth:`count` calls cost one each)."""
        with self._lock:
            return dict(self._all_counts())

    def count_only_counts(self) -> Counter[tuple[str, int]]:
        """Per (kind, domid), the counts of the count-only kinds (never stored, so
        read without a pass over the stored records)."""
        with self._lock:
            unstored = self._unstored_counts()
        only = self._count_only
        return Counter({key: n for key, n in unstored.items() if key[0] in only})

    def path_counts(self) -> Counter[tuple[str, str]]:
        """Stored records per (kind, path): the totals kept as records are stored (no
        pass over the records: the demo's path table asks this of every run)."""
        with self._lock:
            out = Counter({key: n for key, n in self._paths.items() if n})
            for key, stored in self._recorder_counts:
                if stored[0]:
                    out[key] += stored[0]
        return out

    def counts(self) -> dict[str, int]:
        """Totals per kind."""
        out: Counter[str] = Counter()
        with self._lock:
            for (k, _d), n in self._all_counts().items():
                out[k] += n
        return dict(sorted(out.items()))

    def clear(self) -> None:
        with self._lock:
            self._raw.clear()
            self._counts.clear()
            self._paths.clear()
            for _key, stored in self._recorder_counts:
                stored[0] = 0
            for tally in self._tallies.values():
                tally.base = tally.n

    def to_jsonl(self, path: str | Path) -> int:
        """Write the stored records as JSON lines; return how many were written."""
        events = self.events
        with Path(path).open("w", encoding="utf-8") as f:
            for ev in events:
                f.write(json.dumps(ev.to_json(), sort_keys=True) + "\n")
        return len(events)

    def render(self, *, kinds: Iterable[str] | None = None, limit: int | None = None) -> Table:
        """A rich table of the stored records (optionally filtered, last ``limit``)."""
        wanted = frozenset(kinds) if kinds is not None else None
        events = [e for e in self.events if wanted is None or e.kind in wanted]
        if limit is not None:
            events = events[-limit:] if limit > 0 else []
        table = Table(title="xenpci trace")
        for col, justify in (("seq", "right"), ("t (ms)", "right"), ("dom", "right")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        table.add_column("path")
        table.add_column("kind")
        table.add_column("args")
        for e in events:
            args = " ".join(f"{k}={_jsonable(v)}" for k, v in e.args.items())
            table.add_row(str(e.seq), f"{e.t * 1e3:.3f}", f"d{e.domid}", e.path, e.kind, args)
        return table
