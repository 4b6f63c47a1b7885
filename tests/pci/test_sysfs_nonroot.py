"""This machine's real sysfs read without privilege: the kernel stops at 64 bytes.

Linux's ``pci_read_config`` (drivers/pci/pci-sysfs.c) gives an unprivileged
reader only the first 64 bytes of ``config`` although the file is larger. The
fake-sysfs tests model that by writing a short file; this one lets the real
kernel do it, by loading sysfs in a child process run as ``nobody``, and checks
the result against root's own read of the same files and unprivileged ``lspci``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import xenpci
from tests.conftest import TOOL_TIMEOUT
from tests.interop import require_executable
from xenpci.pci import regs
from xenpci.pci.sysfs import SYSFS_PCI_DEVICES

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

NOBODY = "65534"
SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's interpreter may sit where nobody cannot read

_CHILD = """
import json
from xenpci.pci.sysfs import load_sysfs
print(json.dumps([
    {"bdf": str(f.sbdf), "known": f.config.known().hex(), "notes": f.notes,
     "dword40": f.config.read(0x40, 4), "caps": len(f.capabilities)}
    for f in load_sysfs()
]))
"""


def _as_nobody(*argv: str, pythonpath: str | None = None) -> str:
    setpriv = require_executable("setpriv")
    env = {"PATH": "/usr/bin:/bin"} | ({"PYTHONPATH": pythonpath} if pythonpath else {})
    return subprocess.run(
        [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=TOOL_TIMEOUT,
    ).stdout


def python_as_nobody(code: str) -> str:
    """Run ``code`` in the system python as nobody, importing a world-readable copy of
    the package (the checkout may be private); its stdout."""
    with tempfile.TemporaryDirectory(prefix="xenpci-nonroot") as tmp:
        shutil.copytree(Path(xenpci.__file__).parent, Path(tmp) / "xenpci")
        for d, _, files in os.walk(tmp):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o644)
        return _as_nobody(SYSTEM_PYTHON, "-c", code, pythonpath=tmp)


def test_unprivileged_sysfs_load_says_64_bytes_and_invents_nothing() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody (an unprivileged run is this case already)")
    if not SYSFS_PCI_DEVICES.is_dir() or not os.listdir(SYSFS_PCI_DEVICES):
        pytest.skip("no PCI functions in this machine's sysfs")
    lspci = require_executable("lspci")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} missing")
    seen = json.loads(python_as_nobody(_CHILD))
    assert seen, "nobody saw no PCI functions"
    for fn in seen:
        full = (SYSFS_PCI_DEVICES / fn["bdf"] / "config").read_bytes()  # root: whole file
        known = bytes.fromhex(fn["known"])
        assert len(full) > 64
        assert known == full[:64]
        assert any("64 bytes (non-root" in n for n in fn["notes"]), fn["notes"]
        assert fn["dword40"] == 0xFFFFFFFF  # past what was read: unknown, not invented
        assert fn["caps"] == 0  # the capability list lies beyond 64 bytes
        # Real lspci run as nobody shows the same 64 bytes (4 rows of 16) and no more.
        out = _as_nobody(lspci, "-xxx", "-s", fn["bdf"])
        rows = [ln.split(": ", 1)[1] for ln in out.splitlines() if ln[2:4] == ": "]
        assert bytes.fromhex("".join(rows)) == known
        assert len(known) < regs.PCI_CFG_SPACE_SIZE
