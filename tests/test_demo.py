"""``xenpci demo``: the whole story runs, its counters prove the split, its files parse."""

from __future__ import annotations

import json
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from xenpci.cli import demo
from xenpci.demo import (
    CATEGORIES,
    STEPS,
    DemoError,
    DemoReport,
    Message,
    PathCount,
    Step,
    html,
    mermaid,
    run_demo,
    sequence,
)
from xenpci.trace import Kind

pytestmark = pytest.mark.timeout(60)


def vcpus() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "v0-" in t.name}


@pytest.fixture(scope="module")
def report() -> DemoReport:
    """The deterministic run: the same story, on the caller's thread alone."""
    started: list[str] = []
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(threading.Thread, "start", start)
        r = run_demo(frames=8, blocks=32, deterministic=True)
    assert started == [], "the deterministic demo started threads"
    return r


def test_the_threaded_demo_tells_the_same_story() -> None:
    before = vcpus()
    r = run_demo(frames=8, blocks=32)
    assert vcpus() <= before, "the demo left domain threads running"
    assert (r.nic_frames, r.nvme_bytes, r.hotplug) == (
        8,
        32 * 512,
        [
            "0000:07:00.0 attached to guest1",
            "0000:07:00.0 detached from guest1",
        ],
    )
    assert all(c.ok for c in r.checks) and len(r.checks) == 6


def test_two_deterministic_runs_write_byte_identical_traces(tmp_path: Path) -> None:
    traces = []
    for n in range(2):
        out = tmp_path / f"{n}.jsonl"
        args = ["demo", "--deterministic", "--frames", "4", "--blocks", "16", "--trace", str(out)]
        result = CliRunner().invoke(_app(), args)
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output
        traces.append(out.read_bytes())
    assert traces[0] == traces[1]
    records = [json.loads(line) for line in traces[0].splitlines()]
    kinds = {r["kind"] for r in records}
    # the whole story is in it, not an empty or truncated run
    assert {"evtchn_send", "pci_op", "xenstore_request", "dma_fault"} <= kinds


def row(r: DemoReport, category: str) -> PathCount:
    return next(c for c in r.counts if c.category == category)


def test_workloads_ran_with_data_checked(report: DemoReport) -> None:
    assert report.nic_frames == 8
    assert report.nvme_bytes == 32 * 512
    assert report.uart_bytes > 0
    assert report.hotplug == [
        "0000:07:00.0 attached to guest1",
        "0000:07:00.0 detached from guest1",
    ]
    assert sorted(report.domids) == ["guest1", "guest2"]
    assert report.warnings == []


def test_data_plane_never_touches_dom0(report: DemoReport) -> None:
    assert [c.category for c in report.counts] == list(CATEGORIES)
    for category in ("MMIO", "port IO", "DMA", "interrupts"):
        r = row(report, category)
        assert r.dom0 == 0 and r.direct > 0, r
    for category in ("XenStore", "pci ops"):
        r = row(report, category)
        assert r.direct == 0 and r.dom0 > 0, r
    # The MSI-X accesses were mediated, not direct, and are counted apart.
    assert row(report, "MMIO").hypervisor > 0
    # Cross-check against the raw trace: every stored DMA/interrupt event is direct.
    kinds = set(CATEGORIES["DMA"] + CATEGORIES["interrupts"])
    assert {e.path for e in report.trace.events if e.kind in kinds} == {"direct"}
    assert {e.path for e in report.trace.events if e.kind == "pci_op"} == {"dom0"}


def test_isolation_failures_have_the_right_errors(report: DemoReport) -> None:
    assert all(c.ok for c in report.checks), report.checks
    mapped = report.check("guest2 maps guest1's NIC BAR0")
    assert mapped.outcome == "refused: EPERM" and "mmio_map" in (mapped.error or "")
    dma = next(c for c in report.checks if c.what.startswith("guest2's NVMe DMAs"))
    assert "IOMMU fault" in dma.outcome and "0x4" in dma.outcome
    assert not report.dom0_overwritten
    faults = [e for e in report.trace.events if e.kind == "dma_fault"]
    assert len(faults) == 1 and faults[0].domid == report.domids["guest2"]
    redirected = report.check("guest1 rewrites its MSI-X message data")
    assert redirected.outcome.startswith("dropped")


def test_no_iommu_shows_dom0_overwritten_and_the_warning() -> None:
    r = run_demo(iommu=False, frames=2, blocks=16)
    assert r.dom0_overwritten
    assert len(r.warnings) == 2 and all("no IOMMU" in w for w in r.warnings)
    assert not any(e.kind == "dma_fault" for e in r.trace.events)
    assert row(r, "DMA").dom0 == 0


