"""Domains, vCPU threads and per-domain memory."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

import pytest

from tests.hv.conftest import vcpu_threads
from xenpci.hv import (
    DOMID_FIRST_RESERVED,
    PAGE_SIZE,
    DomainDead,
    DomainExists,
    Hypervisor,
    InvalidArgument,
    NoSuchDomain,
    OutOfMemory,
)
from xenpci.hv.memory import P2M, RAM_BASE_MFN, MachineMemory

pytestmark = pytest.mark.timeout(30)


def test_dom0_is_privileged_and_guests_are_not(hv: Hypervisor) -> None:
    g = hv.create_domain("g", 64)
    assert hv.dom0.domid == 0 and hv.dom0.privileged
    assert g.domid == 1 and not g.privileged and g.nr_pages == 16
    assert [d.domid for d in hv.domains()] == [0, 1]
    assert hv.domain(1) is g


def test_create_domain_bad_arguments_change_nothing(hv: Hypervisor) -> None:
    hv.create_domain("g", 64, domid=5)
    allocated = hv.machine.allocated
    with pytest.raises(DomainExists) as e:
        hv.create_domain("h", 64, domid=5)
    assert e.value.errno == "EEXIST"
    with pytest.raises(DomainExists):
        hv.create_domain("g", 64)
    for bad in (0, 6, -4):
        with pytest.raises(InvalidArgument):
            hv.create_domain("h", bad)
    with pytest.raises(InvalidArgument):
        hv.create_domain("h", 64, domid=0x7FF0)
    with pytest.raises(OutOfMemory) as oom:
        hv.create_domain("huge", 4 * 10**7)
    assert oom.value.errno == "ENOMEM"
    assert hv.machine.allocated == allocated
    assert [d.domid for d in hv.domains()] == [0, 5]


def test_unknown_domid(hv: Hypervisor) -> None:
    with pytest.raises(NoSuchDomain) as e:
        hv.domain(42)
    assert e.value.errno == "ESRCH"
    with pytest.raises(NoSuchDomain):
        hv.destroy_domain(42)
    with pytest.raises(InvalidArgument):
        hv.destroy_domain(0)


def test_memory_is_private_and_spans_pages(hv: Hypervisor) -> None:
    a = hv.create_domain("a", 64)
    b = hv.create_domain("b", 64)
    data = bytes(range(256)) * 20  # 5120 bytes: crosses a page boundary
    a.hypercalls.write(PAGE_SIZE - 100, data)
    assert a.hypercalls.read(PAGE_SIZE - 100, len(data)) == data
    assert b.hypercalls.read(PAGE_SIZE - 100, len(data)) == bytes(len(data))
    assert set(a.p2m.mfns).isdisjoint(b.p2m.mfns)


def test_memory_outside_the_domain_is_einval_and_writes_nothing(hv: Hypervisor) -> None:
    g = hv.create_domain("g", 8)  # two pages
    before = g.hypercalls.read(0, 2 * PAGE_SIZE)
    with pytest.raises(InvalidArgument) as e:
        g.hypercalls.write(2 * PAGE_SIZE - 2, b"spill")
    assert e.value.errno == "EINVAL"
    assert g.hypercalls.read(0, 2 * PAGE_SIZE) == before
    with pytest.raises(InvalidArgument):
        g.hypercalls.page(2)
    with pytest.raises(InvalidArgument):
        g.hypercalls.read(-1, 4)


def test_page_is_a_live_view(hv: Hypervisor) -> None:
    g = hv.create_domain("g", 16)  # 4 pages
    view = g.hypercalls.page(3)
    g.hypercalls.write(3 * PAGE_SIZE + 10, b"xyz")
    assert bytes(view[10:13]) == b"xyz"
    view[0:2] = b"hi"
    assert g.hypercalls.read(3 * PAGE_SIZE, 2) == b"hi"


def test_alloc_page_hands_out_distinct_zeroed_frames(hv: Hypervisor) -> None:
    g = hv.create_domain("g", 64)  # 16 pages
    g.hypercalls.write(0, b"\xff" * (4 * PAGE_SIZE))
    got = {g.hypercalls.alloc_page() for _ in range(4)}
    assert len(got) == 4
    for gfn in got:
        assert g.hypercalls.read(gfn * PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)
    while True:
        try:
            got.add(g.hypercalls.alloc_page())
        except OutOfMemory:
            break
    assert got == set(range(16))


def test_frames_of_a_destroyed_domain_are_scrubbed_before_reuse(hv: Hypervisor) -> None:
    a = hv.create_domain("a", 16)
    a.hypercalls.write(0, b"secret" * 1000)
    mfns = set(a.p2m.mfns)
    hv.destroy_domain(a.domid)
    b = hv.create_domain("b", 16)
    assert mfns & set(b.p2m.mfns), "freed frames are reused"
    assert b.hypercalls.read(0, 4 * PAGE_SIZE) == bytes(4 * PAGE_SIZE)


def test_run_and_call_execute_on_the_domains_own_thread(hv: Hypervisor) -> None:
    g = hv.create_domain("g", 16)
    name = g.call(lambda: threading.current_thread().name)
    assert name == "d1v0-g"
    assert g.run(lambda x: x * 2, 21).result(5) == 42
    # call from the domain's own thread runs inline instead of deadlocking.
    assert g.call(lambda: g.call(lambda: 7)) == 7
    with pytest.raises(ZeroDivisionError):
        g.call(lambda: 1 // 0)
    assert g.call(lambda: "still alive") == "still alive"


def test_destroyed_domain_rejects_work_and_hypercalls(hv: Hypervisor) -> None:
    g = hv.create_domain("g", 16)
    hc = g.hypercalls
    hv.destroy_domain(g.domid)
    with pytest.raises(DomainDead):
        g.run(lambda: None)
    with pytest.raises(NoSuchDomain):
        hc.read(0, 1)
    with pytest.raises(NoSuchDomain):
        hc.evtchn_alloc_unbound(0)


def test_shutdown_stops_every_thread() -> None:
    before = set(vcpu_threads())
    hv = Hypervisor(ram_frames=1024, dom0_memory_kib=64)
    for i in range(5):
        hv.create_domain(f"g{i}", 16)
    assert len(set(vcpu_threads()) - before) == 6
    hv.shutdown()
    hv.shutdown()  # idempotent
    assert set(vcpu_threads()) <= before
    with pytest.raises(InvalidArgument):
        hv._create_domain("late", 16, None)


@pytest.mark.parametrize("touched", [1, 6])
def test_reallocated_frames_are_scrubbed_whichever_set_is_smaller(touched: int) -> None:
    """Allocation scrubs by walking the touched frames or the allocated ones, whichever
    is fewer: both ways, a reused frame comes back zeroed and untouched ones stay free."""
    mem = MachineMemory(8)
    mfns = mem.allocate(8, owner=1)
    for mfn in mfns[:touched]:
        mem.frame(mfn)[:6] = b"secret"
    mem.free(mfns[:3])
    again = mem.allocate(3, owner=2)  # 3 frames: fewer than 6 touched, more than 1
    assert sorted(again) == sorted(mfns[:3])
    assert all(bytes(mem.frame(m)) == bytes(PAGE_SIZE) for m in again)
    assert all(mem.owner(m) == 2 for m in again)
    assert bytes(mem.frame(mfns[touched - 1]))[:6] == (b"secret" if touched > 3 else b"\0" * 6)


def test_an_allocation_of_reused_and_fresh_frames_scrubs_the_reused_ones() -> None:
    """Allocation scrubs only the reused frames: a fresh frame was never allocated, so
    it cannot have been touched (``frame`` refuses it), which is what lets it skip them."""
    mem = MachineMemory(8)
    with pytest.raises(InvalidArgument):
        mem.frame(RAM_BASE_MFN + 7)  # never allocated: no bytes can exist for it
    first = mem.allocate(4, owner=1)
    for mfn in first:
        mem.frame(mfn)[:6] = b"secret"
    mem.free(first[2:])
    mixed = mem.allocate(4, owner=2)
    assert mixed[:2] == [first[3], first[2]]  # reused first, most recently freed first
    assert mixed[2:] == [RAM_BASE_MFN + 4, RAM_BASE_MFN + 5]  # then fresh ones
    assert all(bytes(mem.frame(m)) == bytes(PAGE_SIZE) for m in mixed)
    assert all(mem.owner(m) == 2 for m in mixed)
    assert bytes(mem.frame(first[0]))[:6] == b"secret"  # still owned by 1: untouched


def test_domids_are_not_reused_at_once_and_wrap_to_1(hv: Hypervisor) -> None:
    """``domid_alloc``: the first free id after the last one given, wrapping to 1."""
    a = hv.create_domain("a", 16)
    hv.destroy_domain(a.domid)
    b = hv.create_domain("b", 16)
    assert b.domid == a.domid + 1  # the freed id is not given again at once
    hv._domid_last = DOMID_FIRST_RESERVED - 1  # as after 32751 creations
    c = hv.create_domain("c", 16)
    assert c.domid == a.domid == 1  # wrapped; 1 is free again, b's id is taken
    d = hv.create_domain("d", 16)
    assert d.domid == b.domid + 1


class _DictMemory:
    """The reference: one dict entry per owned frame, freed frames on a stack."""

    def __init__(self, nr_frames: int) -> None:
        self.nr_frames, self.next, self.freed = nr_frames, RAM_BASE_MFN, []
        self.owner: dict[int, int] = {}

    def allocate(self, count: int, owner: int) -> list[int]:
        out = [self.freed.pop() for _ in range(min(count, len(self.freed)))]
        fresh = count - len(out)
        out += range(self.next, self.next + fresh)
        self.next += fresh
        self.owner.update(dict.fromkeys(out, owner))
        return out

    def free(self, mfns: list[int], keep: set[int]) -> None:
        for mfn in mfns:
            if mfn not in keep and self.owner.pop(mfn, None) is not None:
                self.freed.append(mfn)


@pytest.mark.parametrize("seed", range(6))
def test_the_owner_table_matches_a_dict_per_frame(seed: int) -> None:
    """Allocations and frees (whole runs, runs with kept frames, scattered lists, frames
    already free, duplicates, non-RAM mfns) leave the same owners, count and reuse order
    as a dict with one entry per frame."""
    rnd = random.Random(seed)
    mem, ref = MachineMemory(64), _DictMemory(64)
    held: list[Sequence[int]] = []
    for _ in range(60):
        free_now = len(ref.freed) + RAM_BASE_MFN + 64 - ref.next
        if held and (rnd.random() < 0.5 or free_now == 0):
            mfns = held.pop(rnd.randrange(len(held)))
            shape = rnd.randrange(4)
            if shape == 1:  # a scattered list, a duplicate, a free or non-RAM frame
                mfns = rnd.sample(mfns, len(mfns)) + list(mfns[:1]) + [RAM_BASE_MFN - 1, 0]
            keep = set(rnd.sample(mfns, min(len(mfns), rnd.randrange(3)))) if shape else set()
            mem.free(mfns, keep=keep)
            ref.free(mfns, keep)
        else:
            count, owner = rnd.randint(0, free_now), rnd.randrange(5)
            got = mem.allocate(count, owner)  # a range when all fresh: freed as such
            assert list(got) == ref.allocate(count, owner)
            held.append(got)
        assert mem.allocated == len(ref.owner)
        for mfn in range(RAM_BASE_MFN - 1, RAM_BASE_MFN + 65):
            assert mem.owner(mfn) == ref.owner.get(mfn)


def test_freeing_keeps_the_pinned_frames_owned_and_touchable() -> None:
    mem = MachineMemory(8)
    mfns = mem.allocate(8, owner=3)
    mem.free(mfns, keep={mfns[2], mfns[5]})
    assert [mem.owner(m) for m in mfns] == [None, None, 3, None, None, 3, None, None]
    assert mem.allocated == 2
    mem.frame(mfns[2])[:1] = b"x"  # still RAM of its (dying) owner
    with pytest.raises(InvalidArgument):
        mem.frame(mfns[0])
    # Reuse: the most recently freed first, as the reference stack does.
    assert mem.allocate(6, owner=4) == [mfns[7], mfns[6], mfns[4], mfns[3], mfns[1], mfns[0]]
    with pytest.raises(InvalidArgument):
        mem.allocate(1, owner=-1)


def test_alloc_page_gives_gfns_in_the_order_of_a_stack_of_all_free_gfns() -> None:
    """The domain's page allocator hands out the lowest never-used gfn, a freed one
    first: the order of a stack holding every free gfn, lowest on top."""
    mem = MachineMemory(16)
    p2m = P2M(mem, mem.allocate(8, owner=1))
    stack = list(range(7, -1, -1))  # the reference
    rnd = random.Random(3)
    held: list[int] = []
    for _ in range(200):
        if held and (rnd.random() < 0.45 or not stack):
            gfn = held.pop(rnd.randrange(len(held)))
            p2m.free_page(gfn)
            stack.append(gfn)
        elif stack:
            gfn = p2m.alloc_page()
            assert gfn == stack.pop()
            held.append(gfn)
    while stack:
        assert p2m.alloc_page() == stack.pop()
    with pytest.raises(OutOfMemory):
        p2m.alloc_page()


def _same(mem: MachineMemory, ref: _DictMemory) -> None:
    assert mem.allocated == len(ref.owner)
    for mfn in range(RAM_BASE_MFN - 1, RAM_BASE_MFN + 65):
        assert mem.owner(mfn) == ref.owner.get(mfn)


@pytest.mark.parametrize("already_free", [[], [0], [39], [5, 30]])
def test_a_fresh_run_is_a_range_freed_as_one_unless_part_of_it_is_free(
    already_free: list[int],
) -> None:
    """A fresh allocation comes back as one ``range`` (no int per frame). Freeing it
    takes the one-run path only when every frame is still owned: with some already
    free (first, last, middle ones) the frames are freed one by one, as the
    dict-per-frame reference does (same owners, count and reuse order)."""
    mem, ref = MachineMemory(64), _DictMemory(64)
    run = mem.allocate(40, owner=2)
    assert type(run) is range
    assert list(run) == ref.allocate(40, 2)
    part = [run[i] for i in already_free]
    mem.free(part)
    ref.free(part, set())
    mem.free(run, keep={run[1]})
    ref.free(list(run), {run[1]})
    _same(mem, ref)
    assert list(mem.allocate(24, owner=3)) == ref.allocate(24, 3)  # reuse order too
    _same(mem, ref)


def test_a_run_of_the_largest_owner_is_still_one_owned_run() -> None:
    """The largest owner (0x7FFFFFFF: every byte 0xFF but the sign byte) is owned, not
    free: its run is freed whole like any other."""
    mem, ref = MachineMemory(8), _DictMemory(8)
    run = mem.allocate(8, owner=0x7FFFFFFF)
    assert list(run) == ref.allocate(8, 0x7FFFFFFF)
    mem.free(run)
    ref.free(list(run), set())
    _same(mem, ref)
