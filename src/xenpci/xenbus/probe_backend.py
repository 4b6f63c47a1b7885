"""The backend bus: one device per directory under ``/local/domain/0/backend/<type>``.

Mirrors Linux ``drivers/xen/xenbus/xenbus_probe_backend.c``: a watch on the
backend type's directory (``backend_changed`` -> ``xenbus_dev_changed``)
probes a device for each ``<domid>/<devid>`` that appears and removes the
device whose directory went. Drivers (blkback's ``vbd``, pciback's ``pci``)
subclass :class:`XenbusBackendBus` and say which keys are present and how to
build a device; a driver that names the keys an event concerns
(:meth:`XenbusBackendBus._scope`, as ``xenbus_dev_changed`` looks up the
device of the event's path) has only those re-examined.

Deliberate differences: without a scope, a whole rescan per event (the
directories are few); a device whose probe fails is
removed at once and forgotten (Linux keeps it bound to a failed driver); a
driver may call a device stale (:meth:`XenbusBackendBus._stale`, e.g. its node
was deleted and re-created before the deletion was seen) to have it removed
and probed afresh.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, Protocol, Self, TypeVar

from xenpci.errors import XenpciError
from xenpci.hv.scheduler import wait_for

if TYPE_CHECKING:
    from xenpci.xenstore.client import WatchEvent, XsClient


class BackendDevice(Protocol):
    """What the bus needs of a backend device."""

    def probe(self) -> None: ...

    def remove(self) -> None: ...


#: A device's key: the frontend's domid, or (domid, devid).
K = TypeVar("K", int, tuple[int, int])
D = TypeVar("D", bound=BackendDevice)


class XenbusBackendBus(Generic[K, D]):
    """Watches ``root`` and keeps :attr:`devices` in step with its directories."""

    def __init__(self, xs: XsClient, root: str, token: str) -> None:
        self.xs = xs
        self.root = root
        self.devices: dict[K, D] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._token = token
        self._started = False

    # -- what a driver provides -------------------------------------------------
    def _scope(self, path: str) -> set[K] | None:
        """The keys an event at ``path`` concerns; None: re-examine every key."""
        return None

    def _present(self, scope: set[K] | None) -> set[K]:
        """The keys (within ``scope``, or all) whose backend directory can be probed."""
        raise NotImplementedError

    def _new_device(self, key: K) -> D:
        raise NotImplementedError

    def _stale(self, dev: D) -> bool:
        """Is this still-present device stale (its node belongs to a new device)?"""
        return False

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._started = True
        self.xs.watch(self.root, self._token, self._backend_changed)

    def stop(self) -> None:
        with self._lock:
            if self._started:
                self._started = False
                with contextlib.suppress(XenpciError):
                    self.xs.unwatch(self.root, self._token)
            for dev in list(self.devices.values()):
                dev.remove()
            self.devices.clear()

    def wait(self, predicate: Callable[[Self], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate(self)`` holds after a device probe/removal."""
        with self._changed:
            return wait_for(self._changed, lambda: predicate(self), timeout, self.xs.executor)

    def _wait_device(self, key: K, timeout: float, missing: str) -> D:
        """The device ``key`` once probed; ``TimeoutError(missing)`` if it never is."""
        with self._changed:
            if not wait_for(self._changed, lambda: key in self.devices, timeout, self.xs.executor):
                raise TimeoutError(missing)
            return self.devices[key]

    # -- the watch -----------------------------------------------------------------
    def _backend_changed(self, ev: WatchEvent) -> None:
        with self._lock:
            if not self._started:
                return
            scope = self._scope(ev.path)
            present = self._present(scope)
            known = set(self.devices) if scope is None else set(self.devices) & scope
            for key in sorted(known - present):
                self.devices.pop(key).remove()
            for key in sorted(present & set(self.devices)):
                if self._stale(self.devices[key]):
                    self.devices.pop(key).remove()
            for key in sorted(present - set(self.devices)):
                self._probe(key)
            self._changed.notify_all()

    def _probe(self, key: K) -> None:
        dev = self._new_device(key)
        self.devices[key] = dev
        try:
            dev.probe()
        except XenpciError:
            del self.devices[key]
            dev.remove()