def test_sequence_diagram_covers_connect_op_and_data(report: DemoReport) -> None:
    msgs = sequence(report.trace, report.domids["guest1"])
    sections = [m.section for m in msgs]
    # Sections in order, each contiguous: connect, then one op, then the data path.
    assert sorted(set(sections), key=sections.index) == ["connect", "op", "data"]
    assert sections == sorted(sections, key=["connect", "op", "data"].index)
    op = [m for m in msgs if m.section == "op"]
    assert [(m.src, m.dst) for m in op] == [
        ("guest1", "dom0"),
        ("dom0", "device"),
        ("dom0", "guest1"),
    ]
    labels = " ".join(m.label for m in msgs)
    for needed in ("pci-op-ref", "gnttab_map_grant_ref", "mmio_map", "DMA", "MSI-X"):
        assert needed in labels
    with pytest.raises(ValueError):
        Message("guest1", "nobody", "x", "op")


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in ("meta", "path", "line", "rect", "br"):
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()


def test_html_and_mermaid_are_well_formed(report: DemoReport) -> None:
    msgs = sequence(report.trace, report.domids["guest1"])
    page = html([*msgs, Message("guest1", "Xen", "<script>&", "data")])
    p = _Collector()
    p.feed(page)
    p.close()
    assert p.open == [] and "svg" in p.tags and "script" not in p.tags
    assert p.tags.count("line") >= len(msgs)
    text = mermaid(msgs)
    lines = text.splitlines()
    assert lines[0] == "sequenceDiagram"
    arrows = [ln for ln in lines if "->>" in ln]
    assert len(arrows) == len(msgs)


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test shell."""

    demo.register(app)
    return app


def test_cli_writes_trace_and_diagrams(tmp_path: Path) -> None:
    out, svg, mmd = tmp_path / "t.jsonl", tmp_path / "d.html", tmp_path / "d.mmd"
    args = ["demo", "--frames", "2", "--blocks", "16", "--trace", str(out)]
    result = CliRunner().invoke(_app(), [*args, "--diagram", str(svg)])
    assert result.exit_code == 0, result.output
    assert "who carried each operation" in result.output and "through dom0" in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert f"wrote {len(records)} trace records" in result.output
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert {r["path"] for r in records} <= {"dom0", "direct", "hypervisor"}
    assert any(r["kind"] == "dma_fault" for r in records)
    assert "<svg" in svg.read_text()
    result = CliRunner().invoke(_app(), [*args, "--diagram", str(mmd), "--no-iommu"])
    assert result.exit_code == 0, result.output
    assert mmd.read_text().startswith("sequenceDiagram\n")
    assert "toolstack warning" in result.output and "dom0's memory" in result.output


def test_cli_rejects_a_partial_block_batch() -> None:
    result = CliRunner().invoke(_app(), ["demo", "--blocks", "20"])
    assert result.exit_code != 0


def test_the_demo_is_a_list_of_named_steps() -> None:
    assert [s.name for s in STEPS] == [
        "boot",
        "assignable",
        "guests",
        "NIC",
        "NVMe",
        "MSI-X",
        "hot-plug",
        "isolation",
        "teardown",
    ]


def test_a_failing_check_stops_the_run_naming_its_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import xenpci.demo.scenario as scenario

    steps = tuple(
        Step(s.name, s.action, lambda _run: "bytes differ") if s.name == "NIC" else s for s in STEPS
    )
    monkeypatch.setattr(scenario, "STEPS", steps)
    with pytest.raises(DemoError, match=r"^NIC: bytes differ$"):
        run_demo(frames=1, blocks=16, deterministic=True)


def test_every_kind_the_demo_records_is_typed(report: DemoReport) -> None:
    kinds = {e.kind for e in report.trace.events}
    assert kinds and all(isinstance(k, Kind) for k in kinds), kinds - set(Kind)


def test_path_table_matches_a_count_over_every_record(report: DemoReport) -> None:
    """The table is read off the raw records; recount it the slow way, from each
    ``TraceEvent`` (stored kinds by path) and ``count`` (count-only kinds by domain)."""
    trace = report.trace
    events = trace.events
    for r in report.counts:
        kinds = CATEGORIES[r.category]
        want = {"dom0": 0, "direct": 0, "hypervisor": 0}
        for kind in kinds:
            if kind in trace.count_only:
                want["dom0"] += trace.count(kind, 0)
                want["direct"] += trace.count(kind) - trace.count(kind, 0)
            else:
                for e in events:
                    if e.kind == kind:
                        want[e.path] += 1
        assert (r.dom0, r.direct, r.hypervisor) == (
            want["dom0"],
            want["direct"],
            want["hypervisor"],
        )
    assert sum(r.dom0 + r.direct + r.hypervisor for r in report.counts) > 0


def test_demo_restores_the_callers_gc_thresholds() -> None:
    """The demo collects young objects less often while it runs (a batch of
    long-lived machine objects), and gives the caller its thresholds back."""
    import gc

    from xenpci.demo import scenario

    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    real = scenario._run_steps

    def spy(*args: object) -> object:
        seen.append(gc.get_threshold())
        raise RuntimeError("stop here")

    scenario._run_steps = spy  # type: ignore[assignment]
    try:
        with pytest.raises(RuntimeError):
            scenario.run_demo(deterministic=True)
    finally:
        scenario._run_steps = real  # type: ignore[assignment]
    assert seen == [(scenario.DEMO_GC_GEN0, before[1], before[2])]
    assert gc.get_threshold() == before
