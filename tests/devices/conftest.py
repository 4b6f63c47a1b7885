"""Shared helpers for device model tests."""

from __future__ import annotations

from xenpci.devices.base import DeviceModel
from xenpci.pci import regs


def enable(model: DeviceModel, *, mem: bool = True, io: bool = False, master: bool = True) -> None:
    """Turn on decode and bus mastering through config writes, as a driver does."""
    cmd = model.config_read(regs.PCI_COMMAND, 2)
    cmd |= regs.PCI_COMMAND_MEMORY if mem else 0
    cmd |= regs.PCI_COMMAND_IO if io else 0
    cmd |= regs.PCI_COMMAND_MASTER if master else 0
    model.config_write(regs.PCI_COMMAND, 2, cmd)
