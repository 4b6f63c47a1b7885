"""Fixtures: a bare hypervisor with the catalog NIC on its bus, and full machines with guests.

Every fixture shuts its machine down, and checks that no vCPU thread is left.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import xenpci.toolstack as toolstack
from xenpci.demo import NIC, NVME, UART
from xenpci.devices.nic import NicFunction
from xenpci.guest.kernel import GuestKernel
from xenpci.hv import PAGE_SHIFT, Domain, Hypervisor
from xenpci.pci.address import SBDF
from xenpci.pciback.platform import prepare_msix
from xenpci.toolstack.host import HostDescription, boot_machine
from xenpci.toolstack.libxl import Libxl
from xenpci.toolstack.machine import Machine
from xenpci.toolstack.xlcfg import load_domain_config_file

EXAMPLES = Path(toolstack.__file__).parent / "examples"
NIC_BAR0 = 0xC000_0000
NIC_BAR3 = 0xC002_0000


def vcpu_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "v0-" in t.name}


@contextlib.contextmanager
def no_vcpu_thread_left() -> Iterator[None]:
    """Around a boot and its shutdown: no vCPU thread may outlive the block."""
    before = vcpu_threads()
    yield
    assert vcpu_threads() <= before, "shutdown left vCPU threads running"


@dataclass
class BareNic:
    """A hypervisor, one guest granted the NIC's BARs, the NIC wired to the bus."""

    hv: Hypervisor
    guest: Domain
    nic: NicFunction


@contextlib.contextmanager
def make_bare_nic() -> Iterator[BareNic]:
    with no_vcpu_thread_left():
        hv = Hypervisor(ram_frames=8192, dom0_memory_kib=1024, deterministic=True)
        try:
            nic = NicFunction(SBDF.parse("0000:03:00.0"))
            nic.assign_bar(0, NIC_BAR0)
            nic.assign_bar(3, NIC_BAR3)
            hv.iobus.register_mmio(NIC_BAR0, 0x20000, nic.bar_handler(0))
            hv.iobus.register_mmio(NIC_BAR3, 0x4000, nic.bar_handler(3))
            nic.attach_dma(hv.iommu.dma_port(nic.sbdf.sbdf_int))
            nic.config_write(0x04, 2, 0x6)  # memory decode + bus master, as dom0 left it
            guest = hv.create_domain("guest", 1024)
            d0 = hv.dom0.hypercalls
            d0.iomem_permission(guest.domid, NIC_BAR0 >> PAGE_SHIFT, 0x20, True)
            d0.iomem_permission(guest.domid, NIC_BAR3 >> PAGE_SHIFT, 4, True)
            assert prepare_msix(d0, nic)
            yield BareNic(hv, guest, nic)
        finally:
            hv.shutdown()


@pytest.fixture
def bare_nic() -> Iterator[BareNic]:
    with make_bare_nic() as b:
        yield b


@dataclass
class Guests:
    machine: Machine
    lx: Libxl
    g1: GuestKernel
    g2: GuestKernel


def boot_guests(iommu: bool = True) -> Guests:
    machine = boot_machine(HostDescription(iommu=iommu), deterministic=True)
    lx = Libxl(machine, machine.xs, trace=machine.trace)
    for sbdf in (NIC, NVME, UART):
        lx.assignable_add(sbdf)  # pciback protects the MSI-X table at seize
    kernels = []
    for name in ("guest1", "guest2"):
        cfg = load_domain_config_file(EXAMPLES / f"{name}.cfg")
        domid = lx.domain_create(cfg, allow_unsafe=not iommu)
        kernel = machine.guest(domid)
        assert kernel.wait_for_pcifront().wait_connected(1)
        kernels.append(kernel)
    return Guests(machine, lx, kernels[0], kernels[1])


@pytest.fixture
def guests() -> Iterator[Guests]:
    with no_vcpu_thread_left():
        g = boot_guests()
        try:
            yield g
        finally:
            g.machine.shutdown()
