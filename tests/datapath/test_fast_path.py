"""The direct MMIO fast path (cached checks stamped by the TLB-flush clock) against a model.

Truth: an explicit model of what the guest may reach (its granted frames, the
decode state, whether a device sits on the bus, whether the mapping is still
mapped) written here from the rules of ``hypercalls``' docstring, and the
device's own register bytes. Any change between two accesses must be seen by
the very next access, and the trace's counts must equal the model's tallies.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import OS_EDGE_TIMEOUT
from xenpci.hv import PAGE_SHIFT, PAGE_SIZE, Hypervisor, MmioDenied
from xenpci.trace import Trace

pytestmark = pytest.mark.timeout(120)
BASE = 0xD000_0000
FIRST = BASE >> PAGE_SHIFT
PAGES = 2


class Flat:
    """A register window backed by bytes (the device side of the truth)."""

    def __init__(self, size: int) -> None:
        self.mem = bytearray(size)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.mem[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.mem[offset : offset + size] = value.to_bytes(size, "little")


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(0, PAGES * PAGE_SIZE // 4 - 1)),
        st.tuples(st.just("write"), st.integers(0, PAGES * PAGE_SIZE // 4 - 1)),
        st.tuples(st.sampled_from(["grant", "revoke"]), st.integers(0, PAGES - 1)),
        st.tuples(st.sampled_from(["decode_off", "decode_on", "unplug", "plug"]), st.just(0)),
        st.tuples(st.just("unmap"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_every_access_sees_the_latest_state(ops: list[tuple[str, int]]) -> None:
    with Hypervisor(ram_frames=2048, dom0_memory_kib=256) as hv:
        dev = Flat(PAGES * PAGE_SIZE)
        hv.iobus.register_mmio(BASE, PAGES * PAGE_SIZE, dev)
        guest = hv.create_domain("g", 256)
        d0, g = hv.dom0.hypercalls, guest.hypercalls
        d0.iomem_permission(guest.domid, FIRST, PAGES, True)
        m = g.mmio_map(FIRST, PAGES)
        granted, decoded, plugged, mapped = set(range(PAGES)), True, True, True
        shadow = bytearray(PAGES * PAGE_SIZE)  # what the device must hold
        reads = writes = unmapped = 0
        for step, (op, arg) in enumerate(ops):
            if op in ("read", "write"):
                off, value = arg * 4, step * 0x01010101 & 0xFFFF_FFFF
                if not mapped or off >> PAGE_SHIFT not in granted:
                    with pytest.raises(MmioDenied):
                        m.read(off, 4) if op == "read" else m.write(off, 4, value)
                elif not decoded:
                    unmapped += 1
                    if op == "read":
                        assert m.read(off, 4) == 0xFFFF_FFFF
                    else:
                        m.write(off, 4, value)  # dropped
                elif op == "read":
                    reads += 1
                    want = int.from_bytes(shadow[off : off + 4], "little") if plugged else None
                    assert m.read(off, 4) == (0xFFFF_FFFF if want is None else want)
                else:
                    writes += 1
                    m.write(off, 4, value)
                    if plugged:
                        shadow[off : off + 4] = value.to_bytes(4, "little")
            elif op in ("grant", "revoke"):
                d0.iomem_permission(guest.domid, FIRST + arg, 1, op == "grant")
                (granted.add if op == "grant" else granted.discard)(arg)
            elif op in ("decode_off", "decode_on"):
                if len(granted) < PAGES:
                    continue  # dom0 may only toggle decode over granted frames
                d0.memory_decode(guest.domid, FIRST, PAGES, op == "decode_on")
                decoded = op == "decode_on"
            elif op == "unplug" and plugged:
                hv.iobus.unregister_mmio(BASE)
                plugged = False
            elif op == "plug" and not plugged:
                hv.iobus.register_mmio(BASE, PAGES * PAGE_SIZE, dev)
                plugged = True
            elif op == "unmap":
                m.unmap()
                mapped = False
            assert bytes(dev.mem) == bytes(shadow)
        assert hv.trace.count("mmio_read", guest.domid) == reads
        assert hv.trace.count("mmio_write", guest.domid) == writes
        assert hv.trace.count("mmio_unmapped", guest.domid) == unmapped
        assert hv.trace.count("mmio_read", 0) == 0  # nothing charged to dom0


@pytest.fixture
def two_guests() -> Iterator[tuple[Hypervisor, list[int]]]:
    with Hypervisor(ram_frames=2048, dom0_memory_kib=256) as hv:
        hv.iobus.register_mmio(BASE, PAGES * PAGE_SIZE, Flat(PAGES * PAGE_SIZE))
        domids = []
        for name in ("a", "b"):
            dom = hv.create_domain(name, 256)
            hv.dom0.hypercalls.iomem_permission(dom.domid, FIRST, PAGES, True)
            domids.append(dom.domid)
        yield hv, domids


def test_counts_are_exact_under_concurrent_access(
    two_guests: tuple[Hypervisor, list[int]],
) -> None:
    """Three threads per domain hammer one mapping each (the lock-free tallies), while
    another thread reads the counts; the totals are exact and per domain.

    Threaded on purpose: the property is about OS threads racing on the tallies, so
    the joins are bounded by the suite's OS-edge bound."""
    hv, domids = two_guests
    n = 20_000
    maps = {d: hv.domain(d).hypercalls.mmio_map(FIRST, PAGES) for d in domids}
    stop = threading.Event()

    def hammer(domid: int) -> None:
        m = maps[domid]
        for i in range(n):
            m.write(0x10, 4, i)
            m.read(0x10, 4)

    overshoot: list[int] = []  # a reader thread's failure, seen by the test thread

    def reader() -> None:
        while not stop.is_set():
            if (seen := hv.trace.count("mmio_read")) > 6 * n:
                overshoot.append(seen)

    threads = [threading.Thread(target=hammer, args=(d,)) for d in domids for _ in range(3)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(OS_EDGE_TIMEOUT)
    stop.set()
    watcher.join(OS_EDGE_TIMEOUT)
    assert not any(t.is_alive() for t in (*threads, watcher))
    assert overshoot == []
    for d in domids:
        assert hv.trace.count("mmio_read", d) == 3 * n
        assert hv.trace.count("mmio_write", d) == 3 * n
    assert hv.trace.counts()["mmio_read"] == 6 * n


def test_clear_and_stored_and_disabled_traces() -> None:
    """clear() starts the tallies from zero; a trace that stores MMIO gets one record
    per access through the same mapping; a disabled trace counts nothing."""
    for trace, stored in ((Trace(), False), (Trace(count_only=()), True)):
        with Hypervisor(
            ram_frames=1024, dom0_memory_kib=256, trace=trace, deterministic=True
        ) as hv:
            hv.iobus.register_mmio(BASE, PAGE_SIZE, Flat(PAGE_SIZE))
            m = hv.dom0.hypercalls.mmio_map(FIRST, 1)
            m.write(8, 2, 0xABCD)
            assert m.read(8, 2) == 0xABCD
            assert trace.count("mmio_read", 0) == trace.count("mmio_write", 0) == 1
            kinds = [e.kind for e in trace.events if e.kind.startswith("mmio_")]
            assert kinds == (["mmio_map", "mmio_write", "mmio_read"] if stored else ["mmio_map"])
            trace.clear()
            assert trace.count("mmio_read") == 0
            m.read(8, 2)
            assert trace.count("mmio_read", 0) == 1
    off = Trace(enabled=False)
    with Hypervisor(ram_frames=1024, dom0_memory_kib=256, trace=off, deterministic=True) as hv:
        hv.iobus.register_mmio(BASE, PAGE_SIZE, Flat(PAGE_SIZE))
        m = hv.dom0.hypercalls.mmio_map(FIRST, 1)
        m.write(0, 4, 1)
        assert m.read(0, 4) == 1 and off.count() == 0 and off.counts() == {}


def test_hostile_values_and_offsets_still_refused(
    two_guests: tuple[Hypervisor, list[int]],
) -> None:
    """The fast path keeps the bounds, size and value checks: a bad access gets the same
    precise error as before and reaches nothing."""
    hv, domids = two_guests
    m = hv.domain(domids[0]).hypercalls.mmio_map(FIRST, 1)
    m.read(0, 4)  # arm the fast path
    for bad in ((PAGE_SIZE - 2, 4, 0), (-4, 4, 0), (0, 3, 0), (0, 4, 1 << 32), (0, 1, -1)):
        with pytest.raises(Exception) as e:
            m.write(*bad)
        assert getattr(e.value, "errno", None) == "EINVAL", bad
    with pytest.raises(MmioDenied):
        m.read(PAGE_SIZE, 1)
    assert hv.trace.count("mmio_write") == 0 and hv.trace.count("mmio_read") == 1
