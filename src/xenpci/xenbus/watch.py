"""The thin shell that drives a :class:`~xenpci.xenbus.state.XenbusDevice` from XenStore.

Models the watch plumbing of ``drivers/xen/xenbus/xenbus_probe.c``
(``watch_otherend`` -> ``xenbus_otherend_changed``, reading the state with
``xenbus_read_driver_state``) and the write side of ``xenbus_client.c``
(``xenbus_switch_state`` writes ``<nodename>/state``; ``xenbus_dev_fatal``
writes the error node). All protocol decisions are in the sans-IO core; this
module only reads nodes, writes nodes and calls the driver.

Works with any client offering ``read``, ``write``, ``watch``, ``unwatch``
and ``retry_transaction`` (see :class:`XenStoreLike`), such as
:class:`xenpci.xenstore.client.XsClient` (whose callbacks run on its own
dispatcher thread, or as tasks of the deterministic executor; a lock here
serialises them with :meth:`XenbusWatch.probe`). :meth:`XenbusWatch.wait_for`
waits through the client's executor when it has one (a deadline on the
virtual clock), on a condition otherwise.

Two guards Linux has are kept here, so every driver gets them:

* ``xenbus_switch_state`` (``__xenbus_switch_state``) reads ``state`` in a
  transaction and gives up if the node is gone: a plain write from dom0
  (privileged) would re-create a backend node the toolstack just deleted.
* ``unregister_xenbus_watch`` drops the events still queued for a watch and
  waits for a running callback: after :meth:`XenbusWatch.close` no callback
  acts and nothing is written, so a stale event cannot touch a node
  re-created for a new device.

Differences: Linux's backend watches its whole node and reacts to any
change; here the own-node watch also treats a ``state`` value written by
someone else (libxl's hot-plug ``state = 7``) as a local switch request, so
the toolstack's write goes through :data:`~xenpci.xenbus.state.TRANSITIONS`.
A state node holding garbage reads as Unknown, as in Linux, and the parse
error is kept in :attr:`XenbusWatch.errors`; no input from the other end can
raise out of a watch callback. Beyond Linux (which has the same window): if
the toolstack deletes a device's directory and creates it again before this
shell has handled the deletion (``xl pci-detach; xl pci-attach``), the node's
``state`` reads Initialising again; :meth:`XenbusWatch.superseded` notices
that new generation, the stale shell stops acting and writing, and the
driver probes a fresh device.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any, Protocol

from xenpci.abi.xenbus import XenbusState
from xenpci.errors import XenpciError
from xenpci.hv.scheduler import wait_for
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


class XsTransactionLike(Protocol):
    """What :meth:`XenbusWatch` needs from an open transaction."""

    def exists(self, path: str) -> bool: ...

    def read(self, path: str) -> bytes: ...

    def write(self, path: str, value: bytes | str) -> None: ...


class XenStoreLike(Protocol):
    """What the shell needs from a XenStore client."""

    def read(self, path: str) -> bytes: ...

    def retry_transaction(self, fn: Callable[[Any], Any]) -> Any: ...

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
        self._closed = False
        self._superseded = False
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
        """Drop the watches (the device state stays as it is); later events are ignored.

        Like ``unregister_xenbus_watch``: events already queued are dropped and a
        callback running on another thread is waited for, so once this returns
        nothing acts for this device any more.
        """
        self._closed = True
        with self._lock:
            pass  # a callback in progress finishes; the next ones see _closed
        for path, token in self._watches:
            try:
                self.client.unwatch(path, token)
            except XenpciError as e:  # the connection may already be gone
                self.errors.append(e)
        self._watches.clear()

    def remove(self) -> None:
        """``xenbus_dev_remove``: the device is unregistered (its node went, or the
        driver unbinds). Stop the watches, then close and forget the device:
        Closed is written only if our node still exists, the driver gets its
        disconnect/remove callbacks, and the device ends in Unknown."""
        self.close()
        with self._lock:
            if self.device.state is XenbusState.XenbusStateUnknown:
                return
            try:
                self._apply(self.device.otherend_vanished(), closing=True)
            except XenpciError as e:
                self.errors.append(e)
            self._changed.notify_all()

    def superseded(self) -> bool:
        """Has the toolstack re-created our node for a new device?

        libxl deletes a device's directories and may create them again (a
        re-attach) before this device has handled the deletion. Only the
        toolstack ever writes Initialising, and only when it creates the
        node; so our ``state`` reading Initialising although this device has
        left that state means the node now belongs to a new device: this
        one is stale, must not act or write, and its driver re-probes.
        """
        if self._superseded:
            return True
        if self.device.history == [XenbusState.XenbusStateInitialising]:
            return False  # not probed yet: Initialising is still ours
        try:
            raw = self.client.read(f"{self.nodename}/state")
        except XenpciError:
            return False  # gone, not re-created (yet)
        self._superseded = _is_initialising(raw)
        return self._superseded

    def switch_state(self, new: XenbusState) -> None:
        """A local request (e.g. the toolstack asks for Closing)."""
        with self._lock:
            if self._closed:
                return
            self._apply(self.device.switch_state(new))

    def wait_for(self, predicate: Callable[[XenbusDevice], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(device)`` holds; False on timeout."""
        with self._changed:
            return wait_for(
                self._changed,
                lambda: predicate(self.device),
                timeout,
                getattr(self.client, "executor", None),
            )

    # -- watch callbacks ----------------------------------------------------

    def _watch(self, path: str, handler: Callable[[], None]) -> None:
        token = f"xenbus-{self.device.role.value}-{next(_tokens)}"
        self.client.watch(path, token, lambda _event: self._guarded(handler))
        self._watches.append((path, token))

    def _guarded(self, handler: Callable[[], None]) -> None:
        with self._lock:
            if self._closed or self.superseded():
                return  # queued before close, or our node is a new device's now
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

    def _write_state(self, state: XenbusState) -> None:
        """``__xenbus_switch_state``: write ``state`` only if the node still exists."""
        path = f"{self.nodename}/state"
        value = str(int(state))

        def body(t: XsTransactionLike) -> bool:
            if not t.exists(path):
                return False  # removed (by the toolstack): never re-create it
            if self._superseded or (
                self.device.history[:2] != [XenbusState.XenbusStateInitialising, state]
                and _is_initialising(t.read(path))
            ):
                # re-created for a new device since we last looked: not ours to write
                self._superseded = True
                return False
            t.write(path, value)
            return True

        if self.client.retry_transaction(body):
            self._written = state

    def _apply(self, actions: list[Action], *, closing: bool = False) -> None:
        for act in actions:
            if isinstance(act, WriteState):
                self._write_state(act.state)
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
                    if closing:
                        continue  # going away anyway: the teardown goes on
                    msg = f"{act.callback.value}: {e}"
                    self._apply(self.device.driver_failed(self._written, msg))
                    return
        self._changed.notify_all()


def _is_initialising(raw: bytes) -> bool:
    return raw.strip(b"\x00").strip() == str(int(XenbusState.XenbusStateInitialising)).encode()
