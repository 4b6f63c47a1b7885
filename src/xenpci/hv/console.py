"""The hypervisor console ring: what ``xl dmesg`` reads.

Mirrors ``xen/drivers/char/console.c``'s ``conring``: a fixed-size ring of the
messages Xen ``printk``s, read (and optionally cleared) by the toolstack with
``XEN_SYSCTL_readconsole``. Each line carries Xen's ``(XEN) `` prefix, and the
guest-context ones ``gprintk``'s ``dNvM`` prefix.

Deliberate differences: the ring holds whole lines (``conring`` holds bytes and
overwrites the oldest bytes, possibly half a line); its bound is a line count.
Only what this model detects is printed: IOMMU faults, writes dropped on a
protected (MSI-X) page, and refused mappings or interrupt bindings. Xen prints
the mapping refusal with ``gdprintk`` (debug builds only); we always print it,
because that refusal is the point of the demo's second guest. The lines for a
refused I/O port access and a refused pirq binding are ours: Xen refuses those
silently (a #GP, an error code).
"""

from __future__ import annotations

import threading
from collections import deque

#: Lines kept (Xen's ``conring_size`` defaults to 16 KiB of bytes; ~200 lines of these).
CONSOLE_LINES = 256


class Console:
    """A bounded, thread-safe ring of console lines."""

    def __init__(self, max_lines: int = CONSOLE_LINES) -> None:
        if max_lines <= 0:
            raise ValueError("the console ring needs room for one line")
        self._lock = threading.Lock()
        self._ring: deque[str] = deque(maxlen=max_lines)

    def printk(self, message: str) -> None:
        """Append one message as ``(XEN) message`` (each of its lines, if several)."""
        lines = [f"(XEN) {line}" for line in message.splitlines() or [""]]
        with self._lock:
            self._ring.extend(lines)

    def gprintk(self, domid: int, message: str) -> None:
        """``gprintk``: a message in a guest's context, prefixed ``dNv0`` (one vCPU each)."""
        self.printk(f"d{domid}v0 {message}")

    def read(self, *, clear: bool = False) -> list[str]:
        """The lines in the ring, oldest first (``xl dmesg [-c]``)."""
        with self._lock:
            out = list(self._ring)
            if clear:
                self._ring.clear()
        return out
