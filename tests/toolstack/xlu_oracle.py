"""Debian's real libxlutil 4.17 as a test oracle (see ``xlu_oracle.c``).

:func:`build` compiles the helper against libxen-dev's headers and
libraries; :class:`XluOracle` keeps one helper process and asks it one line
at a time. Everything a test needs is missing -> skip, or fail in CI
(:mod:`tests.interop`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.interop import require_executable, require_file

SOURCE = Path(__file__).with_name("xlu_oracle.c")
LIBDIR = Path("/usr/lib/x86_64-linux-gnu")

# libxl_rdm_reserve_policy
POLICY_INVALID, POLICY_STRICT, POLICY_RELAXED = -1, 0, 1
FUNC_ALL = 0xFFFFFFFF  # LIBXL_PCI_FUNC_ALL


def build(outdir: Path) -> Path:
    """Compile the oracle into ``outdir``; skip/fail if gcc or libxen-dev is missing."""
    gcc = require_executable("gcc")
    require_file("/usr/include/libxlutil.h")
    require_file("/usr/include/libxl.h")
    require_file(LIBDIR / "libxlutil.so.4.17")
    exe = outdir / "xlu_oracle"
    subprocess.run(
        [gcc, "-Wall", "-Werror", "-O1", "-o", str(exe), str(SOURCE), "-lxlutil", "-lxenlight"],
        check=True,
        capture_output=True,
    )
    return exe


def _hex(s: str) -> str:
    return s.encode().hex() or "-"


def _unhex(obj: Any) -> Any:
    """Strings come back hex-encoded (lists of them nested): decode them."""
    if isinstance(obj, str):
        return bytes.fromhex(obj).decode("utf-8", "surrogateescape")
    if isinstance(obj, list):
        return [_unhex(x) for x in obj]
    return obj


_HEX_FIELDS = frozenset({"name", "report", "spec", "string", "list"})


def _decode(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if k == "keys":
            out[k] = {bytes.fromhex(name).decode(): _decode(f) for name, f in v.items()}
        elif k == "pci" and v is not None:
            out[k] = [_decode(dev) for dev in v]
        elif k in _HEX_FIELDS:
            out[k] = _unhex(v)
        else:
            out[k] = v
    return out


class XluOracle:
    """One running helper; each method is one libxlutil call (or xl's use of it)."""

    def __init__(self, exe: Path) -> None:
        self.proc = subprocess.Popen(
            [str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def _ask(self, *fields: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join(fields) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"oracle died (exit {self.proc.wait()}) on {fields!r}")
        return _decode(json.loads(line))

    def spec(self, text: str) -> dict[str, Any]:
        """``xlu_pci_parse_spec_string`` on a freshly initialised device."""
        return self._ask("spec", _hex(text))

    def bdf(self, text: str) -> dict[str, Any]:
        """``xlu_pci_parse_bdf``."""
        return self._ask("bdf", _hex(text))

    def rdm(self, text: str) -> dict[str, Any]:
        """``xlu_rdm_parse`` (strategy/policy start as -1 sentinels)."""
        return self._ask("rdm", _hex(text))

    def cfg(self, text: str, keys: list[str]) -> dict[str, Any]:
        """``xlu_cfg_readdata``, the accessors on ``keys``, and xl's pci loop."""
        return self._ask("cfg", _hex(",".join(keys)), _hex(text))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
