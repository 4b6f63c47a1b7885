"""``xenpci compare --deterministic``: one thread, and the same traces on every run.

The executor is the machine's (``hv/scheduler.py``); here the IO models run on
it: blkback's ``xenblkd`` and the device model are lanes, not threads. "No
thread" is asserted by watching ``threading.Thread.start`` for the whole run;
"replayable" by comparing two runs' trace files byte for byte.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xenpci.cli.compare import seed_point
from xenpci.cli.main import app
from xenpci.demo.compare import MODELS, run_compare
from xenpci.hv.errors import Deadlock
from xenpci.toolstack.iomodels import boot_iomodels_host

pytestmark = pytest.mark.timeout(120)

SIZE = 256 << 10


def test_compare_runs_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    report = run_compare(SIZE, random_reads=8, deterministic=True)
    assert started == []
    assert all(r.verified for r in report.results.values())
    assert all(ok for _, ok in seed_point(report))
    emu = report.results["emulated"]
    assert emu.dom0_cpu_s > 0  # the device model's tasks, timed without a thread clock
    # Counterfactual: the threaded host does start threads (xenblkd, the device model).
    run_compare(SIZE, random_reads=8)
    assert any(name.startswith("xenblkd") for name in started)
    assert any(name.startswith("qemu-dm") for name in started)


def test_two_runs_write_byte_identical_traces(tmp_path: Path) -> None:
    for run in ("a", "b"):
        run_compare(SIZE, random_reads=8, deterministic=True, trace_dir=tmp_path / run)
    for model in MODELS:
        a = (tmp_path / "a" / f"{model}.jsonl").read_bytes()
        assert a and a == (tmp_path / "b" / f"{model}.jsonl").read_bytes(), model


def test_threaded_traces_are_not_replayable_by_the_same_check(tmp_path: Path) -> None:
    # The check above can fail: with threads, record times are wall-clock readings.
    for run in ("a", "b"):
        run_compare(SIZE, random_reads=8, trace_dir=tmp_path / run)
    a = (tmp_path / "a" / "pv.jsonl").read_bytes()
    assert a != (tmp_path / "b" / "pv.jsonl").read_bytes()


def test_cli_deterministic() -> None:
    result = CliRunner().invoke(
        app, ["compare", "--size", "1", "--random-reads", "4", "--deterministic"]
    )
    assert result.exit_code == 0, result.output
    assert "NO" not in result.output


def test_nested_use_of_dom0s_disk_fails_instead_of_hanging() -> None:
    # On one thread, a task that reaches dom0's disk while a command waits (nested)
    # cannot take the disk's lock: it fails with EDEADLK; the command completes.
    with boot_iomodels_host(deterministic=True) as host:
        executor = host.machine.hv.scheduler
        assert executor is not None
        host.disk.write(0, b"\x5a" * 4096)
        got: list[bytes] = []
        executor.lane("intruder").post(lambda: got.append(host.disk.read(0, 8)))
        assert host.disk.read(0, 8) == b"\x5a" * 4096  # runs the intruder nested
        assert got == []
        assert [type(e) for e in executor.errors] == [Deadlock]
        assert executor.errors[0].errno == "EDEADLK"
        # Not nested, the same task succeeds.
        executor.errors.clear()
        executor.lane("later").post(lambda: got.append(host.disk.read(0, 8)))
        executor.run_until_idle()
        assert got == [b"\x5a" * 4096] and executor.errors == []
