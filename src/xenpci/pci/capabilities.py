"""Capability list walkers, standard (0x34 chain) and PCIe extended (0x100 chain).

Models Linux ``drivers/pci/pci.c`` ``__pci_find_next_cap_ttl`` and
``pci_find_next_ext_capability``: the standard list starts at the pointer in
``PCI_CAPABILITY_LIST`` (``PCI_CB_CAPABILITY_LIST`` for CardBus) when STATUS
has ``CAP_LIST``; pointers have their low two bits ignored; a pointer below
0x40 ends the list; the extended list starts at 0x100 and a zero (or
all-ones) header means "none". Names are the ones ``lspci`` prints.

Difference: Linux stops silently at a loop (its TTL) or a bad pointer. Here
the walkers stop at the same place *and* keep the reason: :func:`walk_capabilities`
returns the entries found so far (``strict=True`` raises the first
:class:`CapabilityError` instead), and :func:`capability_problems` lists every
problem with its offset. Entries beyond ``ConfigSpace.known_size`` are
reported as truncation, never read as made-up bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from xenpci.pci import regs
from xenpci.pci.config import ConfigSpace
from xenpci.pci.errors import CapabilityError

#: Standard capability IDs as ``lspci`` names them (pciutils ``ls-caps.c``).
CAPABILITY_NAMES: dict[int, str] = {
    regs.PCI_CAP_ID_PM: "Power Management",
    regs.PCI_CAP_ID_AGP: "AGP",
    regs.PCI_CAP_ID_VPD: "Vital Product Data",
    regs.PCI_CAP_ID_SLOTID: "Slot ID",
    regs.PCI_CAP_ID_MSI: "MSI",
    regs.PCI_CAP_ID_CHSWP: "CompactPCI hot-swap",
    regs.PCI_CAP_ID_PCIX: "PCI-X",
    regs.PCI_CAP_ID_HT: "HyperTransport",
    regs.PCI_CAP_ID_VNDR: "Vendor Specific Information",
    regs.PCI_CAP_ID_DBG: "Debug port",
    regs.PCI_CAP_ID_CCRC: "CompactPCI central resource control",
    regs.PCI_CAP_ID_SHPC: "Hot-plug capable",
    regs.PCI_CAP_ID_SSVID: "Subsystem",
    regs.PCI_CAP_ID_AGP3: "AGP3",
    regs.PCI_CAP_ID_SECDEV: "Secure device",
    regs.PCI_CAP_ID_EXP: "Express",
    regs.PCI_CAP_ID_MSIX: "MSI-X",
    regs.PCI_CAP_ID_SATA: "SATA HBA",
    regs.PCI_CAP_ID_AF: "PCI Advanced Features",
    regs.PCI_CAP_ID_EA: "Enhanced Allocation",
    regs.PCI_CAP_ID_FPB: "Flattening Portal Bridge",
}

#: Extended capability IDs as ``lspci`` names them (pciutils ``ls-ecaps.c``).
EXT_CAPABILITY_NAMES: dict[int, str] = {
    regs.PCI_EXT_CAP_ID_ERR: "Advanced Error Reporting",
    regs.PCI_EXT_CAP_ID_VC: "Virtual Channel",
    regs.PCI_EXT_CAP_ID_DSN: "Device Serial Number",
    regs.PCI_EXT_CAP_ID_PWR: "Power Budgeting",
    regs.PCI_EXT_CAP_ID_RCLD: "Root Complex Link",
    regs.PCI_EXT_CAP_ID_RCILC: "Root Complex Internal Link Control",
    regs.PCI_EXT_CAP_ID_RCEC: "Root Complex Event Collector Endpoint Association",
    regs.PCI_EXT_CAP_ID_MFVC: "Multi-Function Virtual Channel",
    regs.PCI_EXT_CAP_ID_VC9: "Virtual Channel",
    regs.PCI_EXT_CAP_ID_RCRB: "Root Complex Register Block",
    regs.PCI_EXT_CAP_ID_VNDR: "Vendor Specific Information",
    regs.PCI_EXT_CAP_ID_CAC: "Configuration Access Correlation",
    regs.PCI_EXT_CAP_ID_ACS: "Access Control Services",
    regs.PCI_EXT_CAP_ID_ARI: "Alternative Routing-ID Interpretation",
    regs.PCI_EXT_CAP_ID_ATS: "Address Translation Service",
    regs.PCI_EXT_CAP_ID_SRIOV: "Single Root I/O Virtualization",
    regs.PCI_EXT_CAP_ID_MRIOV: "Multi-Root I/O Virtualization",
    regs.PCI_EXT_CAP_ID_MCAST: "Multicast",
    regs.PCI_EXT_CAP_ID_PRI: "Page Request Interface",
    regs.PCI_EXT_CAP_ID_AMD_XXX: "Reserved for AMD",
    regs.PCI_EXT_CAP_ID_REBAR: "Physical Resizable BAR",
    regs.PCI_EXT_CAP_ID_DPA: "Dynamic Power Allocation",
    regs.PCI_EXT_CAP_ID_TPH: "Transaction Processing Hints",
    regs.PCI_EXT_CAP_ID_LTR: "Latency Tolerance Reporting",
    regs.PCI_EXT_CAP_ID_SECPCI: "Secondary PCI Express",
    regs.PCI_EXT_CAP_ID_PMUX: "Protocol Multiplexing",
    regs.PCI_EXT_CAP_ID_PASID: "Process Address Space ID",
    regs.PCI_EXT_CAP_ID_LNR: "LN Requester",
    regs.PCI_EXT_CAP_ID_DPC: "Downstream Port Containment",
    regs.PCI_EXT_CAP_ID_L1SS: "L1 PM Substates",
    regs.PCI_EXT_CAP_ID_PTM: "Precision Time Measurement",
    regs.PCI_EXT_CAP_ID_MPHY: "M-PCIe",
    regs.PCI_EXT_CAP_ID_FRS: "FRS Queueing",
    regs.PCI_EXT_CAP_ID_RTR: "Readiness Time Reporting",
    regs.PCI_EXT_CAP_ID_DVSEC: "Designated Vendor-Specific",
    regs.PCI_EXT_CAP_ID_VF_REBAR: "VF Resizable BAR",
    regs.PCI_EXT_CAP_ID_DLF: "Data Link Feature",
    regs.PCI_EXT_CAP_ID_PL_16GT: "Physical Layer 16.0 GT/s",
    regs.PCI_EXT_CAP_ID_LMR: "Lane Margining at the Receiver",
    regs.PCI_EXT_CAP_ID_HIER_ID: "Hierarchy ID",
    regs.PCI_EXT_CAP_ID_NPEM: "Native PCIe Enclosure Management",
    regs.PCI_EXT_CAP_ID_PL_32GT: "Physical Layer 32.0 GT/s",
    regs.PCI_EXT_CAP_ID_ALT_PROTO: "Alternate Protocol",
    regs.PCI_EXT_CAP_ID_SFI: "System Firmware Intermediary",
    regs.PCI_EXT_CAP_ID_SHDW_FUNC: "Shadow Functions",
    regs.PCI_EXT_CAP_ID_DOE: "Data Object Exchange",
    regs.PCI_EXT_CAP_ID_DEV3: "Device 3",
    regs.PCI_EXT_CAP_ID_IDE: "Integrity & Data Encryption",
    regs.PCI_EXT_CAP_ID_PL_64GT: "Physical Layer 64.0 GT/s",
    regs.PCI_EXT_CAP_ID_FLIT_LOG: "Flit Logging",
}

# Linux's PCI_FIND_CAP_TTL: at most 48 standard capabilities fit in 192 bytes.
_STD_TTL = 48
# (4096 - 256) / 8: the minimum extended capability is 8 bytes.
_EXT_TTL = (regs.PCI_CFG_SPACE_EXP_SIZE - regs.PCI_CFG_SPACE_SIZE) // 8


@dataclass(frozen=True, slots=True)
class Capability:
    """One entry of a capability list; ``extended`` for the 0x100 chain."""

    id: int
    offset: int
    name: str
    extended: bool = False
    version: int = 0

    def __post_init__(self) -> None:
        limit = 0xFFFF if self.extended else 0xFF
        if not 0 <= self.id <= limit:
            raise CapabilityError(self.offset, f"id 0x{self.id:x} out of range")
        lo, hi = (0x100, 0xFFC) if self.extended else (0x40, 0xFE)
        if not lo <= self.offset <= hi:
            raise CapabilityError(self.offset, "offset outside the capability area")


def capability_name(cap_id: int, *, extended: bool = False) -> str:
    """lspci's name for a capability ID, or ``#xx`` as lspci prints unknown ones."""
    names = EXT_CAPABILITY_NAMES if extended else CAPABILITY_NAMES
    return names.get(cap_id, f"#{cap_id:02x}")


