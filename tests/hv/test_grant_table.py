"""Grant tables v1: the flags in the real grant_entry_v1, live views, errors with GNTST codes."""

from __future__ import annotations

import ctypes

import pytest

from xenpci.abi import grant_table as gt
from xenpci.hv import PAGE_SIZE, GrantError, Hypervisor, NoSuchDomain
from xenpci.hv.grant_table import GNTTAB_NR_RESERVED_ENTRIES, NR_GRANT_ENTRIES

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pair(hv: Hypervisor) -> tuple[Hypervisor, int, int]:
    a = hv.create_domain("a", 64)
    b = hv.create_domain("b", 64)
    return hv, a.domid, b.domid


def test_grant_fills_a_real_v1_entry(pair: tuple[Hypervisor, int, int]) -> None:
    hv, a, b = pair
    hc = hv.domain(a).hypercalls
    gref = hc.gnttab_grant_foreign_access(b, 5, readonly=True)
    assert gref >= GNTTAB_NR_RESERVED_ENTRIES
    assert hv.grants.entry(a, gref) == (gt.GTF_permit_access | gt.GTF_readonly, b, 5)
    # The entry really lives in a grant-table frame at the C offset.
    table = hv.grants._tables[a]
    per = gt.GRANT_ENTRIES_PER_FRAME_V1
    raw = table.frames[gref // per]
    size = ctypes.sizeof(gt.grant_entry_v1)
    entry = gt.grant_entry_v1.from_buffer_copy(raw, (gref % per) * size)
    assert (entry.flags, entry.domid, entry.frame) == (
        gt.GTF_permit_access | gt.GTF_readonly,
        b,
        5,
    )


def test_map_gives_a_live_shared_view_both_ways(pair: tuple[Hypervisor, int, int]) -> None:
    hv, a, b = pair
    ha, hb = hv.domain(a).hypercalls, hv.domain(b).hypercalls
    gfn = ha.alloc_page()
    ha.write(gfn * PAGE_SIZE, b"from granter")
    gref = ha.gnttab_grant_foreign_access(b, gfn, readonly=False)
    m = hb.gnttab_map_grant_ref(a, gref, readonly=False)
    assert bytes(m.view[:12]) == b"from granter"
    m.view[0:4] = b"FROM"
    assert ha.read(gfn * PAGE_SIZE, 12) == b"FROM granter"
    ha.write(gfn * PAGE_SIZE + 100, b"later")
    assert bytes(m.view[100:105]) == b"later"
    flags = hv.grants.entry(a, gref)[0]
    assert flags & gt.GTF_writing and not flags & gt.GTF_reading


def test_readonly_is_honoured(pair: tuple[Hypervisor, int, int]) -> None:
    hv, a, b = pair
    ha, hb = hv.domain(a).hypercalls, hv.domain(b).hypercalls
    gref = ha.gnttab_grant_foreign_access(b, 1, readonly=True)
    with pytest.raises(GrantError) as e:
        hb.gnttab_map_grant_ref(a, gref, readonly=False)
    assert e.value.status == gt.GNTST_general_error and e.value.errno == "EPERM"
    assert hv.grants.mappings(b) == []
    m = hb.gnttab_map_grant_ref(a, gref, readonly=True)
    assert m.view.readonly
    with pytest.raises(TypeError):
        m.view[0] = 1
    assert hv.grants.entry(a, gref)[0] & gt.GTF_reading


def test_only_the_named_domain_may_map(hv: Hypervisor) -> None:
    a, b, c = (hv.create_domain(n, 64) for n in "abc")
    gref = a.hypercalls.gnttab_grant_foreign_access(b.domid, 0, readonly=False)
    for intruder in (c, hv.dom0):
        with pytest.raises(GrantError) as e:
            intruder.hypercalls.gnttab_map_grant_ref(a.domid, gref, readonly=True)
        assert e.value.status == gt.GNTST_general_error
    assert hv.grants.entry(a.domid, gref)[0] == gt.GTF_permit_access


def test_refs_are_per_granting_domain(pair: tuple[Hypervisor, int, int]) -> None:
    hv, a, b = pair
    ga = hv.domain(a).hypercalls.gnttab_grant_foreign_access(b, 1, readonly=False)
    gb = hv.domain(b).hypercalls.gnttab_grant_foreign_access(a, 2, readonly=False)
    assert ga == gb  # same number, different tables
    ma = hv.domain(b).hypercalls.gnttab_map_grant_ref(a, ga, readonly=False)
    mb = hv.domain(a).hypercalls.gnttab_map_grant_ref(b, gb, readonly=False)
    hv.domain(a).hypercalls.write(1 * PAGE_SIZE, b"A")
    hv.domain(b).hypercalls.write(2 * PAGE_SIZE, b"B")
    assert bytes(ma.view[:1]) == b"A" and bytes(mb.view[:1]) == b"B"


def test_end_access_fails_while_mapped_then_succeeds(pair: tuple[Hypervisor, int, int]) -> None:
    hv, a, b = pair
    ha, hb = hv.domain(a).hypercalls, hv.domain(b).hypercalls
    gref = ha.gnttab_grant_foreign_access(b, 0, readonly=False)
    m1 = hb.gnttab_map_grant_ref(a, gref, readonly=False)
    m2 = hb.gnttab_map_grant_ref(a, gref, readonly=True)
    with pytest.raises(GrantError) as e:
        ha.gnttab_end_foreign_access(gref)
    assert e.value.errno == "EBUSY"
    hb.gnttab_unmap_grant_ref(m1.handle)
    with pytest.raises(GrantError):
        ha.gnttab_end_foreign_access(gref)  # still mapped read-only
    assert hv.grants.entry(a, gref)[0] == gt.GTF_permit_access | gt.GTF_reading
    hb.gnttab_unmap_grant_ref(m2.handle)
    ha.gnttab_end_foreign_access(gref)
    with pytest.raises(GrantError) as e2:
        hb.gnttab_map_grant_ref(a, gref, readonly=True)
    assert e2.value.status == gt.GNTST_bad_gntref


def test_unmapped_view_is_revoked(pair: tuple[Hypervisor, int, int]) -> None:
    hv, a, b = pair
    hb = hv.domain(b).hypercalls
    gref = hv.domain(a).hypercalls.gnttab_grant_foreign_access(b, 0, readonly=False)
    m = hb.gnttab_map_grant_ref(a, gref, readonly=False)
    hb.gnttab_unmap_grant_ref(m.handle)
    with pytest.raises(ValueError):
        m.view[0] = 1
    with pytest.raises(ValueError):
        bytes(m.view)


def test_bad_arguments_get_gntst_codes_and_change_nothing(
    pair: tuple[Hypervisor, int, int],
) -> None:
    hv, a, b = pair
    ha, hb = hv.domain(a).hypercalls, hv.domain(b).hypercalls
    gref = ha.gnttab_grant_foreign_access(b, 0, readonly=False)
    m = hb.gnttab_map_grant_ref(a, gref, readonly=False)
    snapshot = (hv.grants.entry(a, gref), [x.handle for x in hv.grants.mappings(b)])
    cases = [
        (lambda: hb.gnttab_map_grant_ref(99, gref, False), gt.GNTST_bad_domain),
        (lambda: hb.gnttab_map_grant_ref(a, 12345678, False), gt.GNTST_bad_gntref),
        (lambda: hb.gnttab_map_grant_ref(a, 0, False), gt.GNTST_bad_gntref),
        (lambda: hb.gnttab_map_grant_ref(a, NR_GRANT_ENTRIES, False), gt.GNTST_bad_gntref),
        (lambda: hb.gnttab_map_grant_ref(a, gref + 1, False), gt.GNTST_bad_gntref),
        (lambda: hb.gnttab_unmap_grant_ref(m.handle + 1), gt.GNTST_bad_handle),
        (lambda: ha.gnttab_unmap_grant_ref(m.handle), gt.GNTST_bad_handle),
        (lambda: ha.gnttab_end_foreign_access(gref + 1), gt.GNTST_bad_gntref),
        (lambda: ha.gnttab_grant_foreign_access(a, 0, False), gt.GNTST_bad_domain),
    ]
    for call, status in cases:
        with pytest.raises(GrantError) as e:
            call()
        assert e.value.status == status, e.value
    with pytest.raises(NoSuchDomain):
        ha.gnttab_grant_foreign_access(77, 0, False)
    with pytest.raises(Exception, match="gfn"):
        ha.gnttab_grant_foreign_access(b, 16, False)  # a frame a does not own
    assert (hv.grants.entry(a, gref), [x.handle for x in hv.grants.mappings(b)]) == snapshot
    hb.gnttab_unmap_grant_ref(m.handle)
    with pytest.raises(GrantError) as dbl:
        hb.gnttab_unmap_grant_ref(m.handle)  # double unmap
    assert dbl.value.status == gt.GNTST_bad_handle
    assert hv.trace.count("gnttab_unmap_grant_ref") >= 3


def test_grant_table_full_is_enospc(pair: tuple[Hypervisor, int, int]) -> None:
    hv, a, b = pair
    ha = hv.domain(a).hypercalls
    n = NR_GRANT_ENTRIES - GNTTAB_NR_RESERVED_ENTRIES
    refs = {ha.gnttab_grant_foreign_access(b, 0, True) for _ in range(n)}
    assert len(refs) == n
    with pytest.raises(GrantError) as e:
        ha.gnttab_grant_foreign_access(b, 0, True)
    assert e.value.errno == "ENOSPC"


def test_destroying_the_grantee_releases_its_mappings(pair: tuple[Hypervisor, int, int]) -> None:
    hv, a, b = pair
    ha = hv.domain(a).hypercalls
    gref = ha.gnttab_grant_foreign_access(b, 0, readonly=False)
    m = hv.domain(b).hypercalls.gnttab_map_grant_ref(a, gref, readonly=False)
    hv.destroy_domain(b)
    with pytest.raises(ValueError):
        bytes(m.view)
    ha.gnttab_end_foreign_access(gref)  # no longer mapped


def test_granter_frame_outlives_granter_until_unmapped(pair: tuple[Hypervisor, int, int]) -> None:
    hv, a, b = pair
    ha, hb = hv.domain(a).hypercalls, hv.domain(b).hypercalls
    ha.write(0, b"keep")
    gref = ha.gnttab_grant_foreign_access(b, 0, readonly=False)
    mfn = hv.domain(a).p2m.mfns[0]
    m = hb.gnttab_map_grant_ref(a, gref, readonly=False)
    hv.destroy_domain(a)
    # The frame is still a's (not reallocated) and still readable by b.
    assert hv.machine.owner(mfn) == a
    assert bytes(m.view[:4]) == b"keep"
    c = hv.create_domain("c", 64 * 16)
    assert mfn not in c.p2m.mfns
    hb.gnttab_unmap_grant_ref(m.handle)
    assert hv.machine.owner(mfn) is None
