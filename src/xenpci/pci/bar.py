"""Base Address Registers: decoding and sizing.

Models the BAR rules of PCI Local Bus 3.0 §6.2.5 as Linux applies them in
``drivers/pci/probe.c`` (``__pci_read_base``, ``pci_size``): I/O BARs,
32-bit and 64-bit memory BARs (the upper dword in the next register),
prefetchable memory, and the expansion ROM BAR with its enable bit (index 6,
Linux's ``PCI_ROM_RESOURCE``). Sizing uses the all-ones write protocol.

Also dom0's view of the same BARs, :class:`Resource` (Linux's ``struct
resource`` in ``dev->resource[0..6]``, what sysfs ``resource`` prints): it can
differ from the registers -- the legacy IDE ports of ``pci_setup_device``
(0x1f0-0x1f7, 0x3f6, 0x170-0x177, 0x376, whatever BAR0-3 hold), a ROM the
kernel assigned but never enabled, ``[virtual]`` and Enhanced Allocation
BARs whose registers read 0.

Differences: a passive source (a dump) cannot be probed, so a BAR's size is
whatever the source said (``lspci`` ``[size=...]``, sysfs ``resource``) or
``None``, never guessed. The reserved memory type ``11b``, a 64-bit BAR in
the last slot, or an address not aligned to the known size are
:class:`~xenpci.pci.errors.BarError`, not silently repaired;
:func:`plausible_sizes` turns an impossible size of one BAR into a note so
the rest of the function (and of the source) stays usable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from xenpci.pci import regs
from xenpci.pci.errors import BarError

if TYPE_CHECKING:
    from xenpci.pci.config import ConfigSpace

BarKind = Literal["io", "mem32", "mem64", "rom"]
ROM_INDEX = 6

# ``struct resource`` flags (include/linux/ioport.h), as sysfs ``resource`` prints them.
IORESOURCE_ROM_ENABLE = 0x1
IORESOURCE_ROM_SHADOW = 0x2
IORESOURCE_PCI_FIXED = 0x10
IORESOURCE_PCI_EA_BEI = 0x20
IORESOURCE_IO = 0x100
IORESOURCE_MEM = 0x200
IORESOURCE_PREFETCH = 0x2000
IORESOURCE_READONLY = 0x4000
IORESOURCE_SIZEALIGN = 0x40000
IORESOURCE_MEM_64 = 0x100000
IORESOURCE_DISABLED = 0x10000000
IORESOURCE_UNSET = 0x20000000
IORESOURCE_BUSY = 0x80000000
#: The register's low bits Linux keeps in ``flags`` (``PCI_REGION_FLAG_MASK``).
PCI_REGION_FLAG_MASK = 0x0F
#: probe.c's ``LEGACY_IO_RESOURCE``: fixed I/O ports, no BAR type bits.
LEGACY_IO_RESOURCE = IORESOURCE_IO | IORESOURCE_PCI_FIXED
PCI_CLASS_STORAGE_IDE = 0x0101
#: ``pci_setup_device``'s legacy IDE quirk: (prog-if native bit, [(BAR, start, size)]).
_LEGACY_IDE = (
    (0x01, ((0, 0x1F0, 8), (1, 0x3F6, 1))),
    (0x04, ((2, 0x170, 8), (3, 0x376, 1))),
)
_MIN_SIZE: dict[str, int] = {"io": 4, "mem32": 16, "mem64": 16, "rom": 2048}
_ADDR_LIMIT: dict[str, int] = {"io": 1 << 32, "mem32": 1 << 32, "mem64": 1 << 64, "rom": 1 << 32}


@dataclass(frozen=True, slots=True)
class Bar:
    """One decoded BAR (or the ROM BAR, ``index == 6``).

    ``size`` is ``None`` when the source did not say. ``enabled`` is the ROM
    enable bit for the ROM; regular BARs are always ``True`` here because
    their decoding is gated by COMMAND's I/O and memory bits instead.
    """

    index: int
    kind: BarKind
    prefetchable: bool
    address: int
    size: int | None
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.kind not in _MIN_SIZE:
            raise BarError(self.index, f"unknown kind {self.kind!r}")
        if not 0 <= self.index <= ROM_INDEX:
            raise BarError(self.index, "index must be 0..5, or 6 for the ROM")
        if (self.kind == "rom") != (self.index == ROM_INDEX):
            raise BarError(self.index, "the ROM BAR is index 6 and only it has kind 'rom'")
        if self.prefetchable and self.kind not in ("mem32", "mem64"):
            raise BarError(self.index, f"{self.kind} BAR cannot be prefetchable")
        if not 0 <= self.address < _ADDR_LIMIT[self.kind]:
            raise BarError(self.index, f"address 0x{self.address:x} out of range for {self.kind}")
        if self.size is not None:
            s = self.size
            if s < _MIN_SIZE[self.kind] or s & (s - 1):
                raise BarError(
                    self.index,
                    f"size {s} is not a power of two >= {_MIN_SIZE[self.kind]}",
                )
            if s > _ADDR_LIMIT[self.kind]:
                raise BarError(self.index, f"size {s} exceeds the {self.kind} address space")
            if self.address % s:
                raise BarError(self.index, f"address 0x{self.address:x} not aligned to size {s}")

    @property
    def is_io(self) -> bool:
        return self.kind == "io"

    @property
    def is_rom(self) -> bool:
        return self.kind == "rom"

    @property
    def end(self) -> int | None:
        """Last address covered (inclusive), when the size is known."""
        return None if self.size is None else self.address + self.size - 1


@dataclass(frozen=True, slots=True)
class Resource:
    """dom0's record of one BAR (``dev->resource[index]``; 6 = ROM).

    ``flags`` are Linux's ``IORESOURCE_*`` bits; ``size`` is ``None`` when the
    source printed the region without ``[size=]``.
    """

    index: int
    start: int
    size: int | None
    flags: int

    @property
    def usable(self) -> bool:
        """False for what ``bar_init`` treats as absent (no flags, disabled, unset, busy)."""
        return bool(self.flags) and not self.flags & (
            IORESOURCE_DISABLED | IORESOURCE_UNSET | IORESOURCE_BUSY
        )

    @property
    def is_io(self) -> bool:
        return bool(self.flags & IORESOURCE_IO) and not self.flags & IORESOURCE_MEM

    @property
    def is_mem64(self) -> bool:
        return bool(self.flags & IORESOURCE_MEM_64)


def bar_flags(bar: Bar) -> int:
    """The ``IORESOURCE_*`` flags Linux's ``__pci_read_base`` gives a decoded BAR."""
    if bar.kind == "io":
        return IORESOURCE_IO | IORESOURCE_SIZEALIGN | regs.PCI_BASE_ADDRESS_SPACE_IO
    if bar.kind == "rom":
        enable = IORESOURCE_ROM_ENABLE if bar.enabled else 0
        return IORESOURCE_MEM | IORESOURCE_PREFETCH | IORESOURCE_READONLY | enable
    flags = IORESOURCE_MEM | IORESOURCE_SIZEALIGN
    if bar.kind == "mem64":
        flags |= IORESOURCE_MEM_64 | regs.PCI_BASE_ADDRESS_MEM_TYPE_64
    if bar.prefetchable:
        flags |= IORESOURCE_PREFETCH | regs.PCI_BASE_ADDRESS_MEM_PREFETCH
    return flags


