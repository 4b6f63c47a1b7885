"""Guards for interop tests that need a real tool, header or library.

Outside CI a missing tool skips the test with the reason; in CI (``CI=true``)
it fails, because an interop test that silently skips proves nothing.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _missing(what: str) -> None:
    msg = f"{what} is missing (install it: ./dev setup)"
    if IN_CI:
        pytest.fail(msg + " -- interop tests may not skip in CI", pytrace=False)
    pytest.skip(msg)


def require_executable(name: str) -> str:
    """Return the path of executable ``name`` or skip/fail as above."""
    path = shutil.which(name)
    if path is None:
        _missing(f"executable {name!r}")
        raise AssertionError("unreachable")
    return path


def require_file(path: str | Path) -> Path:
    """Return ``path`` if it exists (a header, pci.ids) or skip/fail as above."""
    p = Path(path)
    if not p.exists():
        _missing(f"file {p}")
    return p


def require_module(name: str) -> ModuleType:
    """Import and return Python module ``name`` or skip/fail as above."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"Python module {name!r}")
        raise AssertionError("unreachable") from None
