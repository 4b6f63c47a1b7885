"""Config-space register semantics of the models, checked against the PCI/PCIe specs."""

from __future__ import annotations

import pytest

from tests.devices.conftest import enable
from xenpci.devices import catalog
from xenpci.devices.base import DeviceModel
from xenpci.devices.dma import MemoryDmaPort
from xenpci.devices.gpu import GpuFunction
from xenpci.devices.irq import Interrupt, IrqLog
from xenpci.devices.nic import CTRL_EN, E1000_CTRL, NicFunction
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.bar import ROM_INDEX, size_bar_by_probe
from xenpci.pci.capabilities import find_capability

MiB = 1 << 20
# Sizes each model declares in its docstring (independent of the builder code).
DECLARED = {
    "nic": [{0: 128 * 1024, 3: 16 * 1024}],
    "nvme": [{0: 16 * 1024}],
    "gpu": [{0: 64 * 1024, 2: 256 * MiB, ROM_INDEX: 64 * 1024}],
    "legacy": [{0: 8}],
    "subpage": [{0: 256, 1: 128, 2: 16}],
    "multifunction": [{0: 128 * 1024, 3: 16 * 1024}] * 2,
    "bridge": [{}, {0: 8}],
}


def test_catalog_names_are_the_contract() -> None:
    assert set(catalog.names()) == set(DECLARED)


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_bar_sizing_by_all_ones_write_gives_declared_size(name: str) -> None:
    fns = catalog.make(name)
    assert len(fns) == len(DECLARED[name])
    for fn, sizes in zip(fns, DECLARED[name], strict=True):
        htype = fn.config.header_type
        upper_halves = {b.index + 1 for b in fn.bars if b.kind == "mem64"}
        probed = {}
        for index in [*range(2 if htype == 1 else 6), ROM_INDEX]:
            if index in upper_halves:
                continue
            size = size_bar_by_probe(fn.config_read, fn.config_write, index, header_type=htype)
            if size:
                probed[index] = size
        assert probed == sizes, name


def test_gpu_bar_is_64bit_prefetchable_256mib_and_sparse() -> None:
    gpu = catalog.make("gpu")[0]
    assert isinstance(gpu, GpuFunction)
    bar2 = next(b for b in gpu.bars if b.index == 2)
    assert (bar2.kind, bar2.prefetchable, bar2.size) == ("mem64", True, 256 * MiB)
    assert gpu.vram.pages == {}  # nothing allocated up front
    enable(gpu)
    gpu.mmio_write(2, 200 * MiB + 8, 8, 0x1122334455667788)
    assert len(gpu.vram.pages) == 1
    assert gpu.mmio_read(2, 200 * MiB + 8, 8) == 0x1122334455667788
    assert gpu.mmio_read(2, 255 * MiB, 8) == 0


def test_rom_enable_bit_gates_rom_decode() -> None:
    gpu = catalog.make("gpu")[0]
    gpu.assign_bar(ROM_INDEX, 0xFE00_0000)
    gpu.assign_bar(2, 0x80_0000_0000)
    enable(gpu, master=False)
    assert gpu.mmio_read(ROM_INDEX, 0, 2) == 0xFFFF  # enable bit clear: not decoded
    rom = gpu.config_read(regs.PCI_ROM_ADDRESS, 4)
    assert rom == 0xFE00_0000
    gpu.config_write(regs.PCI_ROM_ADDRESS, 4, rom | regs.PCI_ROM_ADDRESS_ENABLE)
    assert gpu.config_read(regs.PCI_ROM_ADDRESS, 4) & regs.PCI_ROM_ADDRESS_ENABLE
    assert gpu.mmio_read(ROM_INDEX, 0, 2) == 0xAA55  # ROM signature 55 AA
    bar = next(b for b in gpu.bars if b.index == ROM_INDEX)
    assert bar.enabled and bar.address == 0xFE00_0000
    image = bytes(gpu.mmio_read(ROM_INDEX, i, 1) for i in range(1024))
    assert image[0x1C:0x20] == b"PCIR" and sum(image) % 256 == 0
    assert next(b for b in gpu.bars if b.index == 2).address == 0x80_0000_0000


def dirty(fn: DeviceModel) -> None:
    """Change what a driver would change: decode, bus master, BAR, MSI-X, device regs."""
    fn.assign_bar(0, 0xFE10_0000)
    enable(fn)
    cap = find_capability(fn.config, regs.PCI_CAP_ID_MSIX)
    assert cap is not None
    fn.config_write(cap + regs.PCI_MSIX_FLAGS, 2, regs.PCI_MSIX_FLAGS_ENABLE)
    fn.mmio_write(0, E1000_CTRL, 4, CTRL_EN)


