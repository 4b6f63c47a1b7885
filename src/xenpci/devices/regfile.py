"""MMIO/port-IO register files with side effects, declared as rows.

Mirrors QEMU's ``hw/core/register.c`` (``RegisterAccessInfo``: reset value,
writable bits, write-1-to-clear bits, pre/post hooks): each register is one
``Reg`` row, and generic code splits an access into byte lanes, applies the
masks and then runs the register's hook. Deliberate differences: accesses must
be naturally aligned 1/2/4/8-byte transactions (anything else is an
``MmioError``, where hardware would be undefined), and bytes no register covers
read as zero and ignore writes (reserved space).

Write hooks run on every write, even one that leaves the value unchanged,
because doorbells are exactly that: writing the same tail again still rings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from xenpci.devices.errors import MmioError

ReadHook = Callable[[int], int]
"""Gets the stored value, returns what the access sees (computed registers)."""
WriteHook = Callable[[int, int], None]
"""Gets (old, new) after the masked value has been stored."""

_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True, slots=True)
class Reg:
    """One register: where it is, its reset value and which bits software may change."""

    name: str
    offset: int
    size: int = 4
    reset: int = 0
    wmask: int | None = None  # None: every bit writable
    w1c: int = 0

    def __post_init__(self) -> None:
        if self.size not in _SIZES or self.offset < 0 or self.offset % self.size:
            raise ValueError(f"register {self.name}: bad offset/size {self.offset:#x}/{self.size}")
        full = (1 << (8 * self.size)) - 1
        if not 0 <= self.reset <= full:
            raise ValueError(f"register {self.name}: reset {self.reset:#x} does not fit")
        if self.w1c & ~full or (self.wmask is not None and self.wmask & ~full):
            raise ValueError(f"register {self.name}: mask wider than the register")
        if self.w1c & self.writable:
            raise ValueError(f"register {self.name}: a bit cannot be both RW and W1C")

    @property
    def writable(self) -> int:
        full = (1 << (8 * self.size)) - 1
        return (full & ~self.w1c) if self.wmask is None else self.wmask


class RegisterFile:
    """A block of registers behind (part of) a BAR."""

    def __init__(self, name: str, size: int, regs: Iterable[Reg]) -> None:
        self.name = name
        self.size = size
        self.regs: dict[str, Reg] = {}
        self._by_byte: dict[int, Reg] = {}
        for reg in regs:
            if reg.name in self.regs:
                raise ValueError(f"{name}: duplicate register {reg.name}")
            if reg.offset + reg.size > size:
                raise ValueError(f"{name}: register {reg.name} outside the block")
            for b in range(reg.offset, reg.offset + reg.size):
                if b in self._by_byte:
                    raise ValueError(f"{name}: {reg.name} overlaps {self._by_byte[b].name}")
                self._by_byte[b] = reg
            self.regs[reg.name] = reg
        self.values: dict[str, int] = {}
        self._read_hooks: dict[str, ReadHook] = {}
        self._write_hooks: dict[str, WriteHook] = {}
        self.reset()

    def on_read(self, name: str, hook: ReadHook) -> None:
        self._read_hooks[self.regs[name].name] = hook

    def on_write(self, name: str, hook: WriteHook) -> None:
        self._write_hooks[self.regs[name].name] = hook

    def reset(self) -> None:
        self.values = {name: reg.reset for name, reg in self.regs.items()}

    # Device-internal access: no masks, no hooks (status bits, hardware updates).
    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def __setitem__(self, name: str, value: int) -> None:
        reg = self.regs[name]
        self.values[name] = value & ((1 << (8 * reg.size)) - 1)

    def _check(self, offset: int, size: int) -> None:
        if size not in _SIZES:
            raise MmioError(self.name, offset, size, "access size must be 1, 2, 4 or 8")
        if offset < 0 or offset + size > self.size:
            raise MmioError(self.name, offset, size, f"outside the {self.size:#x}-byte block")
        if offset % size:
            raise MmioError(self.name, offset, size, "unaligned access")

    def _overlapping(self, offset: int, size: int) -> list[Reg]:
        seen: dict[str, Reg] = {}
        for b in range(offset, offset + size):
            reg = self._by_byte.get(b)
            if reg is not None:
                seen.setdefault(reg.name, reg)
        return list(seen.values())

    def read(self, offset: int, size: int) -> int:
        self._check(offset, size)
        result = 0
        for reg in self._overlapping(offset, size):
            hook = self._read_hooks.get(reg.name)
            value = self.values[reg.name] if hook is None else hook(self.values[reg.name])
            for b in range(max(offset, reg.offset), min(offset + size, reg.offset + reg.size)):
                byte = (value >> (8 * (b - reg.offset))) & 0xFF
                result |= byte << (8 * (b - offset))
        return result

    def write(self, offset: int, size: int, value: int) -> None:
        self._check(offset, size)
        value &= (1 << (8 * size)) - 1
        for reg in self._overlapping(offset, size):
            lanes = 0
            shifted = 0
            for b in range(max(offset, reg.offset), min(offset + size, reg.offset + reg.size)):
                shift = 8 * (b - reg.offset)
                lanes |= 0xFF << shift
                shifted |= ((value >> (8 * (b - offset))) & 0xFF) << shift
            old = self.values[reg.name]
            wm = reg.writable & lanes
            new = (old & ~wm) | (shifted & wm)
            new &= ~(shifted & reg.w1c & lanes)
            self.values[reg.name] = new
            hook = self._write_hooks.get(reg.name)
            if hook is not None:
                hook(old, new)
