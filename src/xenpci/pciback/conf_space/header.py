"""Type-0 and type-1 header fields of Linux xen-pciback (``conf_space_header.c``).

Three tables, as in Linux: ``HEADER_COMMON`` (every device), then
``HEADER_0`` (endpoints) or ``HEADER_1`` (bridges). Every register missing
from them reads from hardware and is writable only in permissive mode
(STATUS, class, header type, subsystem IDs, capability pointer, bridge
windows...). The COMMAND register follows the post-XSA-120 design; BARs and
the ROM are synthetic and can never be moved by the guest.

BAR and ROM values come, as in Linux, from dom0's ``struct resource``
(:attr:`PciFunction.resources`: sysfs ``resource``, a dump's ``Region``
lines, legacy IDE ports, else the decoded registers), so a disabled ROM the
kernel placed elsewhere, a ``[virtual]`` ROM or an Enhanced Allocation BAR
whose register reads 0 show the kernel's address. Difference: a resource
whose size the source did not know is treated like an unset one (reads 0),
with a warning on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

from xenpci.pci import regs
from xenpci.pci.bar import PCI_REGION_FLAG_MASK, ROM_INDEX
from xenpci.pciback.conf_space.dom0_pci import platform_call
from xenpci.pciback.conf_space.engine import ConfigField, DevData, InitHandler

# Bits of COMMAND whose hardware value the guest sees (and, in permissive
# mode, may write): MASTER|SPECIAL|INVALIDATE|VGA_PALETTE|WAIT|FAST_BACK.
PCI_COMMAND_GUEST = (
    regs.PCI_COMMAND_MASTER
    | regs.PCI_COMMAND_SPECIAL
    | regs.PCI_COMMAND_INVALIDATE
    | regs.PCI_COMMAND_VGA_PALETTE
    | regs.PCI_COMMAND_WAIT
    | regs.PCI_COMMAND_FAST_BACK
)
assert PCI_COMMAND_GUEST == 0x02BC


# --- identity and cached values ------------------------------------------------------
@dataclass(slots=True)
class Cached:
    value: int


def _cache_init(size: int) -> InitHandler:
    def init(dd: DevData, offset: int) -> object:
        return Cached(dd.hw_read(offset, size)[1])

    return init


def cached_read(dd: DevData, offset: int, data: object) -> tuple[int, int]:
    """``vendor_read``/``device_read``: the value Linux cached at enumeration."""
    assert isinstance(data, Cached)
    return 0, data.value


def read_hw8(dd: DevData, offset: int, data: object) -> tuple[int, int]:
    return dd.hw_read(offset, 1)


def read_hw16(dd: DevData, offset: int, data: object) -> tuple[int, int]:
    return dd.hw_read(offset, 2)


def read_hw32(dd: DevData, offset: int, data: object) -> tuple[int, int]:
    return dd.hw_read(offset, 4)


def write_hw8(dd: DevData, offset: int, value: int, data: object) -> int:
    return dd.hw_write(offset, 1, value)


def write_hw16(dd: DevData, offset: int, value: int, data: object) -> int:
    return dd.hw_write(offset, 2, value)


def write_hw32(dd: DevData, offset: int, value: int, data: object) -> int:
    return dd.hw_write(offset, 4, value)


def interrupt_read(dd: DevData, offset: int, data: object) -> tuple[int, int]:
    """INTERRUPT_LINE shows ``(u8) dev->irq``: the legacy irq libxl maps as the guest pirq."""
    return 0, dd.linux.irq & 0xFF


def bist_write(dd: DevData, offset: int, value: int, data: object) -> int:
    """Only START may change (or the value is exactly START); else silently ignored."""
    err, cur = dd.hw_read(offset, 1)
    if err:
        return err
    if (cur & ~regs.PCI_BIST_START) == (value & ~regs.PCI_BIST_START) or (
        value == regs.PCI_BIST_START
    ):
        return dd.hw_write(offset, 1, value)
    return 0


# --- COMMAND ---------------------------------------------------------------------------
@dataclass(slots=True)
class CmdInfo:
    """``struct pci_cmd_info``: the guest's virtual COMMAND, kept until unbind."""

    val: int


def command_init(dd: DevData, offset: int) -> object:
    return CmdInfo(dd.hw_read(offset, 2)[1])


def command_read(dd: DevData, offset: int, data: object) -> tuple[int, int]:
    assert isinstance(data, CmdInfo)
    err, hw = dd.hw_read(offset, 2)
    return err, (hw & PCI_COMMAND_GUEST) | (data.val & ~PCI_COMMAND_GUEST & 0xFFFF)


