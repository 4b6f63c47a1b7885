"""Hostile clients: each gets its XS_ERROR or loses its own connection; others keep working."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpci.abi import xs_wire as w
from xenpci.xenstore import XenStore
from xenpci.xenstore.wire import encode, strings

from .conftest import Daemon, RawConn, Sans
from .test_store import err

pytestmark = pytest.mark.timeout(60)
XSD_NAMES = {n for _, n in w.xsd_errors}


def test_len_over_4096_closes_only_that_connection(daemon: Daemon) -> None:
    bad, good = RawConn(daemon.path), RawConn(daemon.path)
    try:
        good.request(w.XS_WRITE, b"/kept\0v")
        bad.send(struct.pack("<IIII", w.XS_READ, 0, 0, 4097))
        assert bad.is_closed()
        assert good.request(w.XS_READ, strings("/kept")).payload == b"v"
    finally:
        bad.close()
        good.close()


def test_len_exactly_4096_is_legal(raw: RawConn) -> None:
    path = b"/" + b"a" * 4094 + b"\0"  # 4096 bytes: EINVAL (too long), not a close
    assert len(path) == 4096
    f = raw.request(w.XS_READ, path)
    assert err(f) == "EINVAL"
    assert raw.request(w.XS_READ, strings("/local")).payload == b""


def test_truncated_header_then_vanish(daemon: Daemon) -> None:
    c = RawConn(daemon.path)
    c.send(b"\x02\x00\x00")  # 3 bytes of a header, then gone
    c.close()
    d = RawConn(daemon.path)
    try:
        assert d.request(w.XS_READ, strings("/local")).payload == b""
    finally:
        d.close()


def test_fragmented_frames_reassemble(raw: RawConn) -> None:
    data = encode(w.XS_WRITE, 7, 0, b"/frag\0value")
    for i in range(len(data)):
        raw.send(data[i : i + 1])
    f = raw.recv_frame()
    assert (f.type, f.req_id, f.payload) == (w.XS_WRITE, 7, b"OK\0")


def test_bad_inputs_get_their_errors(raw: RawConn) -> None:
    cases = [
        (w.XS_READ, b"/nonul", 0, "EINVAL"),
        (w.XS_READ, b"/bad char\0", 0, "EINVAL"),
        (w.XS_READ, b"/" + b"p" * 3000 + b"\0", 0, "EINVAL"),
        (w.XS_READ, strings("/local"), 77, "ENOENT"),  # unknown tx id
        (99, b"", 0, "ENOSYS"),
        (w.XS_WATCH, b"/onlypath\0", 0, "EINVAL"),
        (w.XS_TRANSACTION_END, strings("T"), 0, "ENOENT"),
    ]
    for t, payload, tx, code in cases:
        f = raw.request(t, payload, tx_id=tx, req_id=42)
        assert (f.type, f.req_id, f.tx_id) == (w.XS_ERROR, 42, tx)
        assert f.payload == code.encode() + b"\0"


def test_client_vanishing_mid_transaction_loses_nothing_committed(daemon: Daemon) -> None:
    a = RawConn(daemon.path)
    a.request(w.XS_WRITE, b"/committed\0yes")
    tid = int(a.request(w.XS_TRANSACTION_START, b"\0").payload.rstrip(b"\0"))
    a.request(w.XS_WRITE, b"/committed\0no", tx_id=tid)
    a.request(w.XS_WRITE, b"/uncommitted\0x", tx_id=tid)
    a.close()
    b = RawConn(daemon.path)
    try:
        assert b.request(w.XS_READ, strings("/committed")).payload == b"yes"
        assert err(b.request(w.XS_READ, strings("/uncommitted"))) == "ENOENT"
    finally:
        b.close()
    # The vanished connection's transaction and watches are gone from the store.
    assert all(not c.transactions for c in daemon.store.connections)


def test_watches_past_quota_on_domain_socket(daemon: Daemon) -> None:
    g = RawConn(daemon.dom5_path)
    try:
        codes = []
        for i in range(131):
            f = g.request(w.XS_WATCH, strings("/local", f"t{i}"))
            codes.append(err(f))
            if f.type == w.XS_WATCH:
                g.recv_frame()  # the initial event
        assert codes[:129] == [None] * 129 and codes[129:] == ["E2BIG", "E2BIG"]
    finally:
        g.close()


frames = st.builds(
    lambda t, r, x, p: encode(t, r, x, p),
    st.one_of(st.integers(0, 30), st.integers(0, 0xFFFFFFFF)),
    st.integers(0, 0xFFFFFFFF),
    st.one_of(st.just(0), st.integers(0, 5), st.integers(0, 0xFFFFFFFF)),
    st.one_of(
        st.binary(max_size=64),
        st.lists(st.sampled_from([b"/", b"a", b"\0", b"@", b"T", b"r0", b"5", b".."])).map(
            b"".join
        ),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, max_size=12), st.binary(max_size=40))
def test_random_frames_never_crash_or_corrupt(seq: list[bytes], junk: bytes) -> None:
    store = XenStore()
    dom0 = Sans(store)
    dom0.one(w.XS_WRITE, b"/keep\0safe")
    store.introduce_domain(5)
    for domid in (0, 5):
        conn = store.connection(domid)
        for data in (*seq, junk):
            for out in conn.feed(data):
                t, _, _, n = struct.unpack_from("<IIII", out)
                assert n == len(out) - 16 <= w.XENSTORE_PAYLOAD_MAX
                if t == w.XS_ERROR:
                    assert out[16:-1].decode() in XSD_NAMES and out.endswith(b"\0")
            if conn.closed:
                break
        conn.close()
    # Another connection still works and committed data is intact, unless a
    # dom0 frame legitimately rewrote it.
    f = dom0.one(w.XS_READ, strings("/local/domain/0/name"))
    assert f.type in (w.XS_READ, w.XS_ERROR)
    assert store.connections == [dom0.conn]


def test_frames_before_an_oversized_header_are_answered(store: XenStore) -> None:
    conn = store.connection(0)
    data = encode(w.XS_WRITE, 1, 0, b"/before\0v") + struct.pack("<IIII", w.XS_READ, 2, 0, 9999)
    out = conn.feed(data)
    assert out == [encode(w.XS_WRITE, 1, 0, b"OK\0")]
    assert conn.closed
    assert conn.feed(encode(w.XS_READ, 3, 0, b"/before\0")) == []
    assert store.tree.get("/before") is not None


def test_unprivileged_peer_that_never_reads_holds_at_most_its_memory_quota(
    daemon: Daemon,
) -> None:
    """C's send_event drops an event the domain has no memory quota left for, and
    domain_can_read stops reading the domain's requests: the lazy peer stays
    connected, dom0 holds no more than the quota for it, others are unaffected."""
    quota = 256 * 1024
    daemon.store.quotas["memory"] = quota
    writer = RawConn(daemon.path)
    lazy = RawConn(daemon.dom5_path)
    try:
        writer.request(w.XS_SET_PERMS, strings("/local", "r0"))
        # Big tokens make big events; the lazy domain never reads them.
        for i in range(4):
            lazy.send(encode(w.XS_WATCH, 0, 0, strings("/local", f"{i}" + "x" * 3000)))
        big = b"v" * 100
        # Distinct paths: no event is identical to a queued one. 4 events of
        # ~3 KiB per write: 3 MiB in all, far more than the quota and what
        # the kernel's socket buffers take.
        for n in range(250):
            writer.request(w.XS_WRITE, f"/local/more{n}\0".encode() + big)
        # One more round trip: the server thread has queued every event by now.
        assert writer.request(w.XS_READ, strings("/local/more0")).payload == big
        (lazy_stats,) = [st for st in daemon.server.stats() if st.domid == 5]
        assert lazy_stats.queued < quota
        assert lazy_stats.dropped_events > 0
        assert any(c.domid == 5 for c in daemon.store.connections)  # not cut off
        # quota <domid> shows C's domain->memory: its watches and queued output.
        text = writer.request(w.XS_CONTROL, strings("quota", "5")).payload.decode()
        memory = int(text.split("memory")[1].split(":")[1].split()[0])
        watches = sum(len("/local") + len(f"{i}" + "x" * 3000) for i in range(4))
        assert memory == daemon.store.memory_used(5) == lazy_stats.queued + watches
    finally:
        writer.close()
        lazy.close()


def test_a_bug_in_a_handler_costs_that_client_not_the_daemon(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xenpci.xenstore import control

    def boom(*_: object) -> bytes:
        raise RuntimeError("a bug")

    monkeypatch.setitem(control._BY_NAME, "print", control.ControlCommand("print", boom, ""))
    victim, other = RawConn(daemon.path), RawConn(daemon.path)
    try:
        victim.send(encode(w.XS_CONTROL, 0, 0, strings("print", "x")))
        assert victim.is_closed()
        assert other.request(w.XS_READ, strings("/local/domain/0/name")).payload == b"Domain-0"
        third = RawConn(daemon.path)  # the accept loop is alive too
        assert third.request(w.XS_READ, strings("/local/domain/0/name")).payload == b"Domain-0"
        third.close()
    finally:
        victim.close()
        other.close()