def bar_resource(bar: Bar) -> Resource:
    """The resource Linux would record for a BAR decoded from its registers."""
    return Resource(bar.index, bar.address, bar.size, bar_flags(bar))


def legacy_ide_resources(cs: ConfigSpace) -> dict[int, Resource]:
    """The fixed ports ``pci_setup_device`` gives an IDE controller in legacy mode.

    A channel whose prog-if "native" bit is clear gets 0x1f0/0x3f6 (primary)
    or 0x170/0x376 (secondary), sizes 8 and 1, whatever BAR0-3 hold.
    """
    if cs.known_size < regs.PCI_CLASS_DEVICE + 2 or cs.header_type != 0:
        return {}
    if cs.class_code >> 8 != PCI_CLASS_STORAGE_IDE:
        return {}
    progif = cs.read(regs.PCI_CLASS_PROG, 1)
    out: dict[int, Resource] = {}
    for native, ports in _LEGACY_IDE:
        if not progif & native:
            for index, start, size in ports:
                out[index] = Resource(index, start, size, LEGACY_IO_RESOURCE)
    return out


def plausible_sizes(cs: ConfigSpace, sizes: Mapping[int, int]) -> tuple[dict[int, int], list[str]]:
    """The sizes :func:`decode_bars` accepts, and a note for each one dropped.

    Sizes of legacy IDE ports (see :func:`legacy_ide_resources`) are not BAR
    sizes and are set aside; any other size that makes its BAR impossible
    (not a power of two, misaligned...) is dropped with the reason, so one odd
    BAR never makes the whole function -- or the whole source -- unusable.
    """
    kept = {i: s for i, s in sizes.items() if s}
    notes: list[str] = []
    legacy = legacy_ide_resources(cs)
    for i in sorted(set(kept) & set(legacy)):
        del kept[i]
    if legacy:
        ports = ", ".join(f"BAR {r.index} 0x{r.start:x}+{r.size}" for r in legacy.values())
        notes.append(f"legacy IDE mode: fixed ports {ports} (Linux ignores these registers)")
    for _ in range(ROM_INDEX + 1):
        try:
            decode_bars(cs, kept)
        except BarError as e:
            if e.index not in kept:
                break  # an encoding error, not a size: the caller reports it
            notes.append(f"BAR {e.index}: size {kept.pop(e.index)} ignored ({e.reason})")
            continue
        break
    return kept, notes


