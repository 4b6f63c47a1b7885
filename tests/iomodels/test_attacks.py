"""Hostile PV block frontends against blkback, each attack next to its defence.

The guest writes whatever it likes into its ring. Each malformed request gets
the status Linux blkback gives (``BLKIF_RSP_ERROR``; ``BLKIF_RSP_EOPNOTSUPP``
for an unknown operation), each kind is logged once, the physical disk is
unchanged, and dom0 and another guest's disk go on working.
"""

from __future__ import annotations

import logging
import struct

import pytest

from tests.conftest import THREADED_MODEL_TIMEOUT
from xenpci.abi import blkif
from xenpci.blkfront.blkfront import Blkfront
from xenpci.toolstack.iomodels import IoModelsHost

from .test_pv_block import media

pytestmark = pytest.mark.timeout(60)

_ids = iter(range(1_000_000, 2_000_000))


def raw(
    front: Blkfront,
    op: int,
    sector: int,
    segs: list[tuple[int, int, int]],
    nseg: int | None = None,
) -> int:
    req = blkif.blkif_request()
    req.operation = op
    req.sector_number = sector
    req.nr_segments = len(segs) if nseg is None else nseg
    req.id = next(_ids)
    for i, (gref, first, last) in enumerate(segs[: blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST]):
        req.seg[i].gref, req.seg[i].first_sect, req.seg[i].last_sect = gref, first, last
    return front.submit_raw(req)


def granted_page(front: Blkfront, fill: bytes = b"\x5a") -> tuple[int, int]:
    hc = front.hc
    gfn = hc.alloc_page()
    hc.write(gfn << 12, fill * 4096)
    return gfn, hc.gnttab_grant_foreign_access(0, gfn, False)


def still_works(host: IoModelsHost, *fronts: Blkfront) -> None:
    for i, f in enumerate(fronts):
        data = bytes([0x30 + i]) * 4096
        f.write(5000 + 16 * i, data)
        assert f.read(5000 + 16 * i, 8) == data


def held(host: IoModelsHost, front: Blkfront) -> list[int]:
    """The grefs of ``front``'s domain that dom0 has mapped (XenStore ring, blkif ring)."""
    return sorted(m.gref for m in host.machine.hv.grants.mappings(0) if m.granter == front.domid)


@pytest.fixture
def two(host: IoModelsHost) -> tuple[Blkfront, Blkfront]:
    return host.add_pv_guest("evil", "/dev/nvme0n1,,xvda"), host.add_pv_guest(
        "good", "/dev/nvme0n1,,xvda"
    )


def test_bad_segment_count_is_an_error_logged_once(
    host: IoModelsHost, two: tuple[Blkfront, Blkfront], caplog: pytest.LogCaptureFixture
) -> None:
    evil, good = two
    _, gref = granted_page(evil)
    caplog.set_level(logging.WARNING, "xenpci.blkback")
    assert raw(evil, blkif.BLKIF_OP_WRITE, 0, [], nseg=0) == blkif.BLKIF_RSP_ERROR
    assert raw(evil, blkif.BLKIF_OP_WRITE, 0, [(gref, 0, 7)], nseg=12) == blkif.BLKIF_RSP_ERROR
    assert raw(evil, blkif.BLKIF_OP_READ, 0, [(gref, 0, 7)], nseg=255) == blkif.BLKIF_RSP_ERROR
    lines = [r for r in caplog.records if "Bad number of segments" in r.getMessage()]
    assert len(lines) == 1
    back = host.blkback.devices[(evil.domid, evil.devid)]
    assert back.server is not None and back.server.errors["bad-segment-count"] == 3
    assert media(host, 0, 8) == bytes(4096)
    still_works(host, evil, good)


def test_grant_not_owned_by_the_frontend(
    host: IoModelsHost, two: tuple[Blkfront, Blkfront]
) -> None:
    evil, good = two
    # The good guest's page, granted to dom0: evil names that gref as its own.
    gfn, good_gref = granted_page(good, b"\x11")
    before = held(host, evil)
    assert raw(evil, blkif.BLKIF_OP_READ, 0, [(good_gref + 1000, 0, 7)]) == blkif.BLKIF_RSP_ERROR
    _, own = granted_page(evil)
    # A read would write into the page: with a gref evil never granted it must fail.
    assert raw(evil, blkif.BLKIF_OP_READ, 0, [(own, 0, 7), (own + 1, 0, 7)]) == (
        blkif.BLKIF_RSP_ERROR
    )
    assert good.hc.read(gfn << 12, 4096) == b"\x11" * 4096
    # Nothing stays mapped in dom0 after the failed requests.
    assert held(host, evil) == before  # nothing stays mapped after the failures
    still_works(host, evil, good)


