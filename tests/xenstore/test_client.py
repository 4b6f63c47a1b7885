"""XsClient over the socket and in-process: same API, same codec as the server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.conftest import OS_EDGE_TIMEOUT
from xenpci.xenstore import Perms, XenStore, XsError
from xenpci.xenstore.client import WatchEvent, XsClient, XsTransaction

from .conftest import Daemon

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["unix", "in_process"])
def client(request: pytest.FixtureRequest, daemon: Daemon) -> Iterator[XsClient]:
    if request.param == "unix":
        c = XsClient.unix(daemon.path)
    else:
        c = XsClient.in_process(daemon.store, 0)
    yield c
    c.close()


def test_crud(client: XsClient) -> None:
    client.write("/c/a", "1")
    client.write("/c/b", b"\x00bin")
    assert client.read("/c/b") == b"\x00bin"
    assert client.ls("/c") == ["a", "b"]
    client.mkdir("/c/d")
    assert client.exists("/c/d") and not client.exists("/c/zz")
    client.set_perms("/c/a", Perms.of("n0", "r3"))
    assert client.get_perms("/c/a") == Perms.of("n0", "r3")
    client.rm("/c")
    with pytest.raises(XsError) as ei:
        client.read("/c/a")
    assert ei.value.code == "ENOENT"
    assert client.get_domain_path(4) == "/local/domain/4"


def test_watch_iterator_and_callback(client: XsClient, daemon: Daemon) -> None:
    client.watch("/w", "it")
    assert client.next_event(timeout=OS_EDGE_TIMEOUT) == WatchEvent("/w", "it")
    got: list[WatchEvent] = []
    done = threading.Event()

    def cb(ev: WatchEvent) -> None:
        got.append(ev)
        if len(got) == 2:
            done.set()

    client.watch("/cb", "cbtok", cb)
    # A change by another connection reaches both kinds of watcher.
    with XsClient.in_process(daemon.store) as other:
        other.write("/w/x", "1")
        other.write("/cb/y", "2")
    assert client.next_event(timeout=OS_EDGE_TIMEOUT) == WatchEvent("/w/x", "it")
    assert done.wait(OS_EDGE_TIMEOUT)  # the client's xenwatch worker, a thread
    assert got == [WatchEvent("/cb", "cbtok"), WatchEvent("/cb/y", "cbtok")]
    client.unwatch("/w", "it")
    with pytest.raises(XsError) as ei:
        client.unwatch("/w", "it")
    assert ei.value.code == "ENOENT"


def test_transaction_context_and_retry(client: XsClient, daemon: Daemon) -> None:
    client.write("/n", "0")
    with client.transaction() as t:
        t.write("/n", str(int(t.read("/n")) + 1))
    assert client.read("/n") == b"1"
    with pytest.raises(RuntimeError), client.transaction() as t:
        t.write("/n", "never")
        raise RuntimeError("abort")
    assert client.read("/n") == b"1"

    attempts = []
    other = XsClient.in_process(daemon.store)

    def incr(t: XsTransaction) -> int:
        v = int(t.read("/n"))
        attempts.append(v)
        if len(attempts) == 1:
            other.write("/n", "10")  # force one conflict
        t.write("/n", str(v + 1))
        return v + 1

    assert client.retry_transaction(incr) == 11
    assert attempts == [1, 10]
    assert client.read("/n") == b"11"
    other.close()


def test_concurrent_increments_are_serialisable(daemon: Daemon) -> None:
    with XsClient.in_process(daemon.store) as c:
        c.write("/ctr", "0")

    def worker() -> None:
        with XsClient.unix(daemon.path) as c:
            for _ in range(25):
                c.retry_transaction(lambda t: t.write("/ctr", str(int(t.read("/ctr")) + 1)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=OS_EDGE_TIMEOUT)
        assert not th.is_alive()
    with XsClient.in_process(daemon.store) as c:
        assert c.read("/ctr") == b"100"


def test_domain_scoped_in_process_client() -> None:
    store = XenStore()
    store.introduce_domain(7)
    with XsClient.in_process(store) as dom0:
        dom0.mkdir("/local/domain/7")
        dom0.set_perms("/local/domain/7", Perms.of("n7"))
    with XsClient.in_process(store, 7) as g:
        g.write("device/x", "1")
        assert g.read("/local/domain/7/device/x") == b"1"
        with pytest.raises(XsError) as ei:
            g.read("/local/domain/0/name")
        assert ei.value.code == "EACCES"


def test_request_too_large_for_one_frame_is_e2big_on_the_client(
    client: XsClient, daemon: Daemon
) -> None:
    """libxenstore's xs_talkv refuses a payload over XENSTORE_PAYLOAD_MAX with E2BIG
    before sending anything; xenstored would drop the whole connection for it."""
    client.write("/local/domain/7/name", "first")  # the daemon has the connection now
    before = list(daemon.store.connections)
    name = "n" * 5 * 1024  # a 5 KiB domain name (issue 10 §3.1)
    for call in (
        lambda: client.write("/local/domain/7/name", name),
        lambda: client.write("/" + "p" * 4100, "v"),
        lambda: client.read("/" + "p" * 4100),
        lambda: client.mkdir("/" + "p" * 4100),
    ):
        with pytest.raises(XsError) as ei:
            call()
        assert ei.value.code == "E2BIG"
    # Exactly 4096 bytes is legal: it reaches xenstored, which judges the path.
    path = "/" + "a" * 4094  # + NUL = 4096
    with pytest.raises(XsError) as ei:
        client.read(path)
    assert ei.value.code == "EINVAL"  # too long a path, said by the daemon
    # The connection survived: the same client goes on working.
    client.write("/local/domain/7/name", "short")
    assert client.read("/local/domain/7/name") == b"short"
    assert daemon.store.connections == before
