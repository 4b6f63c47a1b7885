"""Attacks on XenStore's transports, each next to its defence (issue 14 §3, issue 10 §3.4).

Each attack runs on a machine with a VICTIM guest that has a passed-through
NVMe device and a connected pcifront: its config reads must keep answering
(no op timeout) while the attack runs. Outcomes are asserted by state and
counters (what xenstored holds, how many requests it took), never by timing;
waits are barriers on dom0's vCPU or request round trips.

The ring flood is also run against the real C xenstored 4.17 (through the
xs-oracle shim) with the same bytes: both must take exactly as many requests
off the ring and put exactly as many reply bytes on it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import OS_EDGE_TIMEOUT, THREADED_MODEL_TIMEOUT
from tests.interop import require_executable, require_file
from tests.split.helpers import boot_guest_with
from xenpci.abi import xs_wire as w
from xenpci.devices import catalog
from xenpci.pci import regs
from xenpci.pcifront import ops
from xenpci.pcifront.xenbus import Pcifront
from xenpci.toolstack.machine import Machine
from xenpci.xenstore import Perms
from xenpci.xenstore.ring import (
    REQ,
    REQ_CONS,
    REQ_PROD,
    RSP,
    RSP_CONS,
    RSP_PROD,
    GuestRing,
    ring_read,
    ring_write,
)
from xenpci.xenstore.server import XenstoredServer
from xenpci.xenstore.wire import Frame, FrameDecoder, encode, strings

from .conftest import RawConn

pytestmark = pytest.mark.timeout(120)
SIZE = w.XENSTORE_RING_SIZE
#: READ of /tool by a guest: EACCES, so each reply is 16 + len("EACCES\0") bytes.
FLOOD_REQ = encode(w.XS_READ, 0, 0, b"/tool\0")
FLOOD_REPLY_LEN = 16 + len(b"EACCES\0")


@dataclass
class Victim:
    front: Pcifront
    expected: int  # the device's vendor/device dword as the host has it

    def reads_answer(self, n: int = 10) -> None:
        """``n`` config reads, each answered with the host's value, none timed out."""
        chan = self.front._chan()
        for _ in range(n):
            err, value = ops.conf_read(chan, 0, 0, 0, regs.PCI_VENDOR_ID, 4)
            assert (err, value) == (0, self.expected)
        assert chan.timeouts == 0


@pytest.fixture
def machine() -> Iterator[Machine]:
    # Guests on real ring pages served by xenstored's ring transport: the
    # attacks are on that transport (a deterministic machine has none). The
    # victim's op timeout is a real-time deadline in this threaded machine: the
    # suite's bound for one, so a loaded CI box cannot pass for a starved victim.
    m = Machine(op_timeout=THREADED_MODEL_TIMEOUT, guest_xenstore="ring")
    try:
        yield m
    finally:
        m.shutdown()


@pytest.fixture
def victim(machine: Machine) -> Victim:
    nvme = catalog.make("nvme", "0000:04:00.0")
    _, _, front = boot_guest_with(machine, list(nvme), "victim")
    expected = machine.host_function(nvme[0].sbdf).config.read(regs.PCI_VENDOR_ID, 4)
    v = Victim(front, expected)
    v.reads_answer(1)
    return v


def _recv_frame(sock: socket.socket) -> Frame:
    """The first frame that arrives on ``sock`` (the only one expected)."""
    dec = FrameDecoder()
    while True:
        data = sock.recv(65536)
        if not data:
            raise EOFError("closed before a reply")
        frames = dec.feed(data)
        if frames:
            return frames[0]


def _idx(buf: memoryview, off: int) -> int:
    return int(struct.unpack_from("<I", buf, off)[0])


def _hostile_guest(m: Machine, name: str) -> tuple[int, GuestRing]:
    """A guest acting by hand (no XenBus bus of its own racing on the ring)."""
    domid = m.start_guest(name, 64 * 1024, boot=False)
    ring = m.guest(domid).xs._t
    assert isinstance(ring, GuestRing)
    return domid, ring


def _stop_reading(ring: GuestRing) -> None:
    # The hostile kernel drops its upcall: nothing reads rsp[] any more.
    ring.hc.evtchn_set_handler(ring.port, None)


