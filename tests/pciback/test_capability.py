"""Capability fields (``conf_space_capability.c``) against PCI PM 1.2 and the MSI /
MSI-X Message Control semantics of PCI 3.0 §6.8."""

from __future__ import annotations

import pytest

from tests.pciback.conftest import make_gpu, make_nic, make_vpd_function, seize
from xenpci.pci import regs
from xenpci.pciback.conf_space import config_read, config_write
from xenpci.pciback.conf_space.capability import (
    INTERRUPT_TYPE_INTX,
    INTERRUPT_TYPE_MSIX,
    INTERRUPT_TYPE_NONE,
    get_interrupt_type,
)
from xenpci.pciback.pci_stub import PciStub

PM = 0x40  # both catalog models put PM first
NIC_MSIX = 0x84
GPU_MSI = 0x48


def test_fields_in_linux_order(stub: PciStub) -> None:
    psdev = seize(stub, make_nic())
    names = [e.field.name for e in psdev.dev_data.config_fields]
    assert names[:3] == ["header.vendor_id", "header.device_id", "header.command"]
    caps = [n for n in names if not n.startswith("header.")]
    assert caps == [
        "pm.header", "pm.pmc", "pm.ctrl", "pm.ppb_extensions", "pm.data",
        "msix.header", "msix.flags",
    ]  # fmt: skip


