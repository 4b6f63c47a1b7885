"""pyxs (selectel, the Debian/PyPI client) against our daemon over its Unix socket."""

from __future__ import annotations

import errno
import threading
from typing import Any

import pytest

from tests.conftest import OS_EDGE_TIMEOUT
from tests.interop import require_module

from .conftest import Daemon

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def client(daemon: Daemon) -> Any:
    pyxs = require_module("pyxs")
    return pyxs.Client(unix_socket_path=daemon.path)


def test_crud_and_perms(daemon: Daemon) -> None:
    with client(daemon) as c:
        assert c.read(b"/local") == b""
        c.write(b"/foo/bar", b"baz")
        assert c.read(b"/foo/bar") == b"baz"
        assert c.list(b"/foo") == [b"bar"]
        assert c.exists(b"/foo") and not c.exists(b"/nope")
        assert c.get_perms(b"/foo/bar") == [b"n0"]  # inherited from /
        c.set_perms(b"/foo/bar", [b"b0", b"n0", b"r0"])
        assert c.get_perms(b"/foo/bar") == [b"b0", b"n0", b"r0"]  # verbatim
        c.delete(b"/foo/bar")
        assert c.read(b"/foo") == b""
        assert c.get_domain_path(0) == b"/local/domain/0"
        assert c.get_domain_path(999) == b"/local/domain/999"
        assert c.is_domain_introduced(0) is True
        assert c.is_domain_introduced(999) is False
        pyxs = require_module("pyxs")
        with pytest.raises(pyxs.PyXSError) as ei:
            c.read(b"/foo/missing")
        assert ei.value.args[0] == errno.ENOENT


def test_watch(daemon: Daemon) -> None:
    with client(daemon) as c:
        m = c.monitor()
        m.watch(b"/mon", b"tok")
        events = m.wait()
        got: list[tuple[bytes, bytes]] = [next(events)]  # the immediate first event
        c.write(b"/mon/child", b"v")
        got.append(next(events))
        assert got == [(b"/mon", b"tok"), (b"/mon/child", b"tok")]
        m.unwatch(b"/mon", b"tok")


def test_conflicting_transactions_second_commit_eagain(daemon: Daemon) -> None:
    with client(daemon) as a, client(daemon) as b:
        a.write(b"/tx/k", b"0")
        a.transaction()
        b.transaction()
        assert a.read(b"/tx/k") == b"0"
        assert b.read(b"/tx/k") == b"0"
        a.write(b"/tx/k", b"a")
        b.write(b"/tx/k", b"b")
        assert a.commit() is True
        assert b.commit() is False  # EAGAIN
        assert a.read(b"/tx/k") == b"a"


def test_commit_retry_without_prior_read(daemon: Daemon) -> None:
    """pyxs's own test_transaction_commit_retry: C xenstored 4.17 commits (issue 14 §2.13).

    The transaction's first access to /foo/bar follows the other write, so C
    records that generation and the commit finds nothing changed.
    """
    with client(daemon) as c, client(daemon) as other:
        c.transaction()
        other.write(b"/foo/bar", b"baz")
        c.write(b"/foo/bar", b"boo")
        assert c.commit() is True
        assert c.read(b"/foo/bar") == b"boo"


def test_header_decode_error_keeps_connection(daemon: Daemon) -> None:
    pyxs = require_module("pyxs")
    from pyxs._internal import Op

    with client(daemon) as c:
        c.tx_id = 128  # an id the server never issued, and no NUL in the payload
        with pytest.raises(pyxs.PyXSError) as ei:
            c.execute_command(Op.WRITE, b"/foo")
        c.tx_id = 0
        assert ei.value.args[0] == errno.ENOENT  # the tx lookup comes first, as in C
        assert c.read(b"/local") == b""


def test_many_threads_share_one_socket(daemon: Daemon) -> None:
    """pyxs multiplexes several requests on one socket; replies must match req_ids."""
    errors: list[BaseException] = []
    with client(daemon) as c:

        def work(i: int) -> None:
            try:
                for j in range(20):
                    c.write(f"/mt/{i}/{j}".encode(), b"v")
                    assert c.read(f"/mt/{i}/{j}".encode()) == b"v"
            except BaseException as e:  # collected and re-raised below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=OS_EDGE_TIMEOUT)
            assert not t.is_alive()
    assert not errors