def _walk_std(cs: ConfigSpace) -> tuple[list[Capability], list[CapabilityError]]:
    problems: list[CapabilityError] = []
    caps = [Capability(i, pos, capability_name(i)) for pos, i in _std_chain(cs, problems)]
    return caps, problems


def _std_chain(cs: ConfigSpace, problems: list[CapabilityError]) -> Iterator[tuple[int, int]]:
    """(offset, ID) of each standard capability in chain order; why the walk stopped
    early goes to ``problems``. A caller may stop at the entry it wants, as Linux's
    ``pci_find_capability`` does (no :class:`Capability` built for the others)."""
    if cs.known_size < regs.PCI_CAPABILITY_LIST + 1:
        return
    if not cs.read(regs.PCI_STATUS, 2) & regs.PCI_STATUS_CAP_LIST:
        return
    ptr_reg = (
        regs.PCI_CB_CAPABILITY_LIST
        if cs.header_type == regs.PCI_HEADER_TYPE_CARDBUS
        else regs.PCI_CAPABILITY_LIST
    )
    pos = cs.read(ptr_reg, 1) & ~3
    from_off = ptr_reg
    seen: set[int] = set()
    while pos:
        if pos < regs.PCI_STD_HEADER_SIZEOF:
            problems.append(
                CapabilityError(from_off, f"pointer 0x{pos:02x} points into the header")
            )
            break
        if pos in seen:
            problems.append(CapabilityError(from_off, f"loop back to 0x{pos:02x}"))
            break
        if len(seen) >= _STD_TTL:
            problems.append(CapabilityError(pos, f"more than {_STD_TTL} capabilities"))
            break
        if pos + 2 > cs.known_size:
            problems.append(
                CapabilityError(pos, f"beyond the {cs.known_size} known config bytes (truncated)")
            )
            break
        seen.add(pos)
        cap_id = cs.read(pos + regs.PCI_CAP_LIST_ID, 1)
        if cap_id == 0xFF:
            # An all-ones ID means nothing answers there; Linux stops too.
            problems.append(CapabilityError(pos, "capability ID 0xff (no device data)"))
            break
        yield pos, cap_id
        from_off = pos + regs.PCI_CAP_LIST_NEXT
        pos = cs.read(from_off, 1) & ~3


