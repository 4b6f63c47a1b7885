"""Our blkback against a C frontend built on libxen-dev's real ``io/ring.h`` macros.

The C program (``c/blkfront_ring.c``) initialises the shared ring with
``SHARED_RING_INIT``/``FRONT_RING_ATTACH``, queues requests with
``RING_GET_REQUEST``, publishes them with ``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY``
and consumes responses with ``RING_FINAL_CHECK_FOR_RESPONSES`` /
``RING_COPY_RESPONSE``, on a page that is an ``mmap`` of one file: the same
bytes our :class:`~xenpci.blkback.ring.BackRing` reads and writes.
Notifications travel over pipes, one byte each, exactly when each side's
macro/rule says one is due; if either side got the rule wrong the run would
stall (and the timeout fails it) or the counts below would differ. The
indices start just below 2**32 so they wrap during the run.
"""

from __future__ import annotations

import mmap
import struct
import subprocess
from pathlib import Path

import pytest

from tests.interop import require_executable, require_file
from xenpci.abi import blkif
from xenpci.blkback.blkback import BlkifRingServer
from xenpci.blkback.ring import BackRing
from xenpci.hv import PAGE_SHIFT, PAGE_SIZE
from xenpci.toolstack.iomodels import IoModelsHost

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

SOURCE = Path(__file__).parent / "c" / "blkfront_ring.c"
START = 0xFFFF_FFF0
NPAGES = 3


def build(tmp_path: Path) -> Path:
    gcc = require_executable("gcc")
    require_file("/usr/include/xen/io/blkif.h")
    exe = tmp_path / "blkfront_ring"
    subprocess.run([gcc, "-Wall", "-Werror", "-o", exe, SOURCE], check=True, capture_output=True)
    return exe


def test_c_frontend_with_the_real_ring_macros(host: IoModelsHost, tmp_path: Path) -> None:
    exe = build(tmp_path)
    ring_file = tmp_path / "ring"
    ring_file.write_bytes(bytes(PAGE_SIZE))
    # The frontend's data pages live in a model domain standing in for the C program's.
    dom = host.machine.hv.create_domain("cfront", 1024)
    hc = dom.hypercalls
    patterns = [bytes([(k * 53 + i) % 256 for i in range(256)]) * 16 for k in range(NPAGES)]
    src, dst = [], []
    for k in range(NPAGES):
        s, d = hc.alloc_page(), hc.alloc_page()
        hc.write(s << PAGE_SHIFT, patterns[k])
        hc.write(d << PAGE_SHIFT, b"\xee" * PAGE_SIZE)
        src.append((s, hc.gnttab_grant_foreign_access(0, s, True)))
        dst.append((d, hc.gnttab_grant_foreign_access(0, d, False)))
    args = [str(exe), str(ring_file), hex(START), str(host.disk.sectors)]
    args += [str(g) for _, g in src] + ["--"] + [str(g) for _, g in dst]
    with ring_file.open("r+b") as f:
        mm = mmap.mmap(f.fileno(), PAGE_SIZE)
    page = memoryview(mm)
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin

    def notify() -> None:
        stdin.write(b"n")
        stdin.flush()

    server = BlkifRingServer(
        BackRing(page, start=START), host.machine.dom0, dom.domid, host.disk, notify
    )
    received = 0
    try:
        while (c := proc.stdout.read(1)) == b"n":
            received += 1
            server.do_block_io_op()
        assert c == b"e", f"C frontend stopped: {c!r}, rc={proc.wait()}"
        report = proc.stdout.read().decode()
        shared = struct.unpack_from("<4I", page, 0)  # req_prod, req_event, rsp_prod, rsp_event
        assert proc.wait() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        page.release()
        mm.close()
    facts: dict[str, int] = {}
    responses: dict[int, tuple[int, int]] = {}
    for line in report.splitlines():
        word, *vals = line.split()
        if word == "rsp":
            responses[int(vals[0])] = (int(vals[1]), int(vals[2]))
        else:
            facts[word] = int(vals[0])
    assert facts["ring_size"] == blkif.BLKIF_RING_SIZE
    ok, err, nosup = blkif.BLKIF_RSP_OKAY, blkif.BLKIF_RSP_ERROR, blkif.BLKIF_RSP_EOPNOTSUPP
    w, r = blkif.BLKIF_OP_WRITE, blkif.BLKIF_OP_READ
    expected = {100 + k: (w, ok) for k in range(NPAGES)}
    expected |= {200 + k: (r, ok) for k in range(40)}
    expected |= {300: (w, err), 301: (w, err), 302: (r, err), 303: (r, err)}
    expected |= {304: (blkif.BLKIF_OP_RESERVED_1, nosup), 305: (blkif.BLKIF_OP_FLUSH_DISKCACHE, ok)}
    assert responses == expected
    # Every notification the macros asked for reached us, and ours reached it.
    # How many are due depends on how the two sides interleave (a backend still
    # serving sees the next request without one), so only: every one arrived.
    assert received == facts["notifies"] >= 1
    # Each time the C side slept it was woken by one of our notifications.
    assert 1 <= facts["waits"] <= server.notifications
    total = NPAGES + 40 + 6
    end = (START + total) & 0xFFFF_FFFF
    assert end < START  # the indices wrapped
    assert facts["req_prod"] == facts["rsp_prod"] == end
    # Our RING_FINAL_CHECK_FOR_REQUESTS re-armed req_event after the last request (the
    # C side printed its facts before that, so the page is read here).
    assert shared[:3] == (end, (end + 1) & 0xFFFF_FFFF, end)
    assert server.ring.req_cons == server.ring.rsp_prod_pvt == end
    # The data went to the disk and came back into the C frontend's pages.
    for k, (gfn, _) in enumerate(dst):
        assert hc.read(gfn << PAGE_SHIFT, PAGE_SIZE) == patterns[k]
    assert server.errors == {
        "bad-segment-count": 2,
        "beyond-end": 1,
        "grant-map": 1,
        "unsupported-op": 1,
    }
