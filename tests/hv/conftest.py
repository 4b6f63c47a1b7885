"""Fixtures: a small machine that is always shut down, with no vCPU thread left behind."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from xenpci.hv import Domain, Hypervisor


def vcpu_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("d") and "v0-" in t.name]


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    before = set(vcpu_threads())
    machine = Hypervisor(ram_frames=8192, dom0_memory_kib=1024)
    yield machine
    machine.shutdown()
    assert set(vcpu_threads()) <= before, "shutdown left vCPU threads running"


@pytest.fixture
def dhv() -> Iterator[Hypervisor]:
    """The deterministic machine: every vCPU's work runs on the test's thread when driven."""
    machine = Hypervisor(ram_frames=8192, dom0_memory_kib=1024, deterministic=True)
    yield machine
    machine.shutdown()


@pytest.fixture
def dguest(dhv: Hypervisor) -> Domain:
    return dhv.create_domain("guest", 256)


@pytest.fixture
def nohv() -> Iterator[Hypervisor]:
    machine = Hypervisor(iommu=False, ram_frames=8192, dom0_memory_kib=1024)
    yield machine
    machine.shutdown()


@pytest.fixture
def guest(hv: Hypervisor) -> Domain:
    return hv.create_domain("guest", 256)


def drain(*doms: Domain) -> None:
    """Wait until every upcall queued so far on these vCPUs has run (they are FIFO)."""
    for d in doms:
        if not d.dying:
            d.call(lambda: None)
