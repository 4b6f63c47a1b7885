"""xenpci.trace: recording, counting, JSON lines, rendering, thread safety."""

from __future__ import annotations

import inspect
import itertools
import json
import threading
from pathlib import Path

import pytest
from rich.console import Console

from xenpci.hv.hypercalls import Hypercalls
from xenpci.hv.scheduler import Scheduler
from xenpci.trace import Kind, Trace, TraceEvent


def test_record_count_and_counts() -> None:
    t = Trace()
    t.record("evtchn_send", 1, "direct", port=3)
    t.record("evtchn_send", 0, "dom0", port=1)
    t.record("gnttab_map_grant_ref", 0, "dom0", granter=1, gref=8)
    assert t.count() == 3
    assert t.count("evtchn_send") == 2
    assert t.count("evtchn_send", domid=1) == 1
    assert t.count(domid=0) == 2
    assert t.counts() == {"evtchn_send": 2, "gnttab_map_grant_ref": 1}
    ev = t.events
    assert [e.seq for e in ev] == [0, 1, 2]
    assert ev[2].args == {"granter": 1, "gref": 8} and ev[2].path == "dom0"
    assert ev[0].t <= ev[1].t <= ev[2].t


def test_argument_names_may_shadow_the_record_parameters() -> None:
    t = Trace()
    t.record("domctl_createdomain", 0, "dom0", domid=5, kind="x", path="y")
    assert t.events[0].domid == 0 and t.events[0].args["domid"] == 5


def test_count_only_kinds_are_counted_not_stored() -> None:
    t = Trace()
    for _ in range(1000):
        t.record("mmio_read", 1, "direct", paddr=0)
    assert t.count("mmio_read") == 1000 and t.events == []
    t2 = Trace(count_only=())
    t2.record("mmio_read", 1, "direct")
    assert len(t2.events) == 1


def test_disabled_trace_records_nothing() -> None:
    t = Trace(enabled=False)
    t.record("evtchn_send", 1)
    assert t.count() == 0 and t.events == []


def test_max_events_keeps_the_newest_and_exact_counts() -> None:
    t = Trace(max_events=3)
    for i in range(10):
        t.record("x", 0, n=i)
    assert [e.args["n"] for e in t.events] == [7, 8, 9]
    assert t.count("x") == 10
    with pytest.raises(ValueError):
        Trace(max_events=0)


def test_jsonl_round_trip(tmp_path: Path) -> None:
    t = Trace()
    t.record("dma_write", 1, "direct", sbdf="0000:03:00.0", data=b"\x01\x02", touched=[1])
    t.record("pirq", 0, "hypervisor", port=None, delivered=False)
    out = tmp_path / "trace.jsonl"
    assert t.to_jsonl(out) == 2
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["kind"] == "dma_write" and lines[0]["args"]["data"] == "0102"
    assert lines[0]["args"]["touched"] == [1] and lines[0]["path"] == "direct"
    assert lines[1] == {
        "t": lines[1]["t"],
        "seq": 1,
        "kind": "pirq",
        "domid": 0,
        "path": "hypervisor",
        "args": {"port": None, "delivered": False},
    }


def test_render_is_a_rich_table_with_a_row_per_event() -> None:
    t = Trace()
    t.record("evtchn_send", 1, "direct", port=3)
    t.record("gnttab_map_grant_ref", 0, "dom0", gref=8)
    table = t.render()
    assert table.row_count == 2
    console = Console(record=True, width=120)
    console.print(table)
    text = console.export_text()
    assert "evtchn_send" in text and "gref=8" in text and "d1" in text
    assert t.render(kinds=["evtchn_send"]).row_count == 1
    assert t.render(limit=1).row_count == 1


def test_event_validation() -> None:
    with pytest.raises(ValueError):
        TraceEvent(0.0, 0, "", 0)
    with pytest.raises(ValueError):
        TraceEvent(0.0, 0, "x", 0, path="sideways")
    with pytest.raises(ValueError):
        Trace().record("x", 0, "nowhere")


