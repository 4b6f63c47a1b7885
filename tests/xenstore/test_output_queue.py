"""A transport's sink sees exactly the byte stream an in-process caller gets.

``Connection.feed`` hands a lone reply straight to the sink when the request
queued nothing else; otherwise replies and watch events wait in the
connection's queue (C's ``out_list``) until the sink takes them. Either way
the peer must receive the same bytes, in the same order, as a connection
without a sink returns from ``feed``/``take_output``, however little the sink
takes per call, and the memory charged for queued output must come back to
nothing once it is all sent.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xenpci.abi import xs_wire as w
from xenpci.xenstore.core import Connection, XenStore
from xenpci.xenstore.wire import HEADER, Frame, FrameDecoder


def _frame(t: int, payload: bytes, req_id: int) -> bytes:
    return HEADER.pack(t, req_id, 0, len(payload)) + payload


class _Sink:
    """Takes at most ``limits[i]`` bytes on its i-th call (cycling); 0 = full."""

    def __init__(self, limits: list[int]) -> None:
        self.limits = limits or [1 << 20]
        self.calls = 0
        self.got = bytearray()

    def __call__(self, data: bytes) -> int:
        n = min(len(data), self.limits[self.calls % len(self.limits)])
        self.calls += 1
        self.got += data[:n]
        return n


PATHS = [b"/a", b"/a/b", b"/c", b"/a/b/d"]
_req = st.one_of(
    st.tuples(st.just(w.XS_READ), st.sampled_from(PATHS)).map(lambda t: (t[0], t[1] + b"\0")),
    st.tuples(st.just(w.XS_WRITE), st.sampled_from(PATHS), st.binary(max_size=40)).map(
        lambda t: (t[0], t[1] + b"\0" + t[2])
    ),
    st.tuples(st.just(w.XS_WATCH), st.sampled_from(PATHS)).map(lambda t: (t[0], t[1] + b"\0tok\0")),
    st.tuples(st.just(w.XS_RM), st.sampled_from(PATHS)).map(lambda t: (t[0], t[1] + b"\0")),
    st.tuples(st.just(w.XS_DIRECTORY), st.sampled_from(PATHS)).map(lambda t: (t[0], t[1] + b"\0")),
)
# (which connection sends it: 0 = the one under test, 1 = another dom0 client)
_step = st.tuples(st.sampled_from([0, 0, 1]), _req)


def _drain(conn: Connection, sink: _Sink) -> None:
    """Flush as a transport does when its peer makes room, until nothing is queued."""
    for _ in range(10_000):
        if not conn.queued:
            return
        sink.limits = [max(1, x) for x in sink.limits]  # the peer reads again
        conn.flush()
    raise AssertionError("output never drained")


class _NoShortcut(FrameDecoder):
    """A decoder that never offers the one-frame shortcut: every reply is queued first."""

    def one(self, data: bytes) -> Frame | None:
        return None


def _run(steps: list[tuple[int, tuple[int, bytes]]], limits: list[int], shortcut: bool) -> tuple:
    store = XenStore()
    conns = [store.connection(0), store.connection(0)]
    if not shortcut:
        conns[0]._decoder = _NoShortcut()
    sink = _Sink(list(limits))
    conns[0].sink = sink
    seen = []
    for i, (who, (t, payload)) in enumerate(steps):
        assert conns[who].feed(_frame(t, payload, i + 1)) == [] or who == 1
        conns[1].take_output()
        if i % 3 == 2:
            _drain(conns[0], sink)
        seen.append(
            (
                bytes(sink.got),
                conns[0].out_bytes,
                conns[0].outstanding,
                conns[0].dropped_events,
                {d: n for d, n in store.domain_memory.items() if n},
            )
        )
    _drain(conns[0], sink)
    seen.append((bytes(sink.got), conns[0].out_bytes, store.domain_memory.get(0, 0)))
    return tuple(seen)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(_step, max_size=25), limits=st.lists(st.integers(0, 40), max_size=6))
def test_shortcut_changes_nothing_a_peer_or_a_quota_sees(
    steps: list[tuple[int, tuple[int, bytes]]], limits: list[int]
) -> None:
    """Sending a lone reply straight away is the queue path, minus the queueing:
    the same bytes at every step, the same drops (XSA-326 duplicates of events
    still queued), the same memory charged, whatever the sink takes per call."""
    assert _run(steps, limits, True) == _run(steps, limits, False)


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(_step, max_size=25))
def test_sink_stream_equals_in_process_stream(steps: list[tuple[int, tuple[int, bytes]]]) -> None:
    """A peer that always reads gets exactly what an in-process caller is returned."""
    plain_store, sunk_store = XenStore(), XenStore()
    plain = [plain_store.connection(0), plain_store.connection(0)]
    sunk = [sunk_store.connection(0), sunk_store.connection(0)]
    sink = _Sink([])
    sunk[0].sink = sink
    expected = bytearray()
    for i, (who, (t, payload)) in enumerate(steps):
        data = _frame(t, payload, i + 1)
        if who == 1:
            plain[1].feed(data)
            plain[1].take_output()
            expected += b"".join(plain[0].take_output())  # watch events for 0
            sunk[1].feed(data)
            sunk[1].take_output()
        else:
            expected += b"".join(plain[0].feed(data))
            assert sunk[0].feed(data) == []  # a sink connection returns nothing
    assert bytes(sink.got) == bytes(expected)
    assert sunk[0].out_bytes == 0 and sunk[0].outstanding == 0 and not sunk[0].queued
    assert sunk_store.domain_memory.get(0, 0) == plain_store.domain_memory.get(0, 0)


def test_partial_send_keeps_the_rest_queued_in_order() -> None:
    store = XenStore()
    conn = store.connection(0)
    sink = _Sink([5])
    conn.sink = sink
    conn.feed(_frame(w.XS_WRITE, b"/x\0" + b"v" * 30, 1))
    conn.feed(_frame(w.XS_READ, b"/x\0", 2))
    # The first reply went out 5 bytes at a time: the rest waits, and the second
    # reply queues behind it instead of overtaking it.
    assert len(sink.got) < HEADER.size + 3
    assert conn.queued == 2 and conn.outstanding == 2
    sink.limits = [1 << 20]
    conn.flush()
    want = _frame(w.XS_WRITE, b"OK\0", 1) + _frame(w.XS_READ, b"v" * 30, 2)
    assert bytes(sink.got) == want
    assert conn.queued == 0 and conn.out_bytes == 0 and store.domain_memory.get(0, 0) == 0


def test_full_sink_queues_the_reply() -> None:
    store = XenStore()
    conn = store.connection(0)
    sink = _Sink([0])
    conn.sink = sink
    conn.feed(_frame(w.XS_READ, b"/local/domain/0/name\0", 7))
    assert sink.got == b"" and conn.queued == 1 and conn.outstanding == 1
    assert store.domain_memory[0] == conn.out_bytes > 0
    sink.limits = [1 << 20]
    conn.flush()
    assert bytes(sink.got) == _frame(w.XS_READ, b"Domain-0", 7)
    assert store.domain_memory[0] == 0
