"""The strict per-device policy, modelled on Xen vPCI's rules for domUs
(``xen/drivers/vpci/{vpci,header,cap}.c``).

Differences from Linux' default, each one a field in this table:

* bytes no field covers read all-ones and writes to them are dropped (vPCI's
  ``vpci_read_hw``: "Guest domains are not allowed to read real hardware");
  permissive mode does not apply;
* the capability chain is relinked so only MSI and MSI-X are visible
  (``supported_caps``); STATUS.CAP_LIST is hidden when neither exists;
* the ROM BAR reads 0 ("we do not handle ROM for guests for now");
* the first extended capability header (0x100) reads 0, ending that list.

Deliberately *not* vPCI: COMMAND and the BARs keep Linux' rules (a PV guest
has no p2m to remap BARs into), and MSI/MSI-X flags keep Linux' handler.
Nor does it hide the identity and housekeeping registers: vendor/device ID,
class code and revision, header type, subsystem vendor/device ID, interrupt
line and pin, cache line size, latency timer and BIST stay readable (Linux'
header fields plus the ``strict.*`` identity fields below), where Xen's vPCI
gives a domU all-ones for every register it has no handler for -- a PV
guest's PCI core cannot enumerate a function whose IDs read all-ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from xenpci.pci import regs
from xenpci.pci.capabilities import walk_capabilities
from xenpci.pciback.conf_space.capability import CAPLIST_MSI, CAPLIST_MSIX
from xenpci.pciback.conf_space.engine import ConfigField, DevData, add_field
from xenpci.pciback.conf_space.header import (
    HEADER_0,
    HEADER_1,
    HEADER_COMMON,
    read_hw8,
    read_hw16,
    read_hw32,
)

EXPOSED_CAPS = (regs.PCI_CAP_ID_MSI, regs.PCI_CAP_ID_MSIX)


@dataclass(slots=True)
class Chain:
    """The relinked capability chain: exposed capability offsets in list order."""

    exposed: list[int]


def _chain(dd: DevData) -> list[int]:
    return [c.offset for c in walk_capabilities(dd.hw.config) if c.id in EXPOSED_CAPS]


def _chain_init(dd: DevData, offset: int) -> object:
    return Chain(_chain(dd))


def status_read(dd: DevData, offset: int, data: object) -> tuple[int, int]:
    assert isinstance(data, Chain)
    err, value = dd.hw_read(offset, 2)
    if not data.exposed:
        value &= ~regs.PCI_STATUS_CAP_LIST
    return err, value


def status_write(dd: DevData, offset: int, value: int, data: object) -> int:
    """Only the write-1-to-clear error bits reach hardware."""
    return dd.hw_write(offset, 2, value & regs.PCI_STATUS_ERROR_BITS)


def cap_pointer_read(dd: DevData, offset: int, data: object) -> tuple[int, int]:
    assert isinstance(data, Chain)
    return 0, data.exposed[0] if data.exposed else 0


@dataclass(slots=True)
class CapLink:
    cap_id: int
    next: int


def _cap_link_init(dd: DevData, offset: int) -> object:
    chain = _chain(dd)
    i = chain.index(offset)
    nxt = chain[i + 1] if i + 1 < len(chain) else 0
    return CapLink(dd.hw_read(offset, 1)[1], nxt)


def cap_link_read(dd: DevData, offset: int, data: object) -> tuple[int, int]:
    assert isinstance(data, CapLink)
    return 0, data.cap_id | (data.next << 8)


def zero_read(dd: DevData, offset: int, data: object) -> tuple[int, int]:
    return 0, 0


_IGNORED = "ignored: read-only"
STRICT_HEADER: tuple[ConfigField, ...] = (
    ConfigField(
        "strict.status",
        regs.PCI_STATUS,
        2,
        read=status_read,
        write=status_write,
        init=_chain_init,
        on_write="only error bits (write-1-to-clear) reach hardware; CAP_LIST hidden "
        "without MSI/MSI-X",
    ),
    ConfigField(
        "strict.class_revision", regs.PCI_CLASS_REVISION, 4, read=read_hw32, on_write=_IGNORED
    ),
    ConfigField("strict.header_type", regs.PCI_HEADER_TYPE, 1, read=read_hw8, on_write=_IGNORED),
    ConfigField(
        "strict.capability_list",
        regs.PCI_CAPABILITY_LIST,
        1,
        read=cap_pointer_read,
        init=_chain_init,
        on_write="ignored: points at the first MSI/MSI-X capability",
    ),
)
STRICT_HEADER_0: tuple[ConfigField, ...] = (
    ConfigField(
        "strict.subsystem_vendor_id",
        regs.PCI_SUBSYSTEM_VENDOR_ID,
        2,
        read=read_hw16,
        on_write=_IGNORED,
    ),
    ConfigField("strict.subsystem_id", regs.PCI_SUBSYSTEM_ID, 2, read=read_hw16, on_write=_IGNORED),
)
STRICT_ROM = ConfigField(
    "strict.rom",
    regs.PCI_ROM_ADDRESS,
    4,
    read=zero_read,
    on_write="ignored: the ROM is not exposed (reads 0)",
)
STRICT_ROM1 = ConfigField(
    "strict.rom",
    regs.PCI_ROM_ADDRESS1,
    4,
    read=zero_read,
    on_write="ignored: the ROM is not exposed (reads 0)",
)
STRICT_EXT_END = ConfigField(
    "strict.ext_cap_end",
    0x100,
    4,
    read=zero_read,
    on_write="ignored: extended capabilities are hidden (reads 0)",
)
CAP_LINK = ConfigField(
    "strict.cap_link",
    0,
    2,
    read=cap_link_read,
    init=_cap_link_init,
    on_write="ignored: ID and relinked next pointer",
)


def _msi_body(cap_offset: int, dd: DevData) -> list[ConfigField]:
    """MSI address/data/mask/pending, read-only dwords (PV guests use the ops)."""
    _, flags = dd.hw_read(cap_offset + regs.PCI_MSI_FLAGS, 2)
    length = 0x0C if not flags & regs.PCI_MSI_FLAGS_64BIT else 0x10
    if flags & regs.PCI_MSI_FLAGS_MASKBIT:
        length += 8
    return [
        ConfigField(
            f"strict.msi_body_{off:02x}",
            off,
            4,
            read=read_hw32,
            on_write="ignored: MSI is set up through XEN_PCI_OP_enable_msi",
        )
        for off in range(4, length, 4)
    ]


MSIX_BODY: tuple[ConfigField, ...] = (
    ConfigField("strict.msix_table", regs.PCI_MSIX_TABLE, 4, read=read_hw32, on_write=_IGNORED),
    ConfigField("strict.msix_pba", regs.PCI_MSIX_PBA, 4, read=read_hw32, on_write=_IGNORED),
)


def strict_add_fields(dd: DevData, header_type: int) -> None:
    """Build the strict table: Linux' header rules, the identity registers, and
    only the MSI/MSI-X capabilities with relinked next pointers."""
    bridge = header_type == regs.PCI_HEADER_TYPE_BRIDGE
    # The strict ROM field goes first so the dup check skips Linux' ROM field.
    add_field(dd, STRICT_ROM1 if bridge else STRICT_ROM)
    for fld in (*HEADER_COMMON, *(HEADER_1 if bridge else HEADER_0), *STRICT_HEADER):
        add_field(dd, fld)
    if not bridge:
        for fld in STRICT_HEADER_0:
            add_field(dd, fld)
    for cap in walk_capabilities(dd.hw.config):
        if cap.id == regs.PCI_CAP_ID_MSI:
            add_field(dd, CAP_LINK, cap.offset)
            for fld in (*CAPLIST_MSI, *_msi_body(cap.offset, dd)):
                add_field(dd, fld, cap.offset)
        elif cap.id == regs.PCI_CAP_ID_MSIX:
            add_field(dd, CAP_LINK, cap.offset)
            for fld in (*CAPLIST_MSIX, *MSIX_BODY):
                add_field(dd, fld, cap.offset)
    if dd.hw.config.is_express:
        add_field(dd, STRICT_EXT_END)
