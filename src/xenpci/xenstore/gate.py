"""The one way several threads enter one XenStore (the threaded machine's serialization).

C xenstored is a single thread: requests from every connection are handled
one after another. :mod:`xenpci.xenstore.core` keeps that shape and holds no
lock. Where the model runs XenStore's callers on several threads (the
threaded :class:`~xenpci.toolstack.machine.Machine`: vCPU threads serving
guest rings, in-process clients on pciback's and the toolstack's threads, the
Unix-socket server), each call enters through the store's gate: ``with
gate_of(store): conn.feed(data)``. The gate is a re-entrant lock plus one
rule: the transports a request wakes (``notify``, introduce/release hooks)
run after the lock is released, never under it, so a transport may take its
own locks or post work without ordering against the store's.

The deterministic executor and the standalone ``xenpci xenstored`` daemon
call the store from one thread; entering the gate there is harmless
(uncontended), and their hot paths may skip it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from types import TracebackType

from xenpci.xenstore.core import XenStore


class Gate:
    """Serializes threads' calls into one store; runs their wake-ups after leaving."""

    __slots__ = ("__weakref__", "_depth", "_lock", "store")

    def __init__(self, store: XenStore) -> None:
        self.store = store
        self._lock = threading.RLock()
        self._depth = 0

    def __enter__(self) -> XenStore:
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1:
            self.store.deferred = []
        return self.store

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        wake: list[Callable[[], None]] = []
        if not self._depth:
            wake = self.store.deferred or []
            self.store.deferred = None
        self._lock.release()
        for fn in wake:
            fn()


_gates: weakref.WeakKeyDictionary[XenStore, Gate] = weakref.WeakKeyDictionary()
_gates_lock = threading.Lock()


def gate_of(store: XenStore) -> Gate:
    """The gate of ``store``: one per store, shared by every transport that uses it."""
    gate = _gates.get(store)
    if gate is None:
        with _gates_lock:
            gate = _gates.get(store)
            if gate is None:
                gate = _gates[store] = Gate(store)
    return gate