def _settle(m: Machine, domid: int) -> None:
    """Barrier: every service pass queued for ``domid``'s ring has run on dom0's vCPU."""
    assert m.rings is not None
    ch = m.rings.channels[domid]
    while m.hv.dom0.call(lambda: ch.scheduled):
        pass


def _flood(
    buf: memoryview, kick: object, settle: object, base: tuple[int, int] | None = None
) -> tuple[int, int]:
    """Keep req[] full of requests, never read rsp[]; once the daemon takes no more,
    return (bytes it took, bytes it answered) since ``base`` (rsp_prod, req_cons
    as returned by :func:`_base`; default: now). ``kick`` notifies the daemon and
    ``settle`` is a barrier after which it has made progress if it can."""
    assert callable(kick) and callable(settle)
    req0, rsp0 = base if base is not None else _base(buf)
    last = None
    while True:
        while SIZE - (_idx(buf, REQ_PROD) - _idx(buf, REQ_CONS)) >= len(FLOOD_REQ):
            ring_write(buf, REQ, REQ_PROD, REQ_CONS, FLOOD_REQ)
        kick()
        settle()
        now = ((_idx(buf, REQ_CONS) - req0) & 0xFFFFFFFF, (_idx(buf, RSP_PROD) - rsp0) & 0xFFFFFFFF)
        if now == last:
            return now
        last = now


def _base(buf: memoryview) -> tuple[int, int]:
    return _idx(buf, REQ_CONS), _idx(buf, RSP_PROD)


# -- 1. a guest floods requests and never reads the replies ---------------------------