def bar_register_offset(index: int, header_type: int = regs.PCI_HEADER_TYPE_NORMAL) -> int:
    """Config offset of BAR ``index`` (6 = ROM) for a header type (0 or 1)."""
    nbars = bar_count(header_type)
    if index == ROM_INDEX:
        if header_type == regs.PCI_HEADER_TYPE_BRIDGE:
            return regs.PCI_ROM_ADDRESS1
        if header_type == regs.PCI_HEADER_TYPE_NORMAL:
            return regs.PCI_ROM_ADDRESS
        raise BarError(index, f"header type {header_type} has no ROM BAR")
    if not 0 <= index < nbars:
        raise BarError(index, f"header type {header_type} has BARs 0..{nbars - 1}")
    return regs.PCI_BASE_ADDRESS_0 + 4 * index


def bar_count(header_type: int) -> int:
    """Number of BARs of a header type: 6 (normal), 2 (bridge), 1 (CardBus)."""
    return {regs.PCI_HEADER_TYPE_NORMAL: 6, regs.PCI_HEADER_TYPE_BRIDGE: 2}.get(
        header_type & regs.PCI_HEADER_TYPE_MASK, 1 if header_type == 2 else 0
    )


def decode_bars(cs: ConfigSpace, sizes: Mapping[int, int] | None = None) -> tuple[Bar, ...]:
    """Decode the BARs (and ROM) of a config space.

    A BAR appears when its register is non-zero or ``sizes`` gives it a
    non-zero size; a 64-bit BAR takes two registers and is reported once
    under the lower index. Registers beyond ``cs.known_size`` are not
    decoded (they are unknown, not zero). Raises :class:`BarError` for
    impossible encodings.
    """
    sizes = sizes or {}
    htype = cs.header_type
    out: list[Bar] = []
    nbars = bar_count(htype)
    # Linux overrides legacy-mode IDE BARs with fixed ports: their registers mean nothing.
    legacy = legacy_ide_resources(cs)
    i = 0
    while i < nbars:
        off = regs.PCI_BASE_ADDRESS_0 + 4 * i
        if off + 4 > cs.known_size:
            break
        if i in legacy:
            i += 1
            continue
        lo = cs.read(off, 4)
        size = sizes.get(i) or None
        if lo == 0 and size is None:
            i += 1
            continue
        if lo & regs.PCI_BASE_ADDRESS_SPACE_IO:
            out.append(Bar(i, "io", False, lo & regs.PCI_BASE_ADDRESS_IO_MASK, size))
            i += 1
            continue
        mtype = lo & regs.PCI_BASE_ADDRESS_MEM_TYPE_MASK
        pref = bool(lo & regs.PCI_BASE_ADDRESS_MEM_PREFETCH)
        if mtype == regs.PCI_BASE_ADDRESS_MEM_TYPE_64:
            if i + 1 >= nbars:
                raise BarError(i, "64-bit BAR in the last slot has no upper half")
            if off + 8 > cs.known_size:
                raise BarError(i, "upper half of a 64-bit BAR is beyond the known config bytes")
            hi = cs.read(off + 4, 4)
            addr = (hi << 32) | (lo & regs.PCI_BASE_ADDRESS_MEM_MASK)
            out.append(Bar(i, "mem64", pref, addr, size))
            i += 2
            continue
        if mtype == 0x06:
            raise BarError(i, "memory type 11b is reserved")
        out.append(Bar(i, "mem32", pref, lo & regs.PCI_BASE_ADDRESS_MEM_MASK, size))
        i += 1
    if htype in (regs.PCI_HEADER_TYPE_NORMAL, regs.PCI_HEADER_TYPE_BRIDGE):
        off = bar_register_offset(ROM_INDEX, htype)
        if off + 4 <= cs.known_size:
            rom = cs.read(off, 4)
            size = sizes.get(ROM_INDEX) or None
            if rom != 0 or size is not None:
                out.append(
                    Bar(
                        ROM_INDEX,
                        "rom",
                        False,
                        rom & regs.PCI_ROM_ADDRESS_MASK,
                        size,
                        bool(rom & regs.PCI_ROM_ADDRESS_ENABLE),
                    )
                )
    return tuple(out)


