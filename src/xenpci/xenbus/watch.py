"""The thin shell that drives a :class:`~xenpci.xenbus.state.XenbusDevice` from XenStore.

Models the watch plumbing of ``drivers/xen/xenbus/xenbus_probe.c``
(``watch_otherend`` -> ``xenbus_otherend_changed``, reading the state with
``xenbus_read_driver_state``) and the write side of ``xenbus_client.c``
(``xenbus_switch_state`` writes ``<nodename>/state``; ``xenbus_dev_fatal``
writes the error node). All protocol decisions are in the sans-IO core; this
module only reads nodes, writes nodes and calls the driver.

Works with any client offering ``read(path) -> bytes``, ``write(path, value)``,
``watch(path, token, callback)`` and ``unwatch(path, token)``, such as
:class:`xenpci.xenstore.client.XsClient` (whose callbacks run on its own
dispatcher thread; a lock here serialises them with :meth:`XenbusWatch.probe`).

Differences: Linux's backend watches its whole node and reacts to any
change; here the own-node watch also treats a ``state`` value written by
someone else (libxl's hot-plug ``state = 7``) as a local switch request, so
the toolstack's write goes through :data:`~xenpci.xenbus.state.TRANSITIONS`.
A state node holding garbage reads as Unknown, as in Linux, and the parse
error is kept in :attr:`XenbusWatch.errors`; no input from the other end can
raise out of a watch callback.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any, Protocol

from xenpci.abi.xenbus import XenbusState
from xenpci.errors import XenpciError
from xenpci.xenbus.state import (
    Action,
    Call,
    DriverCallback,
    InvalidStateValue,
    Role,
    StateError,
    WriteError,
    WriteState,
    XenbusDevice,
    XenbusError,
    parse_state,
)

Driver = Callable[[DriverCallback], None]
_tokens = itertools.count()


class XenStoreLike(Protocol):
    """What the shell needs from a XenStore client."""

    def read(self, path: str) -> bytes: ...

    def write(self, path: str, value: bytes | str) -> None: ...

    def watch(self, path: str, token: str, callback: Callable[[Any], None]) -> None: ...

    def unwatch(self, path: str, token: str) -> None: ...


class XenbusWatch:
    """Connect one device end to XenStore: ``nodename`` is ours, ``otherend`` theirs."""

    def __init__(
        self,
        client: XenStoreLike,
        device: XenbusDevice,
        nodename: str,
        otherend: str,
        driver: Driver | None = None,
        error_path: str | None = None,
    ) -> None:
        self.client = client
        self.device = device
        self.nodename = nodename.rstrip("/")
        self.otherend = otherend.rstrip("/")
        self.driver = driver
        self.error_path = error_path
        #: Every error an input caused (bad state values, refused requests, driver failures).
        self.errors: list[XenpciError] = []
        #: Every driver callback made, in order.
        self.calls: list[DriverCallback] = []
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._watches: list[tuple[str, str]] = []
        #: The state this shell last wrote to ``<nodename>/state``.
        self._written = device.state

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Probe the device, then watch the other end (and, for a backend, our node)."""
        with self._lock:
            self._apply(self.device.probe())
        self._watch(f"{self.otherend}/state", self._on_otherend)
        if self.device.role is Role.BACKEND:
            self._watch(self.nodename, self._on_own_node)

    def close(self) -> None:
        """Drop the watches (the device state stays as it is)."""
        for path, token in self._watches:
            try:
                self.client.unwatch(path, token)
            except XenpciError as e:  # the connection may already be gone
                self.errors.append(e)
        self._watches.clear()

    def switch_state(self, new: XenbusState) -> None:
        """A local request (e.g. the toolstack asks for Closing)."""
        with self._lock:
            self._apply(self.device.switch_state(new))

    def wait_for(self, predicate: Callable[[XenbusDevice], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(device)`` holds; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.device), timeout)

    # -- watch callbacks ----------------------------------------------------

    def _watch(self, path: str, handler: Callable[[], None]) -> None:
        token = f"xenbus-{self.device.role.value}-{next(_tokens)}"
        self.client.watch(path, token, lambda _event: self._guarded(handler))
        self._watches.append((path, token))

    def _guarded(self, handler: Callable[[], None]) -> None:
        with self._lock:
            try:
                handler()
            except XenpciError as e:
                self.errors.append(e)
            self._changed.notify_all()

    def _read_state(self, path: str) -> XenbusState | None:
        """``xenbus_read_driver_state``; None means "ignore this event"."""
        try:
            raw = self.client.read(path)
        except XenpciError:
            # a missing or unreadable node reads as XenbusStateUnknown
            return XenbusState.XenbusStateUnknown
        try:
            return parse_state(raw)
        except InvalidStateValue as e:
            self.errors.append(e)
            if raw.strip(b"\x00").strip().isdigit():
                # a number outside enum xenbus_state: the drivers' switch
                # statements have no case for it and do nothing
                return None
            # not a number at all: xenbus_gather("%d") fails -> Unknown
            return XenbusState.XenbusStateUnknown

    def _sync_own(self) -> None:
        # Linux drivers read their own state node (xen_pcibk_attach and
        # xen_pcibk_reconfigure call xenbus_read_driver_state on nodename), so
        # a state the toolstack wrote counts even if our own-node watch has
        # not fired yet. Here that write is a local switch request.
        if self.device.role is not Role.BACKEND:
            return
        written = self._read_state(f"{self.nodename}/state")
        if written is None or written is XenbusState.XenbusStateUnknown:
            return
        if written is not self.device.state:
            try:
                self._apply(self.device.switch_state(written))
            except StateError as e:
                self.errors.append(e)  # refused; the device keeps its state

    def _on_otherend(self) -> None:
        if self.device.state is XenbusState.XenbusStateUnknown:
            return  # removed: later events are stale
        self._sync_own()
        new = self._read_state(f"{self.otherend}/state")
        if new is None:
            return
        if new is self.device.otherend and new is not XenbusState.XenbusStateUnknown:
            return  # the watch fired for a write that did not change the state
        self._apply(self.device.otherend_changed(new))

    def _on_own_node(self) -> None:
        if self.device.state is XenbusState.XenbusStateUnknown:
            return
        self._sync_own()
        self._apply(self.device.own_node_changed())

    # -- actions ----------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        for act in actions:
            if isinstance(act, WriteState):
                self.client.write(f"{self.nodename}/state", str(int(act.state)))
                self._written = act.state
            elif isinstance(act, WriteError):
                if self.error_path is not None:
                    self.client.write(self.error_path, act.message)
            elif isinstance(act, Call):
                self.calls.append(act.callback)
                if self.driver is None:
                    continue
                try:
                    self.driver(act.callback)
                except XenbusError:
                    raise
                except XenpciError as e:
                    # the driver step failed: xenbus_dev_fatal, and the rest
                    # of this input's writes never happen
                    self.errors.append(e)
                    msg = f"{act.callback.value}: {e}"
                    self._apply(self.device.driver_failed(self._written, msg))
                    return
        self._changed.notify_all()
