"""Small helpers shared by the split-driver tests (set-up through libxl_pci)."""

from __future__ import annotations

from collections.abc import Callable

from xenpci.abi.xs_wire import XS_WATCH
from xenpci.guest.kernel import GuestKernel
from xenpci.pci.address import SBDF
from xenpci.pci.function import PciFunction
from xenpci.pciback.conf_space import DeviceOptions
from xenpci.pcifront.xenbus import Pcifront
from xenpci.toolstack.machine import Machine, boot_guest
from xenpci.xenstore.core import XenStore
from xenpci.xenstore.wire import encode, strings


def boot_guest_with(
    m: Machine,
    functions: list[PciFunction],
    name: str = "guest",
    *,
    options: DeviceOptions | None = None,
    permissive: bool = False,
) -> tuple[int, GuestKernel, Pcifront]:
    """Put ``functions`` on the host, seize them, start a guest with them: ``xl create``'s
    path (:func:`xenpci.toolstack.machine.boot_guest`), then wait for pcifront."""
    domid = boot_guest(m, functions, name, options=options, permissive=permissive)
    kernel = m.guest(domid)
    # the model's own deadlines: virtual on a deterministic machine, real on a threaded one
    front = kernel.wait_for_pcifront()
    assert front.wait_connected(1), front.xenbus.history
    return domid, kernel, front


def until(m: Machine, done: Callable[[], bool]) -> None:
    """Drive a deterministic machine until ``done()``: no timeout to guess.

    The executor runs every runnable task and jumps its virtual clock to the next
    timer when none is; if nothing can ever make ``done()`` true it raises
    ``Deadlock`` instead of waiting.
    """
    ex = m.hv.scheduler
    assert ex is not None, "until() drives a deterministic machine"
    ex.run_until(done)


def sbdf(text: str) -> SBDF:
    return SBDF.parse(text)


class StateLog:
    """Every value a ``state`` node takes, observed inside xenstored itself.

    A dom0 connection watches the node; its ``notify`` runs in the writer's
    thread as soon as the write (or the commit of a transaction) that fired the
    watch has been handled (the store calls it right after releasing its lock)
    and reads the node there, before that writer's client gets its reply, so
    the causal state handshakes here cannot skip a value the way a client-side
    watch callback could. ``None`` = removed.
    """

    def __init__(self, store: XenStore, path: str) -> None:
        self.path = path
        self.values: list[int | None] = []
        self._store = store
        self._conn = store.connection(0)
        self._conn.notify = self._event
        self._conn.feed(encode(XS_WATCH, 1, 0, strings(path, "statelog")))

    def _event(self) -> None:
        self._conn.take_output()
        node = self._store.tree.get(self.path)
        value = int(node.value) if node is not None and node.value else None
        if not self.values or self.values[-1] != value:
            self.values.append(value)

    def close(self) -> None:
        self._conn.close()
