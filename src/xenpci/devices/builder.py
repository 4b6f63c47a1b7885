"""Builds a device model's config space: header, BARs, capabilities, masks.

Mirrors what QEMU's PCI core does when a device realizes itself
(``hw/pci/pci.c`` ``pci_config_set_*``, ``pci_register_bar``,
``pci_add_capability``; ``hw/pci/msi.c`` ``msi_init``; ``hw/pci/msix.c``
``msix_init``; ``hw/pci/pcie.c`` ``pcie_endpoint_cap_init``;
``hw/pci/pci_bridge.c``), on top of :class:`xenpci.pci.config.ConfigSpace`:
values go in with ``poke`` and write semantics with the masks, the standard
header masks come from :func:`xenpci.pci.config.apply_standard_masks`.

Capabilities are placed from 0x40 upwards in the order they are added and
linked in that order. Deliberately missing: extended capabilities other than
an empty list at 0x100, VPD, AER.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xenpci.pci import regs
from xenpci.pci.bar import ROM_INDEX, bar_register_offset
from xenpci.pci.config import ConfigSpace, apply_standard_masks

BarKind = Literal["io", "mem32", "mem64"]

# Devices start with every PCIe error reporting and no-snoop/relaxed ordering
# bit under software control (QEMU's pcie_cap_deverr_init + pcie_cap_init).
_DEVCTL_WMASK = (
    regs.PCI_EXP_DEVCTL_CERE
    | regs.PCI_EXP_DEVCTL_NFERE
    | regs.PCI_EXP_DEVCTL_FERE
    | regs.PCI_EXP_DEVCTL_URRE
    | regs.PCI_EXP_DEVCTL_RELAX_EN
    | regs.PCI_EXP_DEVCTL_PAYLOAD
    | regs.PCI_EXP_DEVCTL_NOSNOOP_EN
    | regs.PCI_EXP_DEVCTL_READRQ
)
_DEVSTA_W1C = (
    regs.PCI_EXP_DEVSTA_CED | regs.PCI_EXP_DEVSTA_NFED | regs.PCI_EXP_DEVSTA_FED
) | regs.PCI_EXP_DEVSTA_URD
_LNKCTL_ASPM = 0x0003  # ASPM Control; the rest of Link Control stays read-only here


@dataclass(frozen=True, slots=True)
class MsixLayout:
    """Where the MSI-X table and PBA live: BAR index and offset of each."""

    nvec: int
    table_bar: int
    table_offset: int
    pba_bar: int
    pba_offset: int

    def __post_init__(self) -> None:
        if not 1 <= self.nvec <= 2048:
            raise ValueError(f"MSI-X table size {self.nvec} not in 1..2048")
        for bir, off in ((self.table_bar, self.table_offset), (self.pba_bar, self.pba_offset)):
            if not 0 <= bir <= 5 or off % 8 or off < 0:
                raise ValueError(f"MSI-X structure at BAR {bir} offset {off:#x} is invalid")


@dataclass(frozen=True, slots=True)
class BuiltConfig:
    """What the builder hands to a model: the space, BAR sizes and cap offsets."""

    config: ConfigSpace
    bar_sizes: dict[int, int]
    caps: dict[int, int]  # capability ID -> offset


class ConfigBuilder:
    """Declarative construction of a type-0 or type-1 config space."""

    def __init__(
        self,
        vendor: int,
        device: int,
        class_code: int,
        *,
        revision: int = 0,
        subsystem: tuple[int, int] | None = None,
        bridge: bool = False,
        multifunction: bool = False,
        express: bool = False,
        interrupt_pin: int = 0,
    ) -> None:
        size = regs.PCI_CFG_SPACE_EXP_SIZE if express else regs.PCI_CFG_SPACE_SIZE
        # Start from zeros: a model knows every byte of its space.
        self.cs = ConfigSpace(bytes(size), size)
        self.bridge = bridge
        self.bar_sizes: dict[int, int] = {}
        self.caps: dict[int, int] = {}
        self._next_cap = 0x40
        self._last_link: int | None = None
        self._cap_masks: list[tuple[str, int, int, int]] = []
        cs = self.cs
        cs.poke(regs.PCI_VENDOR_ID, 2, vendor)
        cs.poke(regs.PCI_DEVICE_ID, 2, device)
        cs.poke(regs.PCI_CLASS_REVISION, 4, (class_code << 8) | revision)
        htype = regs.PCI_HEADER_TYPE_BRIDGE if bridge else regs.PCI_HEADER_TYPE_NORMAL
        cs.poke(regs.PCI_HEADER_TYPE, 1, htype | (regs.PCI_HEADER_TYPE_MFD if multifunction else 0))
        if subsystem is not None and not bridge:
            cs.poke(regs.PCI_SUBSYSTEM_VENDOR_ID, 2, subsystem[0])
            cs.poke(regs.PCI_SUBSYSTEM_ID, 2, subsystem[1])
        if not 0 <= interrupt_pin <= 4:
            raise ValueError(f"interrupt pin {interrupt_pin} not in 0..4")
        cs.poke(regs.PCI_INTERRUPT_PIN, 1, interrupt_pin)

    # -- BARs ------------------------------------------------------------------
    def bar(self, index: int, kind: BarKind, size: int, *, prefetchable: bool = False) -> None:
        """Declare BAR ``index`` (address 0, unassigned) of ``size`` bytes."""
        if size & (size - 1) or size < (4 if kind == "io" else 16):
            raise ValueError(f"BAR {index}: size {size:#x} is not a valid BAR size")
        htype = regs.PCI_HEADER_TYPE_BRIDGE if self.bridge else regs.PCI_HEADER_TYPE_NORMAL
        off = bar_register_offset(index, htype)
        if kind == "io":
            low = regs.PCI_BASE_ADDRESS_SPACE_IO
        else:
            low = regs.PCI_BASE_ADDRESS_MEM_TYPE_64 if kind == "mem64" else 0
            low |= regs.PCI_BASE_ADDRESS_MEM_PREFETCH if prefetchable else 0
        self.cs.poke(off, 4, low)
        self.bar_sizes[index] = size

    def rom(self, size: int) -> None:
        """Declare an expansion ROM BAR (disabled, unassigned)."""
        if size & (size - 1) or size < 2048:
            raise ValueError(f"ROM size {size:#x} is not a valid ROM BAR size")
        self.bar_sizes[ROM_INDEX] = size

    # -- capabilities -------------------------------------------------------------
    def _add_cap(self, cap_id: int, length: int) -> int:
        off = self._next_cap
        if off + length > regs.PCI_CFG_SPACE_SIZE:
            raise ValueError("capabilities overflow the 256-byte space")
        self.cs.poke(off + regs.PCI_CAP_LIST_ID, 1, cap_id)
        if self._last_link is None:
            self.cs.poke(regs.PCI_CAPABILITY_LIST, 1, off)
            status = self.cs.read(regs.PCI_STATUS, 2) | regs.PCI_STATUS_CAP_LIST
            self.cs.poke(regs.PCI_STATUS, 2, status)
        else:
            self.cs.poke(self._last_link, 1, off)
        self._last_link = off + regs.PCI_CAP_LIST_NEXT
        self._next_cap = (off + length + 3) & ~3
        self.caps[cap_id] = off
        return off

    def _mask(self, kind: str, offset: int, size: int, mask: int) -> None:
        self._cap_masks.append((kind, offset, size, mask))

    def add_pm(self, *, no_soft_reset: bool = False) -> int:
        """PCI PM 1.2 capability: D0 and D3hot only, no PME."""
        off = self._add_cap(regs.PCI_CAP_ID_PM, regs.PCI_PM_SIZEOF)
        self.cs.poke(off + regs.PCI_PM_PMC, 2, 3)  # version 3 = PCI PM 1.2
        ctrl = regs.PCI_PM_CTRL_NO_SOFT_RESET if no_soft_reset else 0
        self.cs.poke(off + regs.PCI_PM_CTRL, 2, ctrl)
        self._mask("w", off + regs.PCI_PM_CTRL, 2, regs.PCI_PM_CTRL_STATE_MASK)
        return off

    def add_msi(self, nvec: int = 1, *, addr64: bool = True, maskable: bool = True) -> int:
        """MSI capability with ``nvec`` (power of two, <= 32) requestable vectors."""
        if nvec not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"MSI vector count {nvec} is not a power of two <= 32")
        length = 10 + (4 if addr64 else 0) + (10 if maskable else 0)
        off = self._add_cap(regs.PCI_CAP_ID_MSI, length)
        flags = (nvec.bit_length() - 1) << 1
        flags |= regs.PCI_MSI_FLAGS_64BIT if addr64 else 0
        flags |= regs.PCI_MSI_FLAGS_MASKBIT if maskable else 0
        self.cs.poke(off + regs.PCI_MSI_FLAGS, 2, flags)
        self._mask(
            "w", off + regs.PCI_MSI_FLAGS, 2, regs.PCI_MSI_FLAGS_ENABLE | regs.PCI_MSI_FLAGS_QSIZE
        )
        self._mask("w", off + regs.PCI_MSI_ADDRESS_LO, 4, 0xFFFFFFFC)
        if addr64:
            self._mask("w", off + regs.PCI_MSI_ADDRESS_HI, 4, 0xFFFFFFFF)
        data = regs.PCI_MSI_DATA_64 if addr64 else regs.PCI_MSI_DATA_32
        self._mask("w", off + data, 2, 0xFFFF)
        if maskable:
            mask = regs.PCI_MSI_MASK_64 if addr64 else regs.PCI_MSI_MASK_32
            self._mask("w", off + mask, 4, (1 << nvec) - 1 if nvec < 32 else 0xFFFFFFFF)
        return off

    def add_msix(self, layout: MsixLayout) -> int:
        """MSI-X capability pointing at a table and PBA inside declared BARs."""
        for bir in (layout.table_bar, layout.pba_bar):
            if bir not in self.bar_sizes:
                raise ValueError(f"MSI-X structure in undeclared BAR {bir}")
        if layout.table_offset + 16 * layout.nvec > self.bar_sizes[layout.table_bar]:
            raise ValueError("MSI-X table does not fit its BAR")
        if layout.pba_offset + 8 * ((layout.nvec + 63) // 64) > self.bar_sizes[layout.pba_bar]:
            raise ValueError("MSI-X PBA does not fit its BAR")
        off = self._add_cap(regs.PCI_CAP_ID_MSIX, regs.PCI_CAP_MSIX_SIZEOF)
        self.cs.poke(off + regs.PCI_MSIX_FLAGS, 2, layout.nvec - 1)
        self.cs.poke(off + regs.PCI_MSIX_TABLE, 4, layout.table_offset | layout.table_bar)
        self.cs.poke(off + regs.PCI_MSIX_PBA, 4, layout.pba_offset | layout.pba_bar)
        self._mask(
            "w",
            off + regs.PCI_MSIX_FLAGS,
            2,
            regs.PCI_MSIX_FLAGS_ENABLE | regs.PCI_MSIX_FLAGS_MASKALL,
        )
        return off

    def add_express(self, port_type: int = regs.PCI_EXP_TYPE_ENDPOINT, *, flr: bool = True) -> int:
        """PCIe capability v2, a Gen1 x1 link, FLR advertised when ``flr``."""
        if self.cs.size != regs.PCI_CFG_SPACE_EXP_SIZE:
            raise ValueError("a PCIe capability needs the 4096-byte config space (express=True)")
        off = self._add_cap(regs.PCI_CAP_ID_EXP, regs.PCI_CAP_EXP_SIZEOF)
        self.cs.poke(off + regs.PCI_EXP_FLAGS, 2, 2 | (port_type << 4))
        devcap = regs.PCI_EXP_DEVCAP_RBER | (regs.PCI_EXP_DEVCAP_FLR if flr else 0)
        self.cs.poke(off + regs.PCI_EXP_DEVCAP, 4, devcap)
        # Max read request 512 bytes (reset value 010b), as the spec requires.
        self.cs.poke(off + regs.PCI_EXP_DEVCTL, 2, 0x2000 | regs.PCI_EXP_DEVCTL_RELAX_EN)
        devctl = _DEVCTL_WMASK | (regs.PCI_EXP_DEVCTL_BCR_FLR if flr else 0)
        self._mask("w", off + regs.PCI_EXP_DEVCTL, 2, devctl)
        self._mask("c", off + regs.PCI_EXP_DEVSTA, 2, _DEVSTA_W1C)
        # 2.5 GT/s, x1: lspci decodes a zero speed as "unknown".
        self.cs.poke(off + regs.PCI_EXP_LNKCAP, 4, 0x11)
        self._mask("w", off + regs.PCI_EXP_LNKCTL, 2, _LNKCTL_ASPM)
        self.cs.poke(off + regs.PCI_EXP_LNKSTA, 2, 0x11)
        self.cs.poke(off + regs.PCI_EXP_LNKCAP2, 4, 0x2)  # supported speeds: 2.5 GT/s
        self.cs.poke(off + regs.PCI_EXP_LNKCTL2, 2, 0x1)  # target link speed 2.5 GT/s
        return off

    # -- bridge windows -------------------------------------------------------------
    def bridge_buses(self, primary: int, secondary: int, subordinate: int) -> None:
        if not self.bridge:
            raise ValueError("bus numbers exist only in a type-1 header")
        if not 0 <= primary < secondary <= subordinate <= 0xFF:
            raise ValueError("bridge bus numbers must satisfy primary < secondary <= subordinate")
        self.cs.poke(regs.PCI_PRIMARY_BUS, 1, primary)
        self.cs.poke(regs.PCI_SECONDARY_BUS, 1, secondary)
        self.cs.poke(regs.PCI_SUBORDINATE_BUS, 1, subordinate)
        # Windows start closed (base > limit); the prefetchable one is 64-bit capable.
        self.cs.poke(regs.PCI_IO_BASE, 1, 0xF0)
        self.cs.poke(regs.PCI_MEMORY_BASE, 2, 0xFFF0)
        self.cs.poke(regs.PCI_PREF_MEMORY_BASE, 2, 0xFFF0 | regs.PCI_PREF_RANGE_TYPE_64)
        self.cs.poke(regs.PCI_PREF_MEMORY_LIMIT, 2, regs.PCI_PREF_RANGE_TYPE_64)

    # -- result ----------------------------------------------------------------------
    def build(self) -> BuiltConfig:
        apply_standard_masks(self.cs, self.bar_sizes)
        for kind, off, size, mask in self._cap_masks:
            if kind == "w":
                self.cs.set_wmask(off, size, mask)
            else:
                self.cs.set_w1cmask(off, size, mask)
        return BuiltConfig(self.cs, dict(self.bar_sizes), dict(self.caps))
