"""The README's shell blocks run as written (issue 10 §4).

Each ```sh block of README.md (except one marked ``<!-- readme-test: skip ... -->``,
the quick start that installs packages and runs this suite) is run with
``bash -euo pipefail`` from the repository root, with the real tools it names. A
block passes when every command in it succeeds and the working tree is as clean
afterwards as before (outputs go to mktemp directories; daemons are stopped).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SCRIPT_TIMEOUT, TOOL_TIMEOUT
from tests.interop import require_executable

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- readme-test: skip[^>]*-->\s*)?```sh\n(.*?)```", re.S)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]


def blocks() -> list[tuple[int, str]]:
    text = (REPO / "README.md").read_text()
    out = []
    for m in BLOCK.finditer(text):
        if m.group(1) is None:
            out.append((text.count("\n", 0, m.start()) + 1, m.group(2)))
    return out


def tree_state() -> str:
    git = shutil.which("git")
    assert git is not None
    return subprocess.run(
        [git, "status", "--porcelain", "--untracked-files=all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=TOOL_TIMEOUT,
    ).stdout


def test_readme_has_runnable_blocks() -> None:
    found = blocks()
    assert len(found) >= 3
    text = "\n".join(b for _, b in found)
    assert "../" not in text and "/tmp/" not in text  # nothing outside the repo or a mktemp dir
    for tool in ("xenstore-ls", "lspci", "machine stop", "kill"):
        assert tool in text


@pytest.mark.parametrize(("line", "script"), blocks(), ids=lambda v: str(v)[:12])
def test_readme_block_runs(line: int, script: str) -> None:
    for tool in ("bash", "lspci", "xenstore-ls", "xenstore-write"):
        require_executable(tool)
    if not (REPO / ".venv/bin/xenpci").exists():
        pytest.fail("README commands use .venv/bin/xenpci: run ./dev setup", pytrace=False)
    before = tree_state()
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert r.returncode == 0, f"README.md:{line}: block failed\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, f"README.md:{line}:\n{r.stderr}"
    assert tree_state() == before, f"README.md:{line}: the block changed the working tree"
