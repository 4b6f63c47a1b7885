"""libxenstore.so.4 (Debian's C client library) through ctypes: CONTROL and domain ops.

Debian's ``xenstore-control`` is a dangling symlink, so CONTROL is driven
through the library call the tool would use, ``xs_control_command``.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator
from typing import Any

import pytest

from tests.interop import require_file
from xenpci.xenstore import XsError
from xenpci.xenstore.client import XsClient

from .conftest import Daemon

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]
LIB = "/usr/lib/x86_64-linux-gnu/libxenstore.so.4"


@pytest.fixture
def xs(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    lib = ctypes.CDLL(str(require_file(LIB)), use_errno=True)
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


def test_oversized_request_is_e2big_in_libxenstore_and_in_ours(
    xs: tuple[Any, Any], daemon: Daemon
) -> None:
    """Issue 10 §3.1: the same too-large WRITE through libxenstore and through
    XsClient fails on the client side with E2BIG; both connections survive."""
    lib, h = xs
    lib.xs_write.restype = ctypes.c_bool
    lib.xs_write.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_uint,
    ]
    path = b"/local/domain/7/name"
    for size in (4096 - len(path) - 1, 4096 - len(path)):  # fits exactly; one byte too many
        value = b"n" * size
        ok = lib.xs_write(h, 0, path, value, len(value))
        theirs = "OK" if ok else errno.errorcode[ctypes.get_errno()]
        ours_client = XsClient.unix(daemon.path)
        try:
            ours_client.write(path.decode(), value)
            ours = "OK"
        except XsError as e:
            ours = e.code
        finally:
            ours_client.close()
        assert ours == theirs, size
    assert theirs == "E2BIG"
    assert daemon.store.tree.get("/local/domain/7/name") is not None  # the fitting one landed
    # libxenstore's handle still works after its refusal.
    small = b"short"
    assert lib.xs_write(h, 0, path, small, len(small)) is True
