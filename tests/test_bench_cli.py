"""``./dev bench`` (``python -m benchmarks``) leaves the tree clean unless asked (issue 10 §4)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import benchmarks.__main__ as bench
import pytest

from tests.conftest import TOOL_TIMEOUT

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    module = types.ModuleType("benchmarks.bench_fake")
    module.__doc__ = "A stand-in."
    module.run = lambda: [{"name": "x", "value": 1.0, "unit": "s", "ratio": None}]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchmarks.bench_fake", module)
    monkeypatch.setattr(bench, "discover", lambda: ["fake"])
    tracked, scratch = tmp_path / "BENCHMARKS.md", tmp_path / "cache" / "BENCHMARKS.md"
    monkeypatch.setattr(bench, "TRACKED", tracked)
    monkeypatch.setattr(bench, "SCRATCH", scratch)
    return tracked, scratch


def test_default_run_writes_only_the_scratch_report(fake: tuple[Path, Path]) -> None:
    tracked, scratch = fake
    assert bench.main([]) == 0
    assert "| x | 1 | s |" in scratch.read_text() and not tracked.exists()
    assert bench.main(["--write", "fake"]) == 0
    assert tracked.read_text() == scratch.read_text()


def test_bad_arguments_are_one_line(fake: tuple[Path, Path]) -> None:
    for argv, msg in ((["--nope"], "unknown option --nope"), (["other"], "no benchmark 'other'")):
        with pytest.raises(SystemExit) as e:
            bench.main(argv)
        assert str(e.value).startswith(msg)


def test_the_scratch_report_is_ignored_by_git(tmp_path: Path) -> None:
    """The repo's own .gitignore, in a fresh repository (as a fresh clone has it; in a
    worktree ``.cache`` may be a symlink git will not look through)."""
    git = shutil.which("git")
    assert git is not None
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
    subprocess.run([git, "init", "-q"], cwd=tmp_path, check=True, timeout=TOOL_TIMEOUT)
    rel = bench.SCRATCH.relative_to(REPO)
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_text("report\n")
    r = subprocess.run([git, "check-ignore", "-q", str(rel)], cwd=tmp_path, timeout=TOOL_TIMEOUT)
    assert r.returncode == 0, f"{rel} would dirty the tree"
