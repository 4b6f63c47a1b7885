"""Fixtures for the split-driver tests: a machine that is always shut down."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from xenpci.toolstack.machine import Machine


@pytest.fixture
def machine() -> Iterator[Machine]:
    before = threading.active_count()
    m = Machine(op_timeout=2.0)
    try:
        yield m
    finally:
        m.shutdown()
    # vCPU threads, ring readers and XenStore dispatchers must not outlive the machine
    deadline = time.monotonic() + 2
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before, [t.name for t in threading.enumerate()]
