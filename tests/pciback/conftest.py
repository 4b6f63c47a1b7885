"""Fixtures for pciback tests: catalog device models with firmware-assigned
BARs, hand-built functions for capabilities no model has, and a recording
interrupt platform."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from xenpci.devices import catalog
from xenpci.devices.base import DeviceModel
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.config import ConfigSpace, apply_standard_masks
from xenpci.pci.function import PciFunction
from xenpci.pciback.conf_space import DeviceOptions, ModuleParams
from xenpci.pciback.conf_space.dom0_pci import HostFunction
from xenpci.pciback.pci_stub import PciStub, PcistubDevice

NIC_BAR0 = 0xFE000000
NIC_BAR3 = 0xFE020000
GPU_BAR0 = 0xFD000000
GPU_BAR2 = 0x8_0000_0000
GPU_ROM = 0xFC000000
LEGACY_IO = 0xE000
IRQ_LINE = 11


@dataclass
class FakePlatform:
    """Records MSI/MSI-X requests and hands out pirqs from 100 up."""

    next_pirq: int = 100
    calls: list[tuple[str, str, int, object]] = field(default_factory=list)
    refuse: int = 0  # a negative errno to return instead of pirqs
    # MSI-X protection and memory decode requests, kept apart from the interrupt calls.
    lifecycle: list[tuple[str, str, int, object]] = field(default_factory=list)
    refuse_lifecycle: int = 0

    def enable_msi(self, dev: HostFunction, owner: int, nvec: int) -> list[int] | int:
        self.calls.append(("enable_msi", str(dev.sbdf), owner, nvec))
        if self.refuse:
            return self.refuse
        out = list(range(self.next_pirq, self.next_pirq + nvec))
        self.next_pirq += nvec
        return out

    def disable_msi(self, dev: HostFunction) -> None:
        self.calls.append(("disable_msi", str(dev.sbdf), 0, None))

    def enable_msix(self, dev: HostFunction, owner: int, entries: Sequence[int]) -> list[int] | int:
        self.calls.append(("enable_msix", str(dev.sbdf), owner, tuple(entries)))
        if self.refuse:
            return self.refuse
        out = list(range(self.next_pirq, self.next_pirq + len(entries)))
        self.next_pirq += len(entries)
        return out

    def disable_msix(self, dev: HostFunction) -> None:
        self.calls.append(("disable_msix", str(dev.sbdf), 0, None))

    def prepare_msix(self, dev: HostFunction) -> int:
        self.lifecycle.append(("prepare_msix", str(dev.sbdf), 0, None))
        return self.refuse_lifecycle

    def release_msix(self, dev: HostFunction) -> int:
        self.lifecycle.append(("release_msix", str(dev.sbdf), 0, None))
        return self.refuse_lifecycle

    def memory_decode(self, dev: HostFunction, owner: int, enabled: bool) -> int:
        self.lifecycle.append(("memory_decode", str(dev.sbdf), owner, enabled))
        return self.refuse_lifecycle


def firmware(dev: DeviceModel, bars: dict[int, int], irq: int = IRQ_LINE) -> DeviceModel:
    """Program BARs and the interrupt line as the BIOS would before dom0 boots."""
    for index, addr in bars.items():
        dev.assign_bar(index, addr)
    dev.config_write(regs.PCI_INTERRUPT_LINE, 1, irq)
    # The model's reset defaults stay the power-on ones (BARs 0): after a reset,
    # only pciback's saved state can bring the firmware setup back.
    return dev


def make_nic(sbdf: str = "0000:03:00.0") -> DeviceModel:
    (dev,) = catalog.make("nic", sbdf)
    return firmware(dev, {0: NIC_BAR0, 3: NIC_BAR3})


def make_gpu(sbdf: str = "0000:04:00.0") -> DeviceModel:
    (dev,) = catalog.make("gpu", sbdf)
    return firmware(dev, {0: GPU_BAR0, 2: GPU_BAR2, 6: GPU_ROM})


def make_legacy(sbdf: str = "0000:05:00.0") -> DeviceModel:
    (dev,) = catalog.make("legacy", sbdf)
    return firmware(dev, {0: LEGACY_IO})


def make_vpd_function(sbdf: str = "0000:06:00.0") -> PciFunction:
    """A conventional function with a VPD capability at 0x40 (PCI 3.0 §6.4, I.3),
    VPD address writable, F flag included (hardware would start a write)."""
    cs = ConfigSpace(bytes(256), 256)
    cs.poke(0x00, 4, 0x1234_8086)
    cs.poke(regs.PCI_CLASS_REVISION, 4, 0x02000001)
    cs.poke(regs.PCI_STATUS, 2, regs.PCI_STATUS_CAP_LIST)
    cs.poke(regs.PCI_CAPABILITY_LIST, 1, 0x40)
    cs.poke(0x40, 2, regs.PCI_CAP_ID_VPD)  # next = 0
    cs.poke(regs.PCI_BASE_ADDRESS_0, 4, 0xFB000000)
    apply_standard_masks(cs, {0: 0x1000})
    cs.set_wmask(0x42, 2, 0xFFFF)
    cs.set_wmask(0x44, 4, 0xFFFFFFFF)
    return PciFunction(SBDF.parse(sbdf), cs, source="test:vpd", bar_sizes={0: 0x1000})


@pytest.fixture
def platform() -> FakePlatform:
    return FakePlatform()


@pytest.fixture
def params() -> ModuleParams:
    return ModuleParams()


@pytest.fixture
def stub(params: ModuleParams, platform: FakePlatform) -> PciStub:
    return PciStub(params, platform)


def seize(stub: PciStub, hw: HostFunction, domid: int | None = 1, **opts: object) -> PcistubDevice:
    psdev = stub.seize(hw, DeviceOptions(**opts))  # type: ignore[arg-type]
    if domid is not None:
        stub.get_pci_dev(hw.sbdf, domid)
    return psdev
