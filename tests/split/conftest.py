"""Fixtures for the split-driver tests: a machine that is always shut down."""

from __future__ import annotations

import threading
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
    # vCPU threads and XenStore dispatchers must not outlive the machine
    # (client callback threads are daemonic and end with their queue).
    assert threading.active_count() <= before + 8