def test_flr_restores_defaults_and_clears_bus_master() -> None:
    fresh = NicFunction(SBDF(0, 3, 0, 0))
    fn = NicFunction(SBDF(0, 3, 0, 0))
    dirty(fn)
    assert fn.config.raw() != fresh.config.raw()
    assert "flr" in fn.reset_methods()
    exp = find_capability(fn.config, regs.PCI_CAP_ID_EXP)
    assert exp is not None
    devctl = fn.config_read(exp + regs.PCI_EXP_DEVCTL, 2)
    fn.config_write(exp + regs.PCI_EXP_DEVCTL, 2, devctl | regs.PCI_EXP_DEVCTL_BCR_FLR)
    assert fn.config.raw() == fresh.config.raw()
    assert not fn.config_read(regs.PCI_COMMAND, 2) & regs.PCI_COMMAND_MASTER
    assert not fn.config_read(exp + regs.PCI_EXP_DEVCTL, 2) & regs.PCI_EXP_DEVCTL_BCR_FLR
    assert fn.msix is not None and not fn.msix.enabled
    assert fn.core.regs["CTRL"] == 0
    assert fn.resets == ["flr"]


def pm_offset(fn: DeviceModel) -> int:
    pm = find_capability(fn.config, regs.PCI_CAP_ID_PM)
    assert pm is not None
    return pm + regs.PCI_PM_CTRL


def test_d3hot_to_d0_without_no_soft_reset_restores_defaults() -> None:
    fresh = NicFunction(SBDF(0, 3, 0, 0))
    fn = NicFunction(SBDF(0, 3, 0, 0), dma=MemoryDmaPort())
    dirty(fn)
    ctrl = pm_offset(fn)
    assert not fn.config_read(ctrl, 2) & regs.PCI_PM_CTRL_NO_SOFT_RESET
    fn.config_write(ctrl, 2, 3)  # D3hot
    assert fn.config_read(ctrl, 2) & 3 == 3
    assert fn.mmio_read(0, E1000_CTRL, 4) == 0xFFFFFFFF  # no memory decode in D3hot
    fn.config_write(ctrl, 2, 0)  # back to D0
    assert fn.config.raw() == fresh.config.raw()
    assert fn.resets == ["pm"]


def test_unsupported_d1_is_ignored() -> None:
    fn = NicFunction(SBDF(0, 3, 0, 0))
    ctrl = pm_offset(fn)
    fn.config_write(ctrl, 2, 1)
    assert fn.config_read(ctrl, 2) & 3 == 0


def test_bridge_offers_pm_but_not_flr() -> None:
    bridge, behind = catalog.make("bridge", "0000:02:00.0")
    assert bridge.reset_methods() == ["pm"]
    assert behind.sbdf == SBDF(0, 3, 0, 0)
    assert bridge.config_read(regs.PCI_SECONDARY_BUS, 1) == 3
    assert behind.config.size == 256  # conventional PCI behind the bridge
    assert find_capability(behind.config, regs.PCI_CAP_ID_EXP) is None


def test_msi_multiple_message_and_per_vector_masking() -> None:
    log = IrqLog()
    gpu = GpuFunction(SBDF(0, 6, 0, 0), raise_irq=log)
    msi = find_capability(gpu.config, regs.PCI_CAP_ID_MSI)
    assert msi is not None
    flags = gpu.config_read(msi + regs.PCI_MSI_FLAGS, 2)
    assert flags & regs.PCI_MSI_FLAGS_64BIT and flags & regs.PCI_MSI_FLAGS_MASKBIT
    assert (flags & regs.PCI_MSI_FLAGS_QMASK) >> 1 == 2  # 4 vectors requested
    gpu.config_write(msi + regs.PCI_MSI_ADDRESS_LO, 4, 0xFEE0_0000)
    gpu.config_write(msi + regs.PCI_MSI_DATA_64, 2, 0x4040)
    gpu.config_write(msi + regs.PCI_MSI_MASK_64, 4, 0b0100)
    gpu.config_write(msi + regs.PCI_MSI_FLAGS, 2, regs.PCI_MSI_FLAGS_ENABLE | (2 << 4))
    gpu.signal(1)
    assert log.events == [Interrupt("msi", 1, 0xFEE0_0000, 0x4041)]
    gpu.signal(2)
    assert len(log.events) == 1
    assert gpu.config_read(msi + regs.PCI_MSI_PENDING_64, 4) == 0b0100
    gpu.config_write(msi + regs.PCI_MSI_MASK_64, 4, 0)
    assert log.events[-1] == Interrupt("msi", 2, 0xFEE0_0000, 0x4042)
    assert gpu.config_read(msi + regs.PCI_MSI_PENDING_64, 4) == 0
    gpu.config_write(msi + regs.PCI_MSI_PENDING_64, 4, 0xF)  # pending bits are read-only
    assert gpu.config_read(msi + regs.PCI_MSI_PENDING_64, 4) == 0


def test_decode_off_is_a_master_abort() -> None:
    fn = catalog.make("subpage")[0]
    assert fn.mmio_read(0, 0, 4) == 0xFFFFFFFF
    fn.mmio_write(0, 0, 4, 5)
    enable(fn)
    assert fn.mmio_read(0, 0, 4) == 0  # the write during the abort was dropped
    assert fn.master_aborts == 2
