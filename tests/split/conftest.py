"""Fixtures for the split-driver tests: a machine that is always shut down."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from xenpci.toolstack.machine import Machine


@pytest.fixture
def machine() -> Iterator[Machine]:
    before = set(threading.enumerate())
    m = Machine(op_timeout=2.0)
    try:
        yield m
    finally:
        m.shutdown()
    # vCPU threads, ring readers and XenStore dispatchers must not outlive the machine.
    # Joined, not polled: a thread told to stop may need a while on a loaded machine.
    deadline = time.monotonic() + 15
    for t in set(threading.enumerate()) - before:
        t.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in set(threading.enumerate()) - before]
    assert not left, left
