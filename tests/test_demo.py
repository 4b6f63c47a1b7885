"""``xenpci demo`` v1: the handshake happens, the trace shows it, --trace writes JSON lines."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from xenpci.cli import demo
from xenpci.cli.demo import run_demo

pytestmark = pytest.mark.timeout(60)


def vcpus() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "v0-" in t.name}


def test_run_demo_exchanges_messages_through_the_granted_page() -> None:
    before = vcpus()
    r = run_demo(rounds=4)
    assert vcpus() <= before, "the demo left domain threads running"
    assert r.dom0_saw == ("hello from the guest", "pong 1", "pong 2", "pong 3", "pong 4")
    assert r.guest_saw == ("ping 1", "ping 2", "ping 3", "ping 4")
    assert r.counts["evtchn_send"] == 8
    assert r.counts["gnttab_map_grant_ref"] == 1 == r.counts["gnttab_unmap_grant_ref"]
    kinds = [e.kind for e in r.trace.events]
    # Order of the handshake: grant before map, unmap before end of access.
    assert kinds.index("gnttab_grant_foreign_access") < kinds.index("gnttab_map_grant_ref")
    assert kinds.index("evtchn_alloc_unbound") < kinds.index("evtchn_bind_interdomain")
    assert kinds.index("gnttab_unmap_grant_ref") < kinds.index("gnttab_end_foreign_access")
    sends = [e for e in r.trace.events if e.kind == "evtchn_send"]
    assert [e.domid for e in sends] == [0, r.guest_domid] * 4
    assert all("error" not in e.args for e in r.trace.events)


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test shell."""

    demo.register(app)
    return app


def test_cli_prints_the_trace_and_writes_jsonl(tmp_path: Path) -> None:
    out = tmp_path / "trace.jsonl"
    result = CliRunner().invoke(_app(), ["demo", "--trace", str(out), "--rounds", "2"])
    assert result.exit_code == 0, result.output
    assert "xenpci trace" in result.output and "summary" in result.output
    assert "gnttab_map_grant_ref" in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert f"wrote {len(records)} trace records" in result.output
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert sum(r["kind"] == "evtchn_send" for r in records) == 4
    assert {r["path"] for r in records} == {"dom0", "direct"}