def command_write(dd: DevData, offset: int, value: int, data: object) -> int:
    """``command_write``: hardware changes only through the PCI core helpers; the raw
    value reaches hardware only in permissive mode and only for PCI_COMMAND_GUEST bits."""
    assert isinstance(data, CmdInfo)
    linux = dd.linux
    decode = regs.PCI_COMMAND_IO | regs.PCI_COMMAND_MEMORY
    if linux.enable_cnt == 0 and value & decode:
        err = linux.pci_enable_device()
        if err:
            return err
        dd.enable_intx = True
    elif linux.enable_cnt and not value & decode:
        linux.pci_disable_device()
        dd.enable_intx = False

    if not linux.is_busmaster and value & regs.PCI_COMMAND_MASTER:
        linux.pci_set_master(True)
    elif linux.is_busmaster and not value & regs.PCI_COMMAND_MASTER:
        linux.pci_set_master(False)

    if not data.val & regs.PCI_COMMAND_INVALIDATE and value & regs.PCI_COMMAND_INVALIDATE:
        if linux.pci_set_mwi():
            dd.warnings.append("cannot enable memory-write-invalidate transaction")
            value &= ~regs.PCI_COMMAND_INVALIDATE
    elif data.val & regs.PCI_COMMAND_INVALIDATE and not value & regs.PCI_COMMAND_INVALIDATE:
        linux.pci_clear_mwi()

    if dd.allow_interrupt_control and ((data.val ^ value) & regs.PCI_COMMAND_INTX_DISABLE):
        linux.pci_intx(not value & regs.PCI_COMMAND_INTX_DISABLE)

    old, data.val = data.val, value
    if (old ^ value) & regs.PCI_COMMAND_MEMORY:
        memory_decode_follow(dd, bool(value & regs.PCI_COMMAND_MEMORY))
    if not dd.is_permissive:
        return 0
    err, hw = dd.hw_read(offset, 2)
    if err or hw == value:
        return err
    return dd.hw_write(offset, 2, (value & PCI_COMMAND_GUEST) | (hw & ~PCI_COMMAND_GUEST))


def memory_decode_follow(dd: DevData, enabled: bool) -> None:
    """Map or unmap the owner's BAR frames after its virtual MEMORY bit changed.

    Not Linux: PV pciback keeps MEMORY virtual, so hardware goes on decoding
    and the guest's BAR mapping would stay live. Xen's vPCI unmaps a domU's
    BARs when it clears MEMORY (``cmd_write`` -> ``modify_bars``); we carry that
    behaviour to the PV model through the platform. A refusal is recorded on
    the device, never returned: the guest's COMMAND write itself succeeded.

    Difference from vPCI: the mapping starts live (the hypervisor's default)
    and follows the bit from its first change; vPCI starts a domU with decode
    off. A PV guest kernel sets MEMORY when it enables the device, so the two
    agree from then on.
    """
    owner, platform = dd.owner, dd.platform
    if owner is None or platform is None:
        return  # not assigned (dom0's own view) or no hypervisor behind pciback
    dd.decode_off = not enabled
    err = platform_call(lambda: platform.memory_decode(dd.hw, owner, enabled))
    if err:
        dd.warnings.append(f"memory decode {'on' if enabled else 'off'} for d{owner}: {err}")


# --- BARs and ROM --------------------------------------------------------------------
@dataclass(slots=True)
class BarInfo:
    """``struct pci_bar_info``: the synthetic value, the sizing answer, which one shows."""

    val: int
    len_val: int
    which: int  # 1 after an all-ones probe
    mask: int  # low bits the guest may leave clear in a probe (0x3 IO, 0xF mem, 0 upper, 0x7FF ROM)


def bar_init(dd: DevData, offset: int) -> object:
    """``bar_init``: values from dom0's resources, computed once at seize."""
    res = dd.hw.resources
    if offset in (regs.PCI_ROM_ADDRESS, regs.PCI_ROM_ADDRESS1):
        pos = ROM_INDEX
        mask = ~regs.PCI_ROM_ADDRESS_MASK & 0xFFFFFFFF
    else:
        pos = (offset - regs.PCI_BASE_ADDRESS_0) // 4
        prev = res.get(pos - 1)
        if pos > 0 and prev is not None and prev.is_mem64:
            if prev.size:
                return BarInfo(prev.start >> 32, ((-prev.size) & 0xFFFFFFFFFFFFFFFF) >> 32, 0, 0)
            return BarInfo(0, 0, 0, 0)
        r = res.get(pos)
        mask = 0x3 if r is not None and r.is_io else 0xF
    r = res.get(pos)
    if r is None or not r.usable:
        return BarInfo(0, 0, 0, mask)
    if not r.size:
        dd.warnings.append(f"BAR {pos}: size unknown to the source; the guest sees it unset")
        return BarInfo(0, 0, 0, mask)
    flags = r.flags & PCI_REGION_FLAG_MASK
    return BarInfo((r.start & 0xFFFFFFFF) | flags, ((-r.size) & 0xFFFFFFFF) | flags, 0, mask)


