"""The assignable pool (``pci_stub.c``): seize, assign, release, reset and restore."""

from __future__ import annotations

import pytest

from tests.pciback.conftest import (
    NIC_BAR0,
    FakePlatform,
    make_gpu,
    make_legacy,
    make_nic,
    seize,
)
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


def test_msix_prepared_at_seize_released_at_unbind(stub: PciStub, platform: FakePlatform) -> None:
    nic, legacy = make_nic(), make_legacy()
    stub.seize(nic)
    stub.seize(legacy)  # no MSI-X capability: no hypercall (Linux checks dev->msix_cap)
    assert platform.lifecycle == [("prepare_msix", str(nic.sbdf), 0, None)]
    stub.get_pci_dev(nic.sbdf, 1)
    stub.put_pci_dev(nic.sbdf)
    assert len(platform.lifecycle) == 1  # a guest's release keeps the protection
    stub.release(legacy.sbdf)
    stub.release(nic.sbdf)
    assert platform.lifecycle[1:] == [("release_msix", str(nic.sbdf), 0, None)]


@pytest.mark.parametrize("policy", ["linux", "strict"])
def test_guest_memory_bit_reaches_the_platform(
    stub: PciStub, platform: FakePlatform, policy: str
) -> None:
    """Xen vPCI's rule in the PV model: the owner's COMMAND.MEMORY drives its BAR mapping,
    while hardware keeps decoding (pciback keeps the bit virtual)."""
    hw = make_nic()
    psdev = seize(stub, hw, domid=7, policy=policy)
    dd = psdev.dev_data
    cmd = config_read(dd, regs.PCI_COMMAND, 2)[1] | regs.PCI_COMMAND_MEMORY
    config_write(dd, regs.PCI_COMMAND, 2, cmd)  # the guest enables the device
    platform.lifecycle.clear()
    assert config_write(dd, regs.PCI_COMMAND, 2, cmd) == 0  # no change: no call
    assert config_write(dd, regs.PCI_COMMAND, 2, cmd & ~regs.PCI_COMMAND_MEMORY) == 0
    assert not config_read(dd, regs.PCI_COMMAND, 2)[1] & regs.PCI_COMMAND_MEMORY
    assert hw.config_read(regs.PCI_COMMAND, 2) & regs.PCI_COMMAND_MEMORY  # hardware: still on
    assert config_write(dd, regs.PCI_COMMAND, 2, cmd) == 0
    off, on = ("memory_decode", str(hw.sbdf), 7, False), ("memory_decode", str(hw.sbdf), 7, True)
    assert platform.lifecycle == [off, on]
    # Left off at release: turned back on for that guest, then nothing more once unassigned.
    config_write(dd, regs.PCI_COMMAND, 2, cmd & ~regs.PCI_COMMAND_MEMORY)
    stub.put_pci_dev(hw.sbdf)
    assert platform.lifecycle == [off, on, off, on]
    config_write(dd, regs.PCI_COMMAND, 2, cmd)
    assert platform.lifecycle == [off, on, off, on]


def test_memory_decode_refusal_does_not_fail_the_guest_write(
    stub: PciStub, platform: FakePlatform
) -> None:
    hw = make_nic()
    dd = seize(stub, hw, domid=3).dev_data
    cmd = config_read(dd, regs.PCI_COMMAND, 2)[1] | regs.PCI_COMMAND_MEMORY
    config_write(dd, regs.PCI_COMMAND, 2, cmd)
    platform.refuse_lifecycle = -1  # -EPERM
    assert config_write(dd, regs.PCI_COMMAND, 2, cmd & ~regs.PCI_COMMAND_MEMORY) == 0
    assert any("memory decode off for d3: -1" in w for w in dd.warnings)
