"""``xenpci compare`` end to end (small size): the seed's point from the counts.

The relations are asserted on counts the trace recorded, against quantities
derived independently: the NVMe driver issues one command per Maximum Data
Transfer Size (the controller's MDTS, 2**MDTS pages, by a PRP list) with two
doorbell writes each, blkfront one request per 11 pages (44 KiB).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xenpci.cli.compare import seed_point
from xenpci.cli.main import app
from xenpci.demo.compare import run_compare
from xenpci.devices.nvme import MDTS
from xenpci.hv import PAGE_SIZE

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20


@pytest.mark.parametrize("deterministic", [False, True], ids=["threaded", "deterministic"])
def test_counts_show_the_three_models(tmp_path: Path, deterministic: bool) -> None:
    reads = 16
    report = run_compare(
        MIB,
        random_reads=reads,
        trace_dir=tmp_path / "t",
        diagram_dir=tmp_path,
        deterministic=deterministic,
    )
    emu, pv, pt = (report.results[m] for m in ("emulated", "pv", "passthrough"))
    assert all(r.verified for r in (emu, pv, pt))
    per_cmd = PAGE_SIZE << MDTS
    nvme_cmds = 2 * MIB // per_cmd + reads  # write + read back, then one per random read
    # Emulation: every doorbell write of the guest is one ioreq served by dom0.
    assert emu.guest_register_accesses == 2 * nvme_cmds
    assert emu.dom0_round_trips == emu.ioreqs == 2 * nvme_cmds
    assert emu.dom0_disk_commands == nvme_cmds  # the device model's IO on dom0's disk
    # PV: requests of up to 11 pages; a notification per batch, not per request.
    requests = 2 * -(-(MIB // 4096) // 11) + reads
    assert pv.dom0_round_trips == requests
    assert pv.frontend_notifications < requests and pv.ioreqs == 0
    assert pv.grant_ops > 0 and pv.guest_register_accesses == 0
    # Passthrough: the guest's own commands, nothing through dom0.
    assert pt.guest_register_accesses == 2 * nvme_cmds
    assert pt.dom0_round_trips == pt.dom0_disk_commands == pt.ioreqs == pt.grant_ops == 0
    assert pt.evtchn_sends == 0 and pt.dom0_cpu_s < emu.dom0_cpu_s
    assert all(ok for _, ok in seed_point(report))
    for model in ("emulated", "pv", "passthrough"):
        lines = (tmp_path / "t" / f"{model}.jsonl").read_text().splitlines()
        kinds = {json.loads(line)["kind"] for line in lines}
        assert ("ioreq" in kinds) == (model == "emulated")
        assert ("blkif_request" in kinds) == (model == "pv")
        assert (tmp_path / f"{model}.html").read_text().startswith("<!DOCTYPE html>")
        assert "sequenceDiagram" in (tmp_path / f"{model}.mmd").read_text()


def test_cli_prints_a_table_per_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["compare", "--size", "1", "--random-reads", "8", "--diagram", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    for title in ("emulated NVMe", "PV block", "PCI passthrough", "ratio to passthrough"):
        assert title in result.output
    assert "NO" not in result.output


def test_cli_refuses_bad_sizes() -> None:
    result = CliRunner().invoke(app, ["compare", "--size", "0"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_cli_failure_is_one_line_and_exit_1(tmp_path: Path) -> None:
    # --trace names a regular file: writing DIR/<model>.jsonl fails with OSError.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = CliRunner().invoke(
        app, ["compare", "--size", "1", "--random-reads", "8", "--trace", str(blocker)]
    )
    assert result.exit_code == 1, result.output
    assert "compare failed:" in result.output
    assert "Traceback" not in result.output