def bar_read(dd: DevData, offset: int, data: object) -> tuple[int, int]:
    assert isinstance(data, BarInfo)
    return 0, data.len_val if data.which else data.val


def bar_write(dd: DevData, offset: int, value: int, data: object) -> int:
    """All-ones (ignoring the type bits) starts a sizing probe; writing back the
    original value restores a hardware BAR that drifted; anything else is ignored."""
    assert isinstance(data, BarInfo)
    if (value | data.mask) == 0xFFFFFFFF:
        data.which = 1
        return 0
    err, hw = dd.hw_read(offset, 4)
    if not err and hw != data.val and value == data.val:
        dd.hw_write(offset, 4, data.val)  # "Allow restoration of bar value."
    data.which = 0
    return 0


def bar_reset(dd: DevData, offset: int, data: object) -> None:
    assert isinstance(data, BarInfo)
    data.which = 0


HEADER_COMMON: tuple[ConfigField, ...] = (
    ConfigField(
        "header.vendor_id",
        regs.PCI_VENDOR_ID,
        2,
        read=cached_read,
        init=_cache_init(2),
        on_write="ignored: read-only (cached vendor ID)",
    ),
    ConfigField(
        "header.device_id",
        regs.PCI_DEVICE_ID,
        2,
        read=cached_read,
        init=_cache_init(2),
        on_write="ignored: read-only (cached device ID)",
    ),
    ConfigField(
        "header.command",
        regs.PCI_COMMAND,
        2,
        read=command_read,
        write=command_write,
        init=command_init,
        on_write="virtualised: IO/MEMORY enable the device through dom0, MASTER and "
        "MWI through dom0 helpers, INTX_DISABLE only with allow_interrupt_control; "
        "raw write only if permissive and only bits 0x02BC",
    ),
    ConfigField(
        "header.interrupt_line",
        regs.PCI_INTERRUPT_LINE,
        1,
        read=interrupt_read,
        on_write="ignored: shows dom0's irq number",
    ),
    ConfigField(
        "header.interrupt_pin",
        regs.PCI_INTERRUPT_PIN,
        1,
        read=read_hw8,
        on_write="ignored: read-only",
    ),
    ConfigField(
        "header.cache_line_size",
        regs.PCI_CACHE_LINE_SIZE,
        1,
        read=read_hw8,
        write=write_hw8,
        on_write="passed to hardware",
    ),
    ConfigField(
        "header.latency_timer",
        regs.PCI_LATENCY_TIMER,
        1,
        read=read_hw8,
        on_write="ignored: read-only",
    ),
    ConfigField(
        "header.bist",
        regs.PCI_BIST,
        1,
        read=read_hw8,
        write=bist_write,
        on_write="to hardware only if just START changes; else ignored",
    ),
)

_BAR_RULE = (
    "synthetic: all-ones starts a size probe; the original value restores the "
    "host BAR; anything else ignored (the guest can never move a BAR)"
)
_ROM_RULE = (
    "synthetic: all-ones (ignoring bits 0-10) starts a size probe; the enable bit "
    "cannot be changed; anything else ignored"
)


def _bar(name: str, offset: int) -> ConfigField:
    return ConfigField(
        name,
        offset,
        4,
        read=bar_read,
        write=bar_write,
        init=bar_init,
        reset=bar_reset,
        on_write=_BAR_RULE,
    )


HEADER_0: tuple[ConfigField, ...] = (
    *(_bar(f"header.bar{i}", regs.PCI_BASE_ADDRESS_0 + 4 * i) for i in range(6)),
    ConfigField(
        "header.rom",
        regs.PCI_ROM_ADDRESS,
        4,
        read=bar_read,
        write=bar_write,
        init=bar_init,
        reset=bar_reset,
        on_write=_ROM_RULE,
    ),
)

HEADER_1: tuple[ConfigField, ...] = (
    _bar("header.bar0", regs.PCI_BASE_ADDRESS_0),
    _bar("header.bar1", regs.PCI_BASE_ADDRESS_1),
    ConfigField(
        "header.rom",
        regs.PCI_ROM_ADDRESS1,
        4,
        read=bar_read,
        write=bar_write,
        init=bar_init,
        reset=bar_reset,
        on_write=_ROM_RULE,
    ),
)


def header_fields(header_type: int) -> tuple[ConfigField, ...] | None:
    """``xen_pcibk_config_header_add_fields``; None for header types Linux refuses."""
    if header_type == regs.PCI_HEADER_TYPE_NORMAL:
        return HEADER_COMMON + HEADER_0
    if header_type == regs.PCI_HEADER_TYPE_BRIDGE:
        return HEADER_COMMON + HEADER_1
    return None