def test_flood_without_reading_stops_at_20_outstanding(
    machine: Machine,
    victim: Victim,
) -> None:
    m = machine
    domid, ring = _hostile_guest(m, "flood")
    assert m.rings is not None
    ch = m.rings.channels[domid]
    _stop_reading(ring)
    taken, answered = _flood(
        ring.buf, lambda: ring.hc.evtchn_send(ring.port), lambda: _settle(m, domid)
    )
    quota = m.store.quotas["outstanding"]
    # domain_can_read: nothing more is taken while 20 replies are unsent; the
    # rsp ring is full and dom0 holds exactly those 20 (one partly written).
    assert ch.conn.outstanding == quota == 20
    assert answered == SIZE
    assert taken == (SIZE // FLOOD_REPLY_LEN + quota) * len(FLOOD_REQ)
    assert ch.conn.out_bytes == quota * FLOOD_REPLY_LEN
    assert ch.conn.head_sent == SIZE % FLOOD_REPLY_LEN
    requests = ch.requests
    # Meanwhile another guest's pcifront and dom0's toolstack are served...
    victim.reads_answer(20)
    m.xs.write("/local/domain/0/still", "works")
    assert m.xs.read("/local/domain/0/still") == b"works"
    # ...and the stalled guest cost dom0 nothing more.
    ring.hc.evtchn_send(ring.port)
    _settle(m, domid)
    assert ch.requests == requests
    # Once it reads, it is served again, 20 outstanding at a time.
    ring_read(ring.buf, RSP, RSP_PROD, RSP_CONS)
    taken2, _ = _flood(ring.buf, lambda: ring.hc.evtchn_send(ring.port), lambda: _settle(m, domid))
    assert taken2 > 0 and ch.conn.outstanding == quota
    victim.reads_answer(5)


@pytest.mark.interop
def test_flood_takes_what_c_xenstored_takes() -> None:
    """The same flood against C xenstored 4.17 and ours: byte-identical ring indexes."""
    from xenpci.testing.xs_oracle import OracleUnavailable, start_daemon, xen_utils_binary

    if xen_utils_binary("xenstored") is None:
        require_executable("xen-utils-4.17/xenstored")  # skip, or fail in CI
    require_executable("gcc")
    results = {}
    for kind in ("c", "ours"):
        try:
            d = start_daemon(kind)
        except OracleUnavailable as e:
            pytest.fail(str(e), pytrace=False)
        try:
            a = d.connect()
            _, g = d.introduce(a, 5)
            buf = g.buf
            # Totals since the start: a daemon may already be working on the
            # guest's next requests when a round begins (C runs on its own).
            base = _base(buf)
            rounds = []
            for _ in range(3):
                rounds.append(_flood(buf, g._kick, lambda d=d, a=a: d.settle(a), base))
                ring_read(buf, RSP, RSP_PROD, RSP_CONS)  # the guest reads once
                g._kick()
            # A flood is not a ring error: a daemon that cut the guest off
            # (XENSTORE_ERROR_RINGIDX, as C did when our index stores tore)
            # would merely look stalled in the counts.
            assert g.ring_error == 0, f"{kind} cut the guest off: error {g.ring_error}"
            results[kind] = rounds
        finally:
            d.close()
    assert results["ours"] == results["c"]
    first_taken = (SIZE // FLOOD_REPLY_LEN + 20) * len(FLOOD_REQ)
    assert results["c"][0] == (first_taken, SIZE)
    # Each read of the full rsp ring lets exactly one more ring of replies out.
    assert [answered for _, answered in results["c"]] == [SIZE, 2 * SIZE, 3 * SIZE]


#: xenstored's side of a ring in a C process, run while the test drives the
#: guest's side: it takes whatever is on req[] (its readchn: ``check_indexes``
#: then ``req_cons += len``) and fills rsp[] (writechn: ``check_indexes`` then
#: ``rsp_prod += len``), counting the checks that find the guest's indexes
#: more than a ring apart. Each side stores only its own indexes, so a correct
#: guest can never fail a check. argv: the page file, the offset of its stop
#: word and of its progress word. Prints "<broken checks> <checks>".
_XENSTORED_SIDE = r"""
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <xen/io/xs_wire.h>
int main(int argc, char **argv) {
    int fd = argc == 4 ? open(argv[1], O_RDWR) : -1;
    void *page = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    volatile struct xenstore_domain_interface *intf = page;
    volatile uint32_t *stop, *progress;
    unsigned long checks = 0, broken = 0;
    if (page == MAP_FAILED)
        return 2;
    stop = (volatile uint32_t *)((char *)page + atoi(argv[2]));
    progress = (volatile uint32_t *)((char *)page + atoi(argv[3]));
    while (!*stop) {
        XENSTORE_RING_IDX cons = intf->req_cons, prod = intf->req_prod;
        if (prod - cons > XENSTORE_RING_SIZE)
            broken++;
        else
            intf->req_cons = prod;
        cons = intf->rsp_cons;
        prod = intf->rsp_prod;
        if (prod - cons > XENSTORE_RING_SIZE)
            broken++;
        else
            intf->rsp_prod = cons + XENSTORE_RING_SIZE;
        if ((checks += 2) % 2048 == 0)
            *progress = (uint32_t)(checks / 2048);
    }
    printf("%lu %lu\n", broken, checks);
    return 0;
}
"""


@pytest.mark.interop
def test_a_peer_process_never_sees_a_broken_index(tmp_path: Path) -> None:
    """The ring helpers store an index as one whole word, as a peer process sees it.

    The flood against C xenstored found this: ``struct.pack_into`` zeroes the
    word before it stores the value, so C now and then read ``req_prod`` or
    ``rsp_cons`` as 0, found the indexes more than a ring apart and cut the
    guest off with XENSTORE_ERROR_RINGIDX (the flood then "stopped" early,
    at whatever it had taken). Here xenstored's side runs in a C process while
    the guest's side produces req[] and consumes rsp[] through ``ring_write``
    and ``ring_read``; not one of its checks may find the indexes broken.
    (With pack_into it found hundreds to millions per run.)
    """
    gcc = require_executable("gcc")
    require_file("/usr/include/xen/io/xs_wire.h")
    src, exe, page = tmp_path / "xsside.c", tmp_path / "xsside", tmp_path / "ring"
    src.write_text(_XENSTORED_SIDE)
    subprocess.run([gcc, "-O2", "-o", str(exe), str(src)], check=True, timeout=OS_EDGE_TIMEOUT)
    # Indexes whose every byte is non-zero and whose low byte wraps soon: a
    # zeroed or torn store shows as a producer far more than a ring ahead.
    start = 0x010101F0
    init = bytearray(4096)
    struct.pack_into("<IIII", init, REQ_CONS, start, start, start, start)
    page.write_bytes(bytes(init))
    stop_off, progress_off = 4088, 4092  # the page's tail, past the interface
    with open(page, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 4096)
    buf = memoryview(mm)
    proc = subprocess.Popen(
        [str(exe), str(page), str(stop_off), str(progress_off)], stdout=subprocess.PIPE, text=True
    )
    stores = 0
    try:
        # Until the C side has made 64 progress steps (128k checks) while the
        # guest stores: a wait on its progress, not on time.
        seen, last = 0, _idx(buf, progress_off)
        while seen < 64:
            assert proc.poll() is None, "xenstored's side died"
            for _ in range(256):
                stores += ring_write(buf, REQ, REQ_PROD, REQ_CONS, b"x" * 64) > 0
                stores += len(ring_read(buf, RSP, RSP_PROD, RSP_CONS)) > 0
            now = _idx(buf, progress_off)
            seen += now != last
            last = now
    finally:
        struct.pack_into("<I", buf, stop_off, 1)
        out, _ = proc.communicate(timeout=OS_EDGE_TIMEOUT)
        buf.release()
        mm.close()
    broken, checks = map(int, out.split())
    assert checks >= 64 * 2048 and stores > 0
    assert broken == 0


# -- 2. a guest never reads its ring while watches fire --------------------------------


def test_guest_never_reading_while_watches_fire_holds_at_most_its_quota(
    machine: Machine,
    victim: Victim,
) -> None:
    m = machine
    quota = 128 * 1024
    m.store.quotas["memory"] = quota
    domid, ring = _hostile_guest(m, "deaf")
    assert m.rings is not None
    ch = m.rings.channels[domid]
    pub = "/local/domain/0/pub"
    m.xs.mkdir(pub)
    m.xs.set_perms(pub, Perms.of("n0", f"r{domid}"))
    token = "t" * 2000  # big events: path + 2000-byte token
    m.guest(domid).xs.watch(pub, token)
    _stop_reading(ring)
    # The same node rewritten: each event identical to one still queued is
    # dropped (XSA-326), so dom0 holds at most one copy of it.
    for i in range(300):
        m.xs.write(f"{pub}/same", str(i))
    _settle(m, domid)
    same = encode(w.XS_WATCH_EVENT, 0, 0, strings(f"{pub}/same", token))
    # One copy, past what the ring took; before it perhaps the watch's own
    # first event, if the guest stopped reading before it took that one.
    first = encode(w.XS_WATCH_EVENT, 0, 0, strings(pub, token))
    assert ch.conn.out_bytes in (len(same), len(first) + len(same))
    assert ch.conn.dropped_events >= 299 - SIZE // len(same) - 1
    victim.reads_answer(5)
    # Distinct nodes: no duplicates, so the memory quota bounds what dom0 holds.
    for i in range(400):
        m.xs.write(f"{pub}/n{i}", "v")
        if i % 100 == 0:
            victim.reads_answer(2)
    _settle(m, domid)
    # C's domain->memory: the guest's watch and the events queued for it.
    used = m.store.memory_used(domid)
    assert used < quota
    assert used + len(same) >= quota  # filled up to the quota, not beyond
    assert ch.conn.dropped_events > 400 * len(same) // quota
    assert not ch.dead and m.store.is_introduced(domid)  # stalled, not cut off (as C)
    victim.reads_answer(10)


# -- 3. a dom0 socket client never reads while watches fire ----------------------------


@pytest.fixture
def sock_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="xsa", dir="/tmp") as d:  # sun_path is short
        yield d


def _barrier(probe: RawConn) -> None:
    # Two round trips on another connection: the server thread took every
    # notification that came before the first (see XenstoredServer._run).
    for _ in range(2):
        assert probe.request(w.XS_GET_DOMAIN_PATH, b"0\0").type == w.XS_GET_DOMAIN_PATH


def test_dom0_socket_client_never_reading_is_bounded(
    machine: Machine,
    victim: Victim,
    sock_dir: str,
) -> None:
    m = machine
    backlog = 256 * 1024
    server = XenstoredServer(m.store, f"{sock_dir}/s", backlog_max=backlog)
    server.start()
    lazy = RawConn(f"{sock_dir}/s")
    probe = RawConn(f"{sock_dir}/s")
    try:
        pub = "/local/domain/0/pub"
        token = b"t" * 2000
        lazy.send(encode(w.XS_WATCH, 0, 0, strings(pub) + token + b"\0"))
        _barrier(probe)
        # Identical events: one queued copy at most, whatever the rate.
        for i in range(3000):
            m.xs.write(pub, str(i))
        _barrier(probe)
        (st,) = [s for s in server.stats() if s.dropped_events]
        assert st.queued <= 2 * (16 + len(pub) + 1 + len(token) + 1)
        assert st.dropped_events > 2000
        assert len(server.stats()) == 2 and server.overflow_drops == 0
        victim.reads_answer(5)
        # Distinct events: C would hold them all; the server cuts the client
        # off once it leaves more than backlog_max unread.
        for i in range(1000):
            m.xs.write(f"{pub}/n{i}", "v")
        _barrier(probe)
        assert server.overflow_drops == 1
        assert [s.queued for s in server.stats()] == [0]  # only the probe is left
        while lazy.sock.recv(65536):  # what the kernel buffered, then EOF
            pass
        victim.reads_answer(5)
    finally:
        lazy.close()
        probe.close()
        server.stop()


# -- 4. fd exhaustion ----------------------------------------------------------------------


@contextlib.contextmanager
def _no_free_fds() -> Iterator[None]:
    """Every fd of this process in use until the block ends (RLIMIT_NOFILE lowered)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    spare = os.open("/dev/null", os.O_RDONLY)
    held = [spare]
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, spare + 64), hard))
        with contextlib.suppress(OSError):
            while True:
                held.append(os.dup(spare))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_accept_failing_with_emfile_keeps_the_server_serving(
    machine: Machine,
    victim: Victim,
    sock_dir: str,
) -> None:
    m = machine
    path = f"{sock_dir}/s"
    server = XenstoredServer(m.store, path)
    server.start()
    early = RawConn(path)
    late = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # its fd exists already
    late.settimeout(OS_EDGE_TIMEOUT)  # only to turn a hang into a failure
    try:
        assert early.request(w.XS_WRITE, b"/local/domain/0/x\0" + b"1").payload == b"OK\0"
        with _no_free_fds():
            late.connect(path)  # queued in the listen backlog; accept() gets EMFILE
            late.sendall(encode(w.XS_READ, 9, 0, b"/local/domain/0/x\0"))
            # The accept thread did not die: the accepted client is served...
            for i in range(3):
                f = early.request(w.XS_WRITE, b"/local/domain/0/x\0" + str(i).encode())
                assert f.payload == b"OK\0"
            assert server.accept_failures >= 1
            victim.reads_answer(5)
        # ...and once fds are free again the waiting client is accepted and answered.
        reply = _recv_frame(late)
        assert (reply.req_id, reply.payload) == (9, b"2")
    finally:
        early.close()
        late.close()
        server.stop()


def test_daemon_under_a_low_fd_limit_serves_every_client_in_turn(sock_dir: str) -> None:
    """``xenpci xenstored`` with RLIMIT_NOFILE=32 and 64 clients: accept() fails with
    EMFILE, the daemon says so in one line and goes on; each client is answered once
    an earlier one has gone."""
    path = f"{sock_dir}/s"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))

    proc = subprocess.Popen(
        [sys.executable, "-m", "xenpci", "xenstored", "--socket", path],
        stderr=subprocess.PIPE,
        preexec_fn=limit,
    )
    clients: list[socket.socket] = []
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()  # "listening on": bound and serving
        assert "listening on" in line, line
        for i in range(64):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(OS_EDGE_TIMEOUT)  # only to turn a hang into a failure
            c.connect(path)
            c.sendall(encode(w.XS_GET_DOMAIN_PATH, i, 0, f"{i}\0".encode()))
            clients.append(c)
        # No client has gone yet, so 64 > 32 fds must run out: wait for the
        # daemon to say so (one line, no traceback), then let them go in turn.
        line = proc.stderr.readline().decode()
        assert line == f"xenstored: accept on {path}: Too many open files; still serving\n"
        for i, c in enumerate(clients):
            f = _recv_frame(c)
            assert (f.req_id, f.payload) == (i, f"/local/domain/{i}\0".encode())
            c.close()  # frees an fd in the daemon: the next client gets accepted
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        _, err = proc.communicate(timeout=OS_EDGE_TIMEOUT)
    assert err.decode() == "xenstored: stopped\n"  # nothing else, no traceback
    assert proc.returncode == 0
