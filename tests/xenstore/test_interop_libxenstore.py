"""libxenstore.so.4 (Debian's C client library) through ctypes: CONTROL and domain ops.

Debian's ``xenstore-control`` is a dangling symlink, so CONTROL is driven
through the library call the tool would use, ``xs_control_command``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any

import pytest

from tests.interop import require_file

from .conftest import Daemon

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]
LIB = "/usr/lib/x86_64-linux-gnu/libxenstore.so.4"


@pytest.fixture
def xs(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    lib = ctypes.CDLL(str(require_file(LIB)))
    libc = ctypes.CDLL(None)
    lib.xs_open.restype = ctypes.c_void_p
    lib.xs_open.argtypes = [ctypes.c_ulong]
    lib.xs_close.argtypes = [ctypes.c_void_p]
    lib.xs_control_command.restype = ctypes.c_void_p
    lib.xs_control_command.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_uint,
    ]
    lib.xs_get_domain_path.restype = ctypes.c_void_p
    lib.xs_get_domain_path.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    for name, args in (
        ("xs_introduce_domain", [ctypes.c_void_p, ctypes.c_uint, ctypes.c_ulong, ctypes.c_uint]),
        ("xs_is_domain_introduced", [ctypes.c_void_p, ctypes.c_uint]),
        ("xs_release_domain", [ctypes.c_void_p, ctypes.c_uint]),
        ("xs_resume_domain", [ctypes.c_void_p, ctypes.c_uint]),
        ("xs_set_target", [ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]),
    ):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_bool
        fn.argtypes = args
    libc.free.argtypes = [ctypes.c_void_p]
    monkeypatch.setenv("XENSTORED_PATH", daemon.path)
    h = lib.xs_open(0)
    assert h, "xs_open failed"
    try:
        yield lib, h
    finally:
        lib.xs_close(h)


def _take(ptr: int | None) -> bytes | None:
    if not ptr:
        return None
    s = ctypes.string_at(ptr)
    ctypes.CDLL(None).free(ctypes.c_void_p(ptr))
    return s


def test_control_print_and_quota(xs: tuple[Any, Any], daemon: Daemon) -> None:
    lib, h = xs
    msg = b"hello from libxenstore\0"
    assert _take(lib.xs_control_command(h, b"print", msg, len(msg))) == b"OK"
    assert daemon.store.log == ["hello from libxenstore"]
    text = _take(lib.xs_control_command(h, b"quota", None, 0))
    assert text is not None and text.startswith(b"Quota settings:\n")
    assert b"watches          :      128" in text
    arg = b"0\0"
    dom = _take(lib.xs_control_command(h, b"quota", arg, len(arg)))
    assert dom is not None and dom.startswith(b"Domain 0:\n")
    assert _take(lib.xs_control_command(h, b"no-such-command", None, 0)) is None


def test_domain_ops(xs: tuple[Any, Any], daemon: Daemon) -> None:
    lib, h = xs
    assert _take(lib.xs_get_domain_path(h, 12)) == b"/local/domain/12"
    assert lib.xs_is_domain_introduced(h, 12) is False
    assert lib.xs_introduce_domain(h, 12, 0x1234, 3) is True
    assert lib.xs_is_domain_introduced(h, 12) is True
    assert daemon.store.domains[12].gfn == 0x1234
    assert lib.xs_set_target(h, 12, 0) is True
    assert lib.xs_resume_domain(h, 12) is True
    assert lib.xs_release_domain(h, 12) is True
    assert lib.xs_release_domain(h, 12) is False  # ENOENT now
    assert lib.xs_is_domain_introduced(h, 12) is False