ConfigRead = Callable[[int, int], int]
ConfigWrite = Callable[[int, int, int], None]


def size_bar_by_probe(
    read: ConfigRead,
    write: ConfigWrite,
    index: int,
    *,
    header_type: int = regs.PCI_HEADER_TYPE_NORMAL,
) -> int:
    """Size BAR ``index`` (6 = ROM) with the all-ones write protocol.

    As Linux's ``__pci_read_base``: turn off I/O and memory decode, write
    all ones (the ROM keeps its enable bit), read back, restore the BAR and
    COMMAND. Returns the size in bytes, 0 when the BAR is not implemented
    (reads back 0 or all ones). ``read``/``write`` are config accessors such
    as ``PciFunction.config_read``/``config_write``.
    """
    off = bar_register_offset(index, header_type)
    decode = regs.PCI_COMMAND_IO | regs.PCI_COMMAND_MEMORY
    cmd = read(regs.PCI_COMMAND, 2)
    if cmd & decode:
        write(regs.PCI_COMMAND, 2, cmd & ~decode)
    try:
        orig = read(off, 4)
        if index == ROM_INDEX:
            write(off, 4, regs.PCI_ROM_ADDRESS_MASK | (orig & regs.PCI_ROM_ADDRESS_ENABLE))
            sz = read(off, 4)
            write(off, 4, orig)
            mask = sz & regs.PCI_ROM_ADDRESS_MASK
        elif orig & regs.PCI_BASE_ADDRESS_SPACE_IO:
            write(off, 4, 0xFFFFFFFF)
            sz = read(off, 4)
            write(off, 4, orig)
            if sz == 0xFFFFFFFF:
                return 0
            mask = sz & regs.PCI_BASE_ADDRESS_IO_MASK
            # Devices decoding only 16 address bits read the top half back as 0.
            if mask and not mask & 0xFFFF0000:
                mask |= 0xFFFF0000
        else:
            is64 = (orig & regs.PCI_BASE_ADDRESS_MEM_TYPE_MASK) == regs.PCI_BASE_ADDRESS_MEM_TYPE_64
            write(off, 4, 0xFFFFFFFF)
            sz = read(off, 4)
            write(off, 4, orig)
            if sz == 0xFFFFFFFF:
                return 0
            mask = sz & regs.PCI_BASE_ADDRESS_MEM_MASK
            if is64:
                orig_hi = read(off + 4, 4)
                write(off + 4, 4, 0xFFFFFFFF)
                mask |= read(off + 4, 4) << 32
                write(off + 4, 4, orig_hi)
    finally:
        if cmd & decode:
            write(regs.PCI_COMMAND, 2, cmd)
    # The size is the lowest writable address bit (pci_size()).
    return mask & -mask if mask else 0
