"""The machine daemon runs all machine work on its one executor thread (issue 11).

A daemon runs in this process with its real sockets. Its OS edges (control
connections, the XenStore socket server) only move bytes and post into the
executor: every trace record the machine makes and every XenStore request it
handles is made on the executor's thread; a real ``xenstore-write`` over the
socket wakes a libxl wait; a control client that disconnects mid-op or floods
lines does not stall it. Waits are on futures, sockets and XenStore watches,
bounded by the suite's named OS-edge bounds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OS_EDGE_TIMEOUT, THREADED_MODEL_TIMEOUT, TOOL_TIMEOUT
from tests.interop import require_executable
from tests.toolstack.daemon_helpers import running_daemon
from tests.toolstack.test_libxl_machine import wait_node
from xenpci.hv.scheduler import ExecutorStopped
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.control import Request, decode_response
from xenpci.toolstack.daemon import ControlClient, MachineDaemon
from xenpci.toolstack.host import HostDescription
from xenpci.xenstore.client import XsClient

pytestmark = pytest.mark.timeout(120)

EXECUTOR = "xenpci-machine"


@pytest.fixture
def daemon() -> Iterator[MachineDaemon]:
    with running_daemon("dex") as d:
        yield d


def call(d: MachineDaemon, op: str, **args: Any) -> Any:
    with ControlClient(d.run_dir, timeout=OS_EDGE_TIMEOUT) as c:
        return c.call(op, **args)


def on_executor(d: MachineDaemon, fn: Callable[[], Any]) -> Any:
    return d.executor.submit(fn).result(OS_EDGE_TIMEOUT)


def xs_socket(d: MachineDaemon) -> XsClient:
    return XsClient.unix(str(d.xenstored_path))


def xenstore_tool(d: MachineDaemon, tool: str, *args: str) -> str:
    return subprocess.run(
        [require_executable(tool), *args],
        env={**os.environ, "XENSTORED_PATH": str(d.xenstored_path)},
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=True,
    ).stdout


def guest_cfg(tmp_path: Path, name: str, pci: str) -> str:
    return f'name = "{name}"\nmemory = 48\npci = ["{pci}"]\n'


def create(d: MachineDaemon, tmp_path: Path, name: str, pci: str) -> int:
    call(d, "pci-assignable-add", bdf=pci)
    res = call(d, "create", config=guest_cfg(tmp_path, name, pci))
    xs = xs_socket(d)
    try:
        lp.wait_for_backend_state(xs, res["domid"], timeout=OS_EDGE_TIMEOUT)
    finally:
        xs.close()
    return int(res["domid"])


@pytest.mark.interop
def test_every_piece_of_machine_work_runs_on_the_executor_thread(
    daemon: MachineDaemon, tmp_path: Path
) -> None:
    assert daemon.machine is not None
    machine = daemon.machine
    threads: list[str] = []
    handled: list[str] = []
    lock = threading.Lock()
    clock = daemon.executor.clock

    # Probes: the trace takes every stored record's time from its clock (pciback,
    # libxl, hypervisor, XenStore records alike), and the store handles every
    # request, in-process, ring or socket, through ``handle``.
    def probe_clock() -> float:
        with lock:
            threads.append(threading.current_thread().name)
        return clock.now()

    store = machine.store
    handle = store.handle

    def probe_handle(*a: Any, **kw: Any) -> Any:
        with lock:
            handled.append(threading.current_thread().name)
        return handle(*a, **kw)

    def install() -> None:
        machine.trace.use_clock(probe_clock)
        store.handle = probe_handle  # type: ignore[method-assign]

    on_executor(daemon, install)
    domid = create(daemon, tmp_path, "g", "03:00.0")
    before = len(handled)
    # the C client over the daemon's socket: its requests too are executor work
    assert xenstore_tool(daemon, "xenstore-read", f"/local/domain/{domid}/name") == "g\n"
    assert len(handled) > before
    assert any(d["name"] == "g" for d in call(daemon, "list"))
    call(daemon, "pause", domain="g")
    call(daemon, "unpause", domain="g")
    call(daemon, "destroy", domain="g")
    call(daemon, "pci-assignable-remove", target="03:00.0")
    with lock:
        seen_threads, seen_handled = set(threads), set(handled)
    # pciback, libxl and the guests' XenStore requests made records meanwhile
    assert len(threads) > 100 and len(handled) > 100, (len(threads), len(handled))
    assert seen_threads == {EXECUTOR}, seen_threads
    assert seen_handled == {EXECUTOR}, seen_handled


@pytest.mark.interop
def test_a_real_xenstore_write_wakes_a_waiting_libxl_step(daemon: MachineDaemon) -> None:
    assert daemon.machine is not None
    xs = daemon.machine.xs
    state = f"{lp.backend_path(0)}/state"
    on_executor(daemon, lambda: xs.write(state, "1"))
    # a libxl step on the toolstack's lane: waits (watching the node) for Connected
    step = daemon.executor.submit(
        lambda: lp.wait_for_backend_state(xs, 0, timeout=OS_EDGE_TIMEOUT),
        daemon.executor.lane("libxl-step"),
    )
    # Work submitted after it runs while it waits (its lane is busy, ours is not):
    # when this answers, the step is in its wait, watching the node.
    assert on_executor(daemon, lambda: xs.read(state)) == b"1"
    assert not step.done()
    xenstore_tool(daemon, "xenstore-write", state, "4")
    assert step.result(OS_EDGE_TIMEOUT) is None  # reached Connected: no exception
    assert on_executor(daemon, lambda: xs.read(state)) == b"4"


def _send_line(sock: socket.socket, rid: int, op: str, **args: Any) -> None:
    sock.sendall(Request(rid, op, args).encode())


def test_a_client_gone_mid_op_and_a_flooding_client_stall_nothing(
    daemon: MachineDaemon, tmp_path: Path
) -> None:
    domid = create(daemon, tmp_path, "g", "03:00.0")
    for bdf in ("04:00.0", "07:00.0"):
        call(daemon, "pci-assignable-add", bdf=bdf)
    call(daemon, "pause", domain="g")
    call(daemon, "pci-attach", domain="g", spec="04:00.0")  # Reconfiguring; nobody answers
    # A client starts an attach that waits on the paused guest, then goes away.
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    gone.connect(str(daemon.control_path))
    _send_line(gone, 1, "pci-attach", domain="g", spec="07:00.0")
    watcher = xs_socket(daemon)
    try:
        # claimed for the guest: from here the op waits for Connected
        wait_node(watcher, "/libxl/pci/0000-07-00-0/domid", str(domid), OS_EDGE_TIMEOUT)
    finally:
        watcher.close()
    gone.close()
    # A client floods lines and never reads a reply.
    flood = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    flood.connect(str(daemon.control_path))
    flood.setblocking(False)
    sent = 0
    line = Request(0, "list", {}).encode()
    try:
        while sent < 4 << 20:
            sent += flood.send(line * 256)
    except BlockingIOError:
        pass  # its socket is full: the daemon stopped reading it, as it should
    # Meanwhile everyone else is answered: status, list, and the unpause that lets
    # the abandoned attach finish (on the executor, with nobody left to tell).
    assert call(daemon, "status")["domains"] == 2
    assert any(d["name"] == "g" and d["state"] == "--p---" for d in call(daemon, "list"))
    call(daemon, "unpause", domain="g")
    # pci-assignable-list is a serial op: it queues on the toolstack's lane behind
    # the abandoned attach, so its answer means the attach has ended. (pci-list is
    # not serial, as libxl_device_pci_list takes no lock: it could run mid-attach.)
    call(daemon, "pci-assignable-list")
    bdfs = {e["bdf"] for e in call(daemon, "pci-list", domain="g")}
    assert bdfs == {"0000:03:00.0", "0000:04:00.0", "0000:07:00.0"}, bdfs
    flood.close()
    # the executor still answers a fresh client at once, and stops cleanly (fixture)
    assert call(daemon, "status")["domains"] == 2


def test_a_decoded_reply_names_its_request(daemon: MachineDaemon) -> None:
    # malformed lines are answered on the executor too, connection kept
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(OS_EDGE_TIMEOUT)
        s.connect(str(daemon.control_path))
        s.sendall(b'{"id": 7, "op": 3}\n' + Request(8, "status", {}).encode())
        buf = b""
        while buf.count(b"\n") < 2:
            chunk = s.recv(65536)
            assert chunk
            buf += chunk
    first, second = buf.split(b"\n")[:2]
    bad, good = decode_response(first), decode_response(second)
    assert bad.id == 7 and not bad.ok
    assert good.id == 8 and good.ok


def test_shutdown_op_stops_the_executor_and_every_edge_thread(tmp_path: Path) -> None:
    d = MachineDaemon(tmp_path / "m", HostDescription(), timeout=THREADED_MODEL_TIMEOUT)
    d.start()
    server = threading.Thread(target=d.serve_forever, name="main-loop")
    server.start()
    try:
        call(d, "shutdown")
        server.join(OS_EDGE_TIMEOUT)
        assert not server.is_alive()
    finally:
        d.stop()
    assert d.executor.stopping
    assert d._executor_thread is not None and not d._executor_thread.is_alive()
    with pytest.raises(ExecutorStopped):  # late work fails at once, never hangs
        d.executor.submit(lambda: None).result(0)
    alive = {t.name for t in threading.enumerate()}
    assert not alive & {EXECUTOR, "xenpci-control"}, alive
    assert not (tmp_path / "m").exists()  # the directory it made is gone, sockets first
