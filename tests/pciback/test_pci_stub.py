"""The assignable pool (``pci_stub.c``): seize, assign, release, reset and restore."""

from __future__ import annotations

import pytest

from tests.pciback.conftest import NIC_BAR0, make_gpu, make_legacy, make_nic, seize
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pciback.conf_space import DeviceOptions, config_read, config_write
from xenpci.pciback.errors import ENODEV, AssignError, SeizeError
from xenpci.pciback.pci_stub import PciStub


def test_seize_resets_and_restores_firmware_state(stub: PciStub) -> None:
    hw = make_nic()
    header = [hw.config_read(4 * i, 4) for i in range(16) if i != 1]
    psdev = stub.seize(hw)
    assert psdev.resets == ["flr"]
    assert hw.resets == ["flr"]  # the model really went through its reset
    assert [hw.config_read(4 * i, 4) for i in range(16) if i != 1] == header
    # Enabled then disabled: memory decode stays on, bus master is off.
    assert hw.config_read(4, 2) & regs.PCI_COMMAND_MEMORY
    assert not hw.config_read(4, 2) & regs.PCI_COMMAND_MASTER


def test_reset_falls_back_and_reports_none(stub: PciStub) -> None:
    legacy = make_legacy()
    psdev = stub.seize(legacy)
    assert psdev.resets == ["none"]
    assert any("no reset method" in w for w in psdev.dev_data.warnings)
    assert legacy.config_read(0x10, 4) & ~3 == 0xE000


def test_guest_changes_undone_at_release(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw, domid=3)
    dd = psdev.dev_data
    stub.set_permissive(hw.sbdf)
    devctl = 0x48 + regs.PCI_EXP_DEVCTL
    config_write(dd, devctl, 2, regs.PCI_EXP_DEVCTL_URRE)
    config_write(dd, 0x10, 4, 0xFFFFFFFF)  # left in sizing mode
    config_write(dd, 4, 2, regs.PCI_COMMAND_MEMORY | regs.PCI_COMMAND_MASTER)
    assert hw.config_read(devctl, 2) & regs.PCI_EXP_DEVCTL_URRE
    stub.add_quirk("03:00.0-50:2:ffff")
    stub.set_allow_interrupt_control(hw.sbdf)
    stub.put_pci_dev(hw.sbdf)
    assert psdev.owner is None
    assert not hw.config_read(devctl, 2) & regs.PCI_EXP_DEVCTL_URRE
    assert not hw.config_read(4, 2) & regs.PCI_COMMAND_MASTER
    assert config_read(dd, 0x10, 4) == (0, NIC_BAR0)  # bar_reset: which = 0
    assert not any(e.field.clean for e in dd.config_fields)  # quirks dropped
    assert not dd.allow_interrupt_control
    assert dd.permissive  # sticky until unbind
    assert stub.permissive_list() == "0000:03:00.0\n"


def test_one_owner_at_a_time(stub: PciStub) -> None:
    hw = make_nic()
    seize(stub, hw, domid=1)
    with pytest.raises(AssignError) as e:
        stub.get_pci_dev(hw.sbdf, 2)
    assert e.value.code == ENODEV and "already in-use" in str(e.value)
    with pytest.raises(AssignError):
        stub.get_pci_dev(SBDF.parse("0000:99:00.0"), 2)
    with pytest.raises(SeizeError):
        stub.seize(hw)


def test_release_forces_guest_off(stub: PciStub) -> None:
    hw = make_gpu()
    psdev = seize(stub, hw, domid=4)
    stub.release(hw.sbdf)
    assert hw.sbdf not in stub
    assert psdev.dev_data.config_fields == []
    assert any("still in-use by domain 4" in w for w in psdev.dev_data.warnings)
    assert psdev.resets == ["flr", "flr", "flr"]  # seize, put_pci_dev, final release


def test_cardbus_refused(stub: PciStub) -> None:
    hw = make_legacy()
    hw.config.poke(regs.PCI_HEADER_TYPE, 1, regs.PCI_HEADER_TYPE_CARDBUS)
    with pytest.raises(SeizeError) as e:
        stub.seize(hw)
    assert e.value.code == ENODEV


def test_bad_policy_option() -> None:
    with pytest.raises(Exception, match="policy"):
        DeviceOptions(policy="lax")  # type: ignore[arg-type]