def test_sector_out_of_range_and_bad_sector_numbers(
    host: IoModelsHost, two: tuple[Blkfront, Blkfront]
) -> None:
    evil, good = two
    _, gref = granted_page(evil)
    end = host.disk.sectors
    assert raw(evil, blkif.BLKIF_OP_WRITE, end - 4, [(gref, 0, 7)]) == blkif.BLKIF_RSP_ERROR
    assert raw(evil, blkif.BLKIF_OP_WRITE, 2**64 - 1, [(gref, 0, 7)]) == blkif.BLKIF_RSP_ERROR
    assert raw(evil, blkif.BLKIF_OP_WRITE, 0, [(gref, 3, 2)]) == blkif.BLKIF_RSP_ERROR
    assert raw(evil, blkif.BLKIF_OP_WRITE, 0, [(gref, 0, 8)]) == blkif.BLKIF_RSP_ERROR
    assert media(host, end - 4, 4) == bytes(2048)
    assert media(host, 0, 8) == bytes(4096)
    # In range, first..last inside the page: accepted (sectors 2..5 of the page).
    assert raw(evil, blkif.BLKIF_OP_WRITE, 0, [(gref, 2, 5)]) == blkif.BLKIF_RSP_OKAY
    assert media(host, 0, 4) == b"\x5a" * 2048
    still_works(host, evil, good)


def test_unknown_operation_is_not_supported(
    host: IoModelsHost, two: tuple[Blkfront, Blkfront]
) -> None:
    evil, good = two
    for op in (blkif.BLKIF_OP_RESERVED_1, blkif.BLKIF_OP_DISCARD, blkif.BLKIF_OP_INDIRECT, 200):
        assert raw(evil, op, 0, []) == blkif.BLKIF_RSP_EOPNOTSUPP
    for op in (blkif.BLKIF_OP_FLUSH_DISKCACHE, blkif.BLKIF_OP_WRITE_BARRIER):
        assert raw(evil, op, 0, []) == blkif.BLKIF_RSP_OKAY
    still_works(host, evil, good)


def test_bogus_req_prod_halts_only_that_ring(
    host: IoModelsHost, two: tuple[Blkfront, Blkfront], caplog: pytest.LogCaptureFixture
) -> None:
    evil, good = two
    caplog.set_level(logging.WARNING, "xenpci.blkback")
    assert evil.ring is not None and evil.evtchn is not None
    struct.pack_into("<I", evil.ring.page, 0, 0x7FFF_0000)  # req_prod far past the ring
    evil.hc.evtchn_send(evil.evtchn)
    back = host.blkback.devices[(evil.domid, evil.devid)]
    assert back.server is not None
    server = back.server
    assert server.halt_event.wait(THREADED_MODEL_TIMEOUT)
    assert any("bogus ring requests" in r.getMessage() for r in caplog.records)
    assert server.served == 0
    still_works(host, good)


def test_read_into_a_read_only_grant_fails(
    host: IoModelsHost, two: tuple[Blkfront, Blkfront]
) -> None:
    evil, good = two
    hc = evil.hc
    gfn = hc.alloc_page()
    hc.write(gfn << 12, b"\x42" * 4096)
    ro = hc.gnttab_grant_foreign_access(0, gfn, True)
    # A read would make dom0 write into a page granted read-only: the map fails.
    assert raw(evil, blkif.BLKIF_OP_READ, 0, [(ro, 0, 7)]) == blkif.BLKIF_RSP_ERROR
    assert hc.read(gfn << 12, 4096) == b"\x42" * 4096
    # Writing from it is what read-only grants are for.
    assert raw(evil, blkif.BLKIF_OP_WRITE, 0, [(ro, 0, 7)]) == blkif.BLKIF_RSP_OKAY
    assert media(host, 0, 8) == b"\x42" * 4096
    still_works(host, evil, good)


def test_flush_with_data_is_a_write_and_read_only_disks_refuse_it(host: IoModelsHost) -> None:
    rw = host.add_pv_guest("rw", "/dev/nvme0n1,,xvda")
    ro = host.add_pv_guest("ro", "/dev/nvme0n1,,xvdb,r")
    _, gref = granted_page(rw, b"\x3c")
    assert raw(rw, blkif.BLKIF_OP_FLUSH_DISKCACHE, 16, [(gref, 0, 7)]) == blkif.BLKIF_RSP_OKAY
    assert media(host, 16, 8) == b"\x3c" * 4096
    _, gref = granted_page(ro, b"\x3d")
    for op, segs in ((blkif.BLKIF_OP_WRITE, [(gref, 0, 7)]), (blkif.BLKIF_OP_FLUSH_DISKCACHE, [])):
        assert raw(ro, op, 24, segs) == blkif.BLKIF_RSP_ERROR
    assert media(host, 24, 8) == bytes(4096)
    assert ro.read(16, 8) == b"\x3c" * 4096  # reading is still allowed
