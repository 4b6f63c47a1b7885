"""Capability fields of Linux xen-pciback (``conf_space_capability.c``).

For each registered capability present in the standard list (registration
order VPD, PM, MSI, MSI-X), a read-only 2-byte header field (ID + next) is
added at the capability, then the capability's own fields. The list itself
is neither filtered nor hidden, and extended capabilities get no fields: all
other capability registers read from hardware and are writable only in
permissive mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from xenpci.pci import regs
from xenpci.pci.pcibios import PCIBIOS_SET_FAILED
from xenpci.pciback.conf_space.dom0_pci import find_capability
from xenpci.pciback.conf_space.engine import (
    ConfigField,
    DevData,
    InitHandler,
    add_field,
)
from xenpci.pciback.conf_space.header import read_hw8, read_hw16, read_hw32

PCI_VPD_ADDR = 2
PCI_VPD_ADDR_F = 0x8000
PCI_VPD_DATA = 4

# xen_pcibk_get_interrupt_type() result bits (conf_space.h).
INTERRUPT_TYPE_NONE = 0
INTERRUPT_TYPE_INTX = 1
INTERRUPT_TYPE_MSI = 2
INTERRUPT_TYPE_MSIX = 4

# PM_OK_BITS: the PMCSR bits a guest may change directly.
PM_OK_BITS = regs.PCI_PM_CTRL_PME_STATUS | regs.PCI_PM_CTRL_DATA_SEL_MASK
assert PM_OK_BITS == 0x9E00


def get_interrupt_type(dd: DevData) -> int:
    """``xen_pcibk_get_interrupt_type``: from hardware, not from dom0's bookkeeping.
    INTx counts only when neither MSI nor MSI-X is on."""
    ret = INTERRUPT_TYPE_NONE
    pos = find_capability(dd.hw, regs.PCI_CAP_ID_MSI)
    if pos is not None:
        err, flags = dd.hw_read(pos + regs.PCI_MSI_FLAGS, 2)
        if err:
            return err
        if flags & regs.PCI_MSI_FLAGS_ENABLE:
            ret |= INTERRUPT_TYPE_MSI
    pos = find_capability(dd.hw, regs.PCI_CAP_ID_MSIX)
    if pos is not None:
        err, flags = dd.hw_read(pos + regs.PCI_MSIX_FLAGS, 2)
        if err:
            return err
        if flags & regs.PCI_MSIX_FLAGS_ENABLE:
            ret |= INTERRUPT_TYPE_MSIX
    if ret == INTERRUPT_TYPE_NONE:
        err, cmd = dd.hw_read(regs.PCI_COMMAND, 2)
        if err:
            return err
        if not cmd & regs.PCI_COMMAND_INTX_DISABLE:
            ret = INTERRUPT_TYPE_INTX
    return ret


# --- VPD -------------------------------------------------------------------------------
def vpd_address_write(dd: DevData, offset: int, value: int, data: object) -> int:
    """Read requests only: the F flag (a VPD write) is refused with SET_FAILED."""
    if value & PCI_VPD_ADDR_F:
        return PCIBIOS_SET_FAILED
    return dd.hw_write(offset, 2, value)


# --- Power management -------------------------------------------------------------------
def pmc_read(dd: DevData, offset: int, data: object) -> tuple[int, int]:
    """The guest never sees PME support."""
    err, value = dd.hw_read(offset, 2)
    return err, value & ~regs.PCI_PM_CAP_PME_MASK & 0xFFFF


def pm_ctrl_init(dd: DevData, offset: int) -> object:
    """Clear PME_ENABLE in hardware when the field list is built. Like Linux, the
    value read is written back as is, so a set PME_STATUS (RW1C) is cleared too."""
    err, value = dd.hw_read(offset, 2)
    if not err and value & regs.PCI_PM_CTRL_PME_ENABLE:
        dd.hw_write(offset, 2, value & ~regs.PCI_PM_CTRL_PME_ENABLE)
    return None


def pm_ctrl_write(dd: DevData, offset: int, new_value: int, data: object) -> int:
    """Only PME_STATUS and DATA_SEL reach hardware; the D-state goes through
    ``pci_set_power_state``, whose failure is SET_FAILED."""
    err, old = dd.hw_read(offset, 2)
    if err:
        return err
    new_state = new_value & regs.PCI_PM_CTRL_STATE_MASK
    new_value &= PM_OK_BITS
    if old & PM_OK_BITS != new_value:
        err = dd.hw_write(offset, 2, (old & ~PM_OK_BITS) | new_value)
        if err:
            return err
    if dd.linux.pci_set_power_state(new_state):
        return PCIBIOS_SET_FAILED
    return 0


# --- MSI / MSI-X flags ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MsiMsixFieldConfig:
    """``struct msi_msix_field_config``."""

    enable_bit: int
    allowed_bits: int
    int_type: int


MSI_FIELD_CONFIG = MsiMsixFieldConfig(
    regs.PCI_MSI_FLAGS_ENABLE, regs.PCI_MSI_FLAGS_ENABLE, INTERRUPT_TYPE_MSI
)
MSIX_FIELD_CONFIG = MsiMsixFieldConfig(
    regs.PCI_MSIX_FLAGS_ENABLE,
    regs.PCI_MSIX_FLAGS_ENABLE | regs.PCI_MSIX_FLAGS_MASKALL,
    INTERRUPT_TYPE_MSIX,
)


def _flags_init(cfg: MsiMsixFieldConfig) -> InitHandler:
    def init(dd: DevData, offset: int) -> object:
        return cfg

    return init


def msi_msix_flags_write(dd: DevData, offset: int, new_value: int, data: object) -> int:
    """Permissive writes anything; otherwise only with allow_interrupt_control, only
    the allowed bits, and enabling only from NONE, INTx or the same type."""
    assert isinstance(data, MsiMsixFieldConfig)
    if not dd.is_permissive:
        err, old = dd.hw_read(offset, 2)
        if err:
            return err
        if new_value == old:
            return 0
        if not dd.allow_interrupt_control or (new_value ^ old) & ~data.allowed_bits:
            return PCIBIOS_SET_FAILED
        if new_value & data.enable_bit:
            int_type = get_interrupt_type(dd)
            # Linux compares with ==; a negative errno matches none of these.
            if int_type not in (INTERRUPT_TYPE_NONE, INTERRUPT_TYPE_INTX, data.int_type):
                return PCIBIOS_SET_FAILED
    return dd.hw_write(offset, 2, new_value)


_RO_HEADER = "ignored: capability ID and next pointer are read-only, even if permissive"
_FLAGS_RULE = (
    "permissive: written as is; else needs allow_interrupt_control, only "
    "enable/mask-all may change, enable refused while the other type is on "
    "(access denied)"
)


def _cap_header(name: str) -> ConfigField:
    return ConfigField(
        f"{name}.header", regs.PCI_CAP_LIST_ID, 2, read=read_hw16, on_write=_RO_HEADER
    )


CAPLIST_VPD: tuple[ConfigField, ...] = (
    ConfigField(
        "vpd.address",
        PCI_VPD_ADDR,
        2,
        read=read_hw16,
        write=vpd_address_write,
        on_write="read requests pass to hardware; a VPD write (F flag) is access denied",
    ),
    ConfigField("vpd.data", PCI_VPD_DATA, 4, read=read_hw32, on_write="ignored: read-only"),
)

CAPLIST_PM: tuple[ConfigField, ...] = (
    ConfigField(
        "pm.pmc",
        regs.PCI_PM_PMC,
        2,
        read=pmc_read,
        on_write="ignored: read-only (PME support bits hidden)",
    ),
    ConfigField(
        "pm.ctrl",
        regs.PCI_PM_CTRL,
        2,
        read=read_hw16,
        write=pm_ctrl_write,
        init=pm_ctrl_init,
        on_write="only PME_STATUS and DATA_SEL reach hardware; D-state through dom0 "
        "(failure: access denied); PME_ENABLE can never be set",
    ),
    ConfigField(
        "pm.ppb_extensions",
        regs.PCI_PM_PPB_EXTENSIONS,
        1,
        read=read_hw8,
        on_write="ignored: read-only",
    ),
    ConfigField(
        "pm.data", regs.PCI_PM_DATA_REGISTER, 1, read=read_hw8, on_write="ignored: read-only"
    ),
)

CAPLIST_MSI: tuple[ConfigField, ...] = (
    ConfigField(
        "msi.flags",
        regs.PCI_MSI_FLAGS,
        2,
        read=read_hw16,
        write=msi_msix_flags_write,
        init=_flags_init(MSI_FIELD_CONFIG),
        on_write=_FLAGS_RULE,
    ),
)

CAPLIST_MSIX: tuple[ConfigField, ...] = (
    ConfigField(
        "msix.flags",
        regs.PCI_MSIX_FLAGS,
        2,
        read=read_hw16,
        write=msi_msix_flags_write,
        init=_flags_init(MSIX_FIELD_CONFIG),
        on_write=_FLAGS_RULE,
    ),
)

#: Registration order of ``xen_pcibk_config_capability_init``.
CAPABILITIES: tuple[tuple[int, str, tuple[ConfigField, ...]], ...] = (
    (regs.PCI_CAP_ID_VPD, "vpd", CAPLIST_VPD),
    (regs.PCI_CAP_ID_PM, "pm", CAPLIST_PM),
    (regs.PCI_CAP_ID_MSI, "msi", CAPLIST_MSI),
    (regs.PCI_CAP_ID_MSIX, "msix", CAPLIST_MSIX),
)

CAP_HEADERS = {name: _cap_header(name) for _, name, _ in CAPABILITIES}


def capability_add_fields(dd: DevData) -> None:
    """``xen_pcibk_config_capability_add_fields``."""
    for cap_id, name, fields in CAPABILITIES:
        pos = find_capability(dd.hw, cap_id)
        if pos is None:
            continue
        add_field(dd, CAP_HEADERS[name], pos)
        for fld in fields:
            add_field(dd, fld, pos)
