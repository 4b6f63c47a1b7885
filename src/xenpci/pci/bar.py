"""Base Address Registers: decoding and sizing.

Models the BAR rules of PCI Local Bus 3.0 §6.2.5 as Linux applies them in
``drivers/pci/probe.c`` (``__pci_read_base``, ``pci_size``): I/O BARs,
32-bit and 64-bit memory BARs (the upper dword in the next register),
prefetchable memory, and the expansion ROM BAR with its enable bit (index 6,
Linux's ``PCI_ROM_RESOURCE``). Sizing uses the all-ones write protocol.

Differences: a passive source (a dump) cannot be probed, so a BAR's size is
whatever the source said (``lspci`` ``[size=...]``, sysfs ``resource``) or
``None``, never guessed. The reserved memory type ``11b``, a 64-bit BAR in
the last slot, or an address not aligned to the known size are
:class:`~xenpci.pci.errors.BarError`, not silently repaired.
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
    i = 0
    while i < nbars:
        off = regs.PCI_BASE_ADDRESS_0 + 4 * i
        if off + 4 > cs.known_size:
            break
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