def has_extended_space(cs: ConfigSpace) -> bool:
    """Whether offsets 0x100.. belong to the function (Linux ``pci_cfg_space_size``).

    Only PCIe functions (an Express capability) and PCI-X 266/533 functions
    have extended space; on others the bytes above 0xff are typically an
    alias of the first 256 and must not be walked (as ``lspci`` also does).
    """
    if not cs.is_express or cs.known_size < regs.PCI_CFG_SPACE_SIZE + 4:
        return False
    std = walk_capabilities(cs)
    if any(c.id == regs.PCI_CAP_ID_EXP for c in std):
        return True
    for c in std:
        if c.id == regs.PCI_CAP_ID_PCIX and c.offset + regs.PCI_X_STATUS + 4 <= cs.known_size:
            status = cs.read(c.offset + regs.PCI_X_STATUS, 4)
            if status & (regs.PCI_X_STATUS_266MHZ | regs.PCI_X_STATUS_533MHZ):
                return True
    return False


def _walk_ext(cs: ConfigSpace) -> tuple[list[Capability], list[CapabilityError]]:
    caps: list[Capability] = []
    problems: list[CapabilityError] = []
    if not has_extended_space(cs):
        return caps, problems
    pos = regs.PCI_CFG_SPACE_SIZE
    from_off = pos
    seen: set[int] = set()
    header = cs.read(pos, 4)
    if header in (0, 0xFFFFFFFF):
        return caps, problems
    while True:
        if pos in seen:
            problems.append(CapabilityError(from_off, f"loop back to 0x{pos:03x}"))
            break
        if len(seen) >= _EXT_TTL:
            problems.append(CapabilityError(pos, f"more than {_EXT_TTL} extended capabilities"))
            break
        if pos + 4 > cs.known_size:
            problems.append(
                CapabilityError(pos, f"beyond the {cs.known_size} known config bytes (truncated)")
            )
            break
        seen.add(pos)
        header = cs.read(pos, 4)
        if header in (0, 0xFFFFFFFF):
            problems.append(CapabilityError(pos, f"empty header 0x{header:08x} in the chain"))
            break
        cap_id = regs.PCI_EXT_CAP_ID(header)
        caps.append(
            Capability(
                cap_id,
                pos,
                capability_name(cap_id, extended=True),
                extended=True,
                version=regs.PCI_EXT_CAP_VER(header),
            )
        )
        nxt = regs.PCI_EXT_CAP_NEXT(header)
        if nxt == 0:
            break
        if nxt < regs.PCI_CFG_SPACE_SIZE:
            problems.append(CapabilityError(pos, f"next pointer 0x{nxt:03x} below 0x100"))
            break
        from_off = pos
        pos = nxt
    return caps, problems


def walk_capabilities(cs: ConfigSpace, *, strict: bool = False) -> list[Capability]:
    """The standard capability list in chain order.

    Stops at the first problem (loop, pointer into the header, truncation);
    with ``strict`` that problem is raised as :class:`CapabilityError`.
    """
    caps, problems = _walk_std(cs)
    if strict and problems:
        raise problems[0]
    return caps


def walk_extended_capabilities(cs: ConfigSpace, *, strict: bool = False) -> list[Capability]:
    """The PCIe extended capability list (empty for a 256-byte space)."""
    caps, problems = _walk_ext(cs)
    if strict and problems:
        raise problems[0]
    return caps


def capability_problems(cs: ConfigSpace) -> list[CapabilityError]:
    """Every reason the walks above stopped early (empty for a healthy space)."""
    return _walk_std(cs)[1] + _walk_ext(cs)[1]


def find_capability(cs: ConfigSpace, cap_id: int) -> int | None:
    """Offset of the first standard capability ``cap_id`` (``pci_find_capability``)."""
    return next((pos for pos, i in _std_chain(cs, []) if i == cap_id), None)


def find_ext_capability(cs: ConfigSpace, cap_id: int) -> int | None:
    """Offset of the first extended capability ``cap_id`` (``pci_find_ext_capability``)."""
    return next((c.offset for c in walk_extended_capabilities(cs) if c.id == cap_id), None)