def test_capability_list_is_not_hidden(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    assert config_read(psdev.dev_data, regs.PCI_CAPABILITY_LIST, 1)[1] == 0x40
    # The Express capability (no fields) is readable, and its ID/next too.
    assert config_read(psdev.dev_data, 0x48, 2) == (0, hw.config_read(0x48, 2))


def test_cap_header_read_only_even_permissive(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    psdev.dev_data.permissive = True
    hw.config.set_wmask(PM, 2, 0xFFFF)  # even if the hardware would take it
    assert config_write(psdev.dev_data, PM, 2, 0x0005) == 0
    assert hw.config_read(PM, 1) == regs.PCI_CAP_ID_PM


def test_pmc_hides_pme_support(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    hw.config.poke(PM + 2, 2, hw.config_read(PM + 2, 2) | regs.PCI_PM_CAP_PME_D3HOT)
    assert config_read(psdev.dev_data, PM + 2, 2)[1] & regs.PCI_PM_CAP_PME_MASK == 0
    assert hw.config_read(PM + 2, 2) & regs.PCI_PM_CAP_PME_D3HOT


def test_pme_enable_cleared_at_seize_and_never_settable(stub: PciStub) -> None:
    from xenpci.devices.builder import ConfigBuilder
    from xenpci.pci.address import SBDF
    from xenpci.pci.function import PciFunction

    b = ConfigBuilder(0x8086, 0x1234, 0x020000)
    pm = b.add_pm(no_soft_reset=True)  # no reset method: only pciback can clear PME_ENABLE
    assert pm == PM
    built = b.build()
    built.config.set_wmask(PM + 4, 2, 0x0103)
    built.config.poke(PM + 4, 2, regs.PCI_PM_CTRL_PME_ENABLE | regs.PCI_PM_CTRL_NO_SOFT_RESET)
    hw = PciFunction(SBDF(0, 9, 0, 0), built.config, source="test")
    assert hw.reset_methods() == []
    psdev = seize(stub, hw)
    assert not hw.config_read(PM + 4, 2) & regs.PCI_PM_CTRL_PME_ENABLE
    config_write(psdev.dev_data, PM + 4, 2, regs.PCI_PM_CTRL_PME_ENABLE)
    assert not hw.config_read(PM + 4, 2) & regs.PCI_PM_CTRL_PME_ENABLE


def test_pm_state_change_goes_through_dom0(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    assert config_write(psdev.dev_data, PM + 4, 2, 3) == 0  # D3hot
    assert hw.config_read(PM + 4, 2) & 3 == 3
    # D1 is not advertised in PMC: pci_set_power_state fails -> access denied.
    assert config_write(psdev.dev_data, PM + 4, 2, 1) == -3
    assert config_write(psdev.dev_data, PM + 4, 2, 0) == 0
    assert hw.config_read(PM + 4, 2) & 3 == 0


def test_vpd_read_requests_only(stub: PciStub) -> None:
    hw = make_vpd_function()
    psdev = seize(stub, hw)
    assert config_write(psdev.dev_data, 0x42, 2, 0x0010) == 0
    assert hw.config_read(0x42, 2) == 0x0010
    assert config_write(psdev.dev_data, 0x42, 2, 0x8010) == -3  # the F flag: a VPD write
    assert hw.config_read(0x42, 2) == 0x0010
    psdev.dev_data.permissive = True
    assert config_write(psdev.dev_data, 0x44, 4, 0xAABBCCDD) == 0  # VPD data: no write handler
    assert hw.config_read(0x44, 4) == 0


# --- MSI / MSI-X Message Control --------------------------------------------------------
MSIX_CASES = [
    # (permissive, allow_interrupt_control, value, expected err, enable bit in hw after)
    (False, False, regs.PCI_MSIX_FLAGS_ENABLE, -3, False),
    (False, True, regs.PCI_MSIX_FLAGS_ENABLE, 0, True),
    (False, True, regs.PCI_MSIX_FLAGS_ENABLE | regs.PCI_MSIX_FLAGS_MASKALL, 0, True),
    (False, True, regs.PCI_MSIX_FLAGS_ENABLE | 0x0001, -3, False),  # QSIZE is not allowed
    (True, False, regs.PCI_MSIX_FLAGS_ENABLE, 0, True),
]


@pytest.mark.parametrize(("permissive", "aic", "value", "err", "enabled"), MSIX_CASES)
def test_msix_flags(stub: PciStub, permissive, aic, value, err, enabled):  # type: ignore[no-untyped-def]
    hw = make_nic()
    psdev = seize(stub, hw)
    psdev.dev_data.permissive = permissive
    psdev.dev_data.allow_interrupt_control = aic
    old = hw.config_read(NIC_MSIX + 2, 2)
    assert config_write(psdev.dev_data, NIC_MSIX + 2, 2, old | value) == err
    assert bool(hw.config_read(NIC_MSIX + 2, 2) & regs.PCI_MSIX_FLAGS_ENABLE) is enabled


def test_same_value_is_a_noop_success(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    old = hw.config_read(NIC_MSIX + 2, 2)
    assert config_write(psdev.dev_data, NIC_MSIX + 2, 2, old) == 0


def test_msi_enable_refused_while_msix_on_but_allowed_with_intx(stub: PciStub) -> None:
    """Enabling MSI while INTx is active is allowed; MSI and MSI-X together is not."""
    gpu = make_gpu()
    psdev = seize(stub, gpu)
    dd = psdev.dev_data
    dd.allow_interrupt_control = True
    assert get_interrupt_type(dd) == INTERRUPT_TYPE_INTX
    assert config_write(dd, GPU_MSI + 2, 2, gpu.config_read(GPU_MSI + 2, 2) | 1) == 0
    nic = make_nic("0000:03:00.1")
    nd = seize(stub, nic).dev_data
    nd.allow_interrupt_control = True
    nic.config.poke(4, 2, nic.config_read(4, 2) | regs.PCI_COMMAND_INTX_DISABLE)
    assert get_interrupt_type(nd) == INTERRUPT_TYPE_NONE
    old = nic.config_read(NIC_MSIX + 2, 2)
    assert config_write(nd, NIC_MSIX + 2, 2, old | regs.PCI_MSIX_FLAGS_ENABLE) == 0
    assert get_interrupt_type(nd) == INTERRUPT_TYPE_MSIX
    # Disabling is always allowed.
    assert config_write(nd, NIC_MSIX + 2, 2, old) == 0


def test_msi_enable_refused_when_msi_x_enabled(stub: PciStub) -> None:
    """A synthetic function with both: MSI enable is refused while MSI-X is on."""
    from xenpci.devices.builder import ConfigBuilder, MsixLayout
    from xenpci.pci.address import SBDF
    from xenpci.pci.function import PciFunction

    b = ConfigBuilder(0x8086, 0x10D3, 0x020000, interrupt_pin=1)
    b.bar(0, "mem32", 0x4000)
    msi = b.add_msi(1)
    msix = b.add_msix(MsixLayout(4, 0, 0, 0, 0x800))
    built = b.build()
    hw = PciFunction(SBDF(0, 8, 0, 0), built.config, source="test", bar_sizes=built.bar_sizes)
    dd = seize(stub, hw).dev_data
    dd.allow_interrupt_control = True
    assert config_write(dd, msix + 2, 2, regs.PCI_MSIX_FLAGS_ENABLE | 3) == 0
    assert config_write(dd, msi + 2, 2, hw.config_read(msi + 2, 2) | 1) == -3
    assert not hw.config_read(msi + 2, 2) & 1