@pytest.mark.timeout(30)
def test_concurrent_writers_get_unique_ordered_sequence_numbers() -> None:
    t = Trace()

    def writer(d: int) -> None:
        for i in range(500):
            t.record("w", d, i=i)

    threads = [threading.Thread(target=writer, args=(d,)) for d in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ev = t.events
    assert [e.seq for e in ev] == list(range(2000))
    assert all(a.t <= b.t for a, b in itertools.pairwise(ev))
    for d in range(4):
        assert [e.args["i"] for e in ev if e.domid == d] == list(range(500))


def test_recorder_stores_what_record_would() -> None:
    """A pre-bound recorder and ``record`` give identical events, in one seq order."""
    t = Trace()
    rec = t.recorder("evtchn_send", 1, "direct", ("port", "to_domid", "to_port"))
    rec((3, 2, 5))
    t.record("evtchn_send", 1, "direct", port=3, to_domid=2, to_port=5)
    a, b = t.events
    assert (a.kind, a.domid, a.path, dict(a.args)) == (b.kind, b.domid, b.path, dict(b.args))
    assert (a.seq, b.seq) == (0, 1) and a.t <= b.t
    assert t.count("evtchn_send", 1) == 2 and t.counts() == {"evtchn_send": 2}
    with pytest.raises(ValueError):
        t.recorder("x", 0, "nowhere", ())
    with pytest.raises(ValueError):
        t.recorder("", 0, "direct", ())


def test_recorder_follows_the_trace_configuration() -> None:
    off = Trace(enabled=False)
    off.recorder("x", 0, "dom0", ("a",))((1,))
    assert off.count() == 0 and off.events == []
    counted = Trace(count_only={"x"})
    counted.recorder("x", 4, "dom0", ("a",))((1,))
    assert counted.count("x", 4) == 1 and counted.events == []
    bounded = Trace(max_events=2)
    rec = bounded.recorder("x", 0, "dom0", ("n",))
    for i in range(5):
        rec((i,))
    assert [e.args["n"] for e in bounded.events] == [3, 4] and bounded.count("x") == 5


@pytest.mark.timeout(30)
def test_recorders_and_record_share_one_time_ordered_sequence() -> None:
    t = Trace()

    def writer(d: int) -> None:
        rec = t.recorder("w", d, "direct", ("i",))
        for i in range(500):
            rec((i,)) if i % 2 else t.record("w", d, "direct", i=i)

    threads = [threading.Thread(target=writer, args=(d,)) for d in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ev = t.events
    assert [e.seq for e in ev] == list(range(2000))
    assert all(a.t <= b.t for a, b in itertools.pairwise(ev))
    for d in range(4):
        assert [e.args["i"] for e in ev if e.domid == d] == list(range(500))


def test_every_hypercall_is_a_declared_kind() -> None:
    """A hypercall's record kind is its method name: each must be in :class:`Kind`."""
    traced = {
        name
        for name, fn in inspect.getmembers(Hypercalls, inspect.isfunction)
        if getattr(fn, "__wrapped__", None) is not None
    }
    assert traced, "no traced hypercalls found: the test would prove nothing"
    assert traced <= {k.value for k in Kind}


def test_recorded_kinds_come_back_typed() -> None:
    t = Trace()
    t.record("pci_op", 1, "dom0", cmd="conf_read")
    t.record(Kind.PIRQ, 1, "direct")
    t.record("not_declared_yet", 0)
    kinds = [e.kind for e in t.events]
    assert [type(k) for k in kinds] == [Kind, Kind, str]
    assert kinds[:2] == [Kind.PCI_OP, Kind.PIRQ] and kinds[0] == "pci_op"


def test_a_trace_on_a_virtual_clock_records_virtual_times(tmp_path: Path) -> None:
    ex = Scheduler()
    t = Trace(clock=ex.clock.now)
    t.record(Kind.TOOLSTACK, 0, "dom0", step="a")
    ex.call_later(1.5, lambda: t.record(Kind.TOOLSTACK, 0, "dom0", step="b"))
    ex.advance(2.0)
    assert [e.t for e in t.events] == [0.0, 1.5]
    later = Trace()
    later.use_clock(ex.clock.now)  # switched after construction: time 0 is now
    later.record(Kind.TOOLSTACK, 0, "dom0")
    assert later.events[0].t == 0.0


@pytest.mark.parametrize("max_events", [None, 3])
def test_path_counts_are_a_recount_of_the_stored_records(max_events: int | None) -> None:
    """The per-(kind, path) totals kept as records are stored equal a recount of
    ``events``: through ``record`` and recorders, count-only kinds (never stored),
    records ``max_events`` pushed out, and ``clear``."""
    t = Trace(max_events=max_events, count_only={"mmio_read"})
    send = t.recorder("evtchn_send", 1, "direct", ("port",))
    send0 = t.recorder("evtchn_send", 0, "dom0", ("port",))

    def recount() -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for e in t.events:
            out[e.kind, e.path] = out.get((e.kind, e.path), 0) + 1
        return out

    steps = [
        lambda: send((1,)),
        lambda: send0((2,)),
        lambda: t.record("pci_op", 2, "dom0", cmd="conf_read"),
        lambda: t.record("evtchn_send", 3, "direct", port=4),
        lambda: t.record("mmio_read", 2, "direct"),
    ]
    for i in range(23):
        steps[(i * 7) % len(steps)]()
        assert t.path_counts() == recount()
        if i == 11:
            t.clear()
            assert t.path_counts() == {} == recount()
    assert sum(t.path_counts().values()) == len(t.events)
