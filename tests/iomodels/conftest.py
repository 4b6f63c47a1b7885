"""Fixtures: one host with dom0's NVMe driver bound, blkback running, guests on demand."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.datapath.conftest import no_vcpu_thread_left
from xenpci.toolstack.iomodels import IoModelsHost, boot_iomodels_host


@pytest.fixture
def host() -> Iterator[IoModelsHost]:
    with no_vcpu_thread_left():
        h = boot_iomodels_host()
        try:
            yield h
        finally:
            h.shutdown()
