"""Fixtures for the split-driver tests: a deterministic machine that is always shut down.

The machine runs on the test's own thread (one executor, a virtual clock):
waits are deadlines on that clock, so no test depends on how loaded the box
is. The few tests of the threaded mode build their own ``Machine()``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from xenpci.pcifront.ops import DEFAULT_OP_TIMEOUT
from xenpci.toolstack.machine import Machine


@pytest.fixture
def machine() -> Iterator[Machine]:
    before = set(threading.enumerate())
    m = Machine(op_timeout=DEFAULT_OP_TIMEOUT, deterministic=True)
    try:
        yield m
    finally:
        m.shutdown()
    # Deterministic: not one thread was started (no vCPU, ring reader or dispatcher).
    assert set(threading.enumerate()) <= before
