"""MSI-X table/PBA semantics (PCIe Base 6.1.4, 7.7.2) through the NIC's config space and BAR."""

from __future__ import annotations

import pytest

from tests.devices.conftest import enable
from xenpci.devices.errors import MmioError
from xenpci.devices.irq import Interrupt, IrqLog
from xenpci.devices.msix import MsixBlock
from xenpci.devices.nic import NIC_MSIX_BAR, NicFunction
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.capabilities import find_capability


@pytest.fixture
def nic() -> tuple[NicFunction, IrqLog, int]:
    log = IrqLog()
    fn = NicFunction(SBDF(0, 3, 0, 0), raise_irq=log)
    enable(fn)
    cap = find_capability(fn.config, regs.PCI_CAP_ID_MSIX)
    assert cap is not None
    return fn, log, cap


def program(fn: NicFunction, vector: int, addr: int, data: int, masked: bool) -> None:
    base = 16 * vector
    fn.mmio_write(NIC_MSIX_BAR, base + 0, 4, addr & 0xFFFFFFFF)
    fn.mmio_write(NIC_MSIX_BAR, base + 4, 4, addr >> 32)
    fn.mmio_write(NIC_MSIX_BAR, base + 8, 4, data)
    fn.mmio_write(NIC_MSIX_BAR, base + 12, 4, 1 if masked else 0)


def set_flags(fn: NicFunction, cap: int, enable_: bool, maskall: bool = False) -> None:
    flags = (regs.PCI_MSIX_FLAGS_ENABLE if enable_ else 0) | (
        regs.PCI_MSIX_FLAGS_MASKALL if maskall else 0
    )
    fn.config_write(cap + regs.PCI_MSIX_FLAGS, 2, flags)


def pba(fn: NicFunction) -> int:
    return fn.mmio_read(NIC_MSIX_BAR, 0x2000, 8)


def test_entries_start_masked_and_table_size_is_advertised(
    nic: tuple[NicFunction, IrqLog, int],
) -> None:
    fn, _log, cap = nic
    count = (fn.config_read(cap + regs.PCI_MSIX_FLAGS, 2) & regs.PCI_MSIX_FLAGS_QSIZE) + 1
    assert count == 3
    for v in range(count):
        assert fn.mmio_read(NIC_MSIX_BAR, 16 * v + 12, 4) & 1 == 1


def test_masked_vector_sets_pending_and_unmask_fires(
    nic: tuple[NicFunction, IrqLog, int],
) -> None:
    fn, log, cap = nic
    set_flags(fn, cap, True)
    program(fn, 1, 0xFEE0_1000, 0x4041, masked=True)
    fn.signal(1)
    assert log.events == []
    assert pba(fn) == 0b010
    fn.mmio_write(NIC_MSIX_BAR, 16 + 12, 4, 0)  # unmask
    assert log.events == [Interrupt("msix", 1, 0xFEE0_1000, 0x4041)]
    assert pba(fn) == 0


def test_function_mask_latches_then_releases(nic: tuple[NicFunction, IrqLog, int]) -> None:
    fn, log, cap = nic
    program(fn, 0, 0xFEE0_0000, 0x30, masked=False)
    set_flags(fn, cap, True, maskall=True)
    fn.signal(0)
    assert log.events == [] and pba(fn) == 1
    set_flags(fn, cap, True, maskall=False)
    assert [e.data for e in log.events] == [0x30] and pba(fn) == 0


def test_unmasked_vector_fires_immediately(nic: tuple[NicFunction, IrqLog, int]) -> None:
    fn, log, cap = nic
    set_flags(fn, cap, True)
    program(fn, 2, 0x1_FEE0_0000, 0x99, masked=False)
    fn.signal(2)
    assert log.events == [Interrupt("msix", 2, 0x1_FEE0_0000, 0x99)]


def test_disabled_msix_falls_back_to_intx(nic: tuple[NicFunction, IrqLog, int]) -> None:
    fn, log, _cap = nic
    fn.signal(0)
    assert log.events == [Interrupt("intx", 1)]
    assert fn.config_read(regs.PCI_STATUS, 2) & regs.PCI_STATUS_INTERRUPT


def test_intx_disable_suppresses_delivery_but_status_shows_it(
    nic: tuple[NicFunction, IrqLog, int],
) -> None:
    fn, log, _cap = nic
    cmd = fn.config_read(regs.PCI_COMMAND, 2) | regs.PCI_COMMAND_INTX_DISABLE
    fn.config_write(regs.PCI_COMMAND, 2, cmd)
    fn.signal(0)
    assert log.events == []
    assert fn.config_read(regs.PCI_STATUS, 2) & regs.PCI_STATUS_INTERRUPT


def test_pba_is_read_only(nic: tuple[NicFunction, IrqLog, int]) -> None:
    fn, _log, cap = nic
    set_flags(fn, cap, True)
    fn.signal(0)
    fn.mmio_write(NIC_MSIX_BAR, 0x2000, 8, 0)
    assert pba(fn) == 1


@pytest.mark.parametrize(("offset", "size"), [(0, 1), (2, 2), (4, 8), (0x30, 4)])
def test_table_rejects_partial_or_unaligned_access(offset: int, size: int) -> None:
    block = MsixBlock(3)
    with pytest.raises(MmioError):
        block.read_table(offset, size)


def test_reserved_vector_control_bits_read_zero() -> None:
    block = MsixBlock(1)
    block.write_table(12, 4, 0xFFFF_FFFE)
    assert block.read_table(12, 4) == 0
