"""A PCI function's configuration space with per-bit write semantics.

Models the register file a PCI/PCIe function exposes through config cycles
(PCI Local Bus 3.0 §6, PCIe Base §7): 256 bytes conventional, 4096 with PCIe
extended space. Each bit is read-only, read-write (``wmask``) or
write-1-to-clear (``w1cmask``), like QEMU's ``PCIDevice.wmask``/``w1cmask``
and the ``ro``/``rw1c`` masks of Xen vPCI registers. Reserved bits are simply
read-only zero bits.

Deliberate differences from hardware: bytes that the source could not read
(a 64-byte non-root sysfs read, a ``-x`` dump) are held as ``0xff`` -- what
``lspci -F`` shows for gaps -- and :attr:`ConfigSpace.known_size` says how
many leading bytes are real, so nobody invents the rest. Unaligned accesses
are allowed here (the layer above, pciback, enforces natural alignment as
Linux does); an access crossing the end of the space is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from xenpci.pci import regs
from xenpci.pci.errors import ConfigError

_VALID_SIZES = (1, 2, 4)


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    """An opaque saved image of a config space (data and masks)."""

    data: bytes
    wmask: bytes
    w1cmask: bytes
    known_size: int


class ConfigSpace:
    """256- or 4096-byte config space; little-endian 1/2/4-byte accesses.

    ``data`` is what is known of the space; it may be shorter than ``size``
    (the rest reads as ``0xff`` and ``known_size`` records the real length).
    ``size`` defaults to 256, or 4096 when ``data`` is longer than 256 bytes.
    A fresh space is entirely read-only: call :func:`apply_standard_masks`
    or :meth:`set_wmask`/:meth:`set_w1cmask` to give it write semantics.
    """

    __slots__ = ("_data", "_known", "_size", "_w1c", "_wmask")

    def __init__(self, data: bytes = b"", size: int | None = None) -> None:
        if size is None:
            size = (
                regs.PCI_CFG_SPACE_EXP_SIZE
                if len(data) > regs.PCI_CFG_SPACE_SIZE
                else regs.PCI_CFG_SPACE_SIZE
            )
        if size not in (regs.PCI_CFG_SPACE_SIZE, regs.PCI_CFG_SPACE_EXP_SIZE):
            raise ConfigError(0, size, "config space size must be 256 or 4096")
        if len(data) > size:
            raise ConfigError(0, len(data), f"{len(data)} bytes of data exceed size {size}")
        self._size = size
        self._known = len(data)
        self._data = bytearray(data) + b"\xff" * (size - len(data))
        self._wmask = bytearray(size)
        self._w1c = bytearray(size)

    # --- geometry ------------------------------------------------------------
    @property
    def size(self) -> int:
        """256 (conventional) or 4096 (PCIe extended)."""
        return self._size

    @property
    def known_size(self) -> int:
        """How many leading bytes came from the source; the rest read 0xff."""
        return self._known

    @property
    def is_express(self) -> bool:
        """True when the space has the 4096-byte extended region."""
        return self._size == regs.PCI_CFG_SPACE_EXP_SIZE

    def _check(self, offset: int, size: int) -> None:
        if size not in _VALID_SIZES:
            raise ConfigError(offset, size, "size must be 1, 2 or 4")
        if offset < 0 or offset + size > self._size:
            raise ConfigError(offset, size, f"outside the {self._size}-byte space")

    def _check_value(self, offset: int, size: int, value: int) -> None:
        if not 0 <= value < (1 << (8 * size)):
            raise ConfigError(offset, size, f"value 0x{value:x} does not fit in {size} bytes")

    # --- bus-side accesses ------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        """Read ``size`` bytes at ``offset`` as a little-endian integer."""
        # The checks of ``_check``, inlined for the valid case: every config read
        # of every scan and op lands here.
        if size not in _VALID_SIZES or offset < 0 or offset + size > self._size:
            self._check(offset, size)
        return int.from_bytes(self._data[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """A config write as hardware applies it.

        Bits in ``wmask`` take the written value; bits in ``w1cmask`` clear
        where a 1 is written; every other bit keeps its value.
        """
        self._check(offset, size)
        self._check_value(offset, size, value)
        for i in range(size):
            b = (value >> (8 * i)) & 0xFF
            pos = offset + i
            wm = self._wmask[pos]
            old = self._data[pos]
            self._data[pos] = ((old & ~wm) | (b & wm)) & ~(b & self._w1c[pos]) & 0xFF

    # --- device-side accesses -----------------------------------------------------
    def poke(self, offset: int, size: int, value: int) -> None:
        """Set bytes ignoring masks (the device itself: status bits, reset, models).

        Poked bytes become known: ``known_size`` grows to cover them.
        """
        self._check(offset, size)
        self._check_value(offset, size, value)
        self._data[offset : offset + size] = value.to_bytes(size, "little")
        self._known = max(self._known, offset + size)

    def set_wmask(self, offset: int, size: int, mask: int) -> None:
        """Make the bits of ``mask`` read-write (and the other bits there read-only)."""
        self._check(offset, size)
        self._check_value(offset, size, mask)
        if int.from_bytes(self._w1c[offset : offset + size], "little") & mask:
            raise ConfigError(offset, size, "a bit cannot be both read-write and write-1-to-clear")
        self._wmask[offset : offset + size] = mask.to_bytes(size, "little")

    def set_w1cmask(self, offset: int, size: int, mask: int) -> None:
        """Make the bits of ``mask`` write-1-to-clear (replacing the w1c mask there)."""
        self._check(offset, size)
        self._check_value(offset, size, mask)
        if int.from_bytes(self._wmask[offset : offset + size], "little") & mask:
            raise ConfigError(offset, size, "a bit cannot be both read-write and write-1-to-clear")
        self._w1c[offset : offset + size] = mask.to_bytes(size, "little")

    def wmask(self, offset: int, size: int) -> int:
        """The read-write mask at ``offset``."""
        self._check(offset, size)
        return int.from_bytes(self._wmask[offset : offset + size], "little")

    def w1cmask(self, offset: int, size: int) -> int:
        """The write-1-to-clear mask at ``offset``."""
        self._check(offset, size)
        return int.from_bytes(self._w1c[offset : offset + size], "little")

    # --- whole-space operations ------------------------------------------------------
    def raw(self) -> bytes:
        """All ``size`` bytes (unknown bytes as 0xff)."""
        return bytes(self._data)

    def known(self) -> bytes:
        """Only the bytes the source really provided."""
        return bytes(self._data[: self._known])

    def copy(self) -> ConfigSpace:
        """An independent copy, masks included."""
        other = ConfigSpace(b"", self._size)
        other.restore(self.snapshot())
        return other

    def snapshot(self) -> ConfigSnapshot:
        """Save data and masks (reset to defaults, pciback save/restore)."""
        return ConfigSnapshot(bytes(self._data), bytes(self._wmask), bytes(self._w1c), self._known)

    def restore(self, snap: ConfigSnapshot) -> None:
        """Return to a :meth:`snapshot`; the sizes must match."""
        if len(snap.data) != self._size:
            raise ConfigError(0, len(snap.data), f"snapshot size differs from {self._size}")
        self._data[:] = snap.data
        self._wmask[:] = snap.wmask
        self._w1c[:] = snap.w1cmask
        self._known = snap.known_size

    # --- convenience ---------------------------------------------------------------
    @property
    def vendor_id(self) -> int:
        return self.read(regs.PCI_VENDOR_ID, 2)

    @property
    def device_id(self) -> int:
        return self.read(regs.PCI_DEVICE_ID, 2)

    @property
    def class_code(self) -> int:
        """24-bit class, subclass, prog-if."""
        return self.read(regs.PCI_CLASS_REVISION, 4) >> 8

    @property
    def revision(self) -> int:
        return self.read(regs.PCI_REVISION_ID, 1)

    @property
    def header_type(self) -> int:
        """Header layout (0 normal, 1 bridge, 2 CardBus) without the multifunction bit."""
        return self.read(regs.PCI_HEADER_TYPE, 1) & regs.PCI_HEADER_TYPE_MASK

    @property
    def multifunction(self) -> bool:
        return bool(self.read(regs.PCI_HEADER_TYPE, 1) & regs.PCI_HEADER_TYPE_MFD)

    def __repr__(self) -> str:
        return (
            f"ConfigSpace({self.vendor_id:04x}:{self.device_id:04x}, size={self._size}, "
            f"known={self._known})"
        )


# Command bits a typical function implements as writable; the same set QEMU's
# pci_init_wmask() opens (I/O, memory, bus master, INTx disable) plus the
# parity/SERR response enables.
COMMAND_WMASK = (
    regs.PCI_COMMAND_IO
    | regs.PCI_COMMAND_MEMORY
    | regs.PCI_COMMAND_MASTER
    | regs.PCI_COMMAND_PARITY
    | regs.PCI_COMMAND_SERR
    | regs.PCI_COMMAND_INTX_DISABLE
)

# Bridge control bits that are read-write on a PCI-to-PCI bridge (PCI-PCI
# Bridge Architecture 1.2 §3.2.5.18): parity, SERR, ISA, VGA, VGA 16-bit,
# master abort mode, secondary bus reset, fast back-to-back.
BRIDGE_CONTROL_WMASK = 0x00FF


def apply_standard_masks(cs: ConfigSpace, bar_sizes: Mapping[int, int] | None = None) -> None:
    """Give a type-0 or type-1 header its standard write semantics.

    COMMAND, cache line size, latency timer and interrupt line become
    writable; STATUS error bits become write-1-to-clear; BARs and the
    expansion ROM (index 6) become writable above their size alignment when
    ``bar_sizes`` gives their size (so all-ones sizing works). A BAR whose
    size is unknown stays read-only: nothing is invented. Type-1 headers also
    get the bus numbers, windows and bridge control. CardBus (type 2) headers
    only get the common part.
    """
    from xenpci.pci.bar import bar_register_offset, decode_bars  # bar reads ConfigSpace

    sizes = dict(bar_sizes or {})
    cs.set_wmask(regs.PCI_COMMAND, 2, COMMAND_WMASK)
    cs.set_w1cmask(regs.PCI_STATUS, 2, regs.PCI_STATUS_ERROR_BITS)
    cs.set_wmask(regs.PCI_CACHE_LINE_SIZE, 1, 0xFF)
    cs.set_wmask(regs.PCI_LATENCY_TIMER, 1, 0xFF)
    cs.set_wmask(regs.PCI_INTERRUPT_LINE, 1, 0xFF)
    htype = cs.header_type
    if htype == regs.PCI_HEADER_TYPE_BRIDGE:
        for off in (regs.PCI_PRIMARY_BUS, regs.PCI_SECONDARY_BUS, regs.PCI_SUBORDINATE_BUS):
            cs.set_wmask(off, 1, 0xFF)
        cs.set_wmask(regs.PCI_SEC_LATENCY_TIMER, 1, 0xFF)
        cs.set_wmask(regs.PCI_IO_BASE, 1, 0xF0)
        cs.set_wmask(regs.PCI_IO_LIMIT, 1, 0xF0)
        cs.set_w1cmask(regs.PCI_SEC_STATUS, 2, regs.PCI_STATUS_ERROR_BITS)
        cs.set_wmask(regs.PCI_MEMORY_BASE, 2, 0xFFF0)
        cs.set_wmask(regs.PCI_MEMORY_LIMIT, 2, 0xFFF0)
        cs.set_wmask(regs.PCI_PREF_MEMORY_BASE, 2, 0xFFF0)
        cs.set_wmask(regs.PCI_PREF_MEMORY_LIMIT, 2, 0xFFF0)
        cs.set_wmask(regs.PCI_PREF_BASE_UPPER32, 4, 0xFFFFFFFF)
        cs.set_wmask(regs.PCI_PREF_LIMIT_UPPER32, 4, 0xFFFFFFFF)
        cs.set_wmask(regs.PCI_IO_BASE_UPPER16, 2, 0xFFFF)
        cs.set_wmask(regs.PCI_IO_LIMIT_UPPER16, 2, 0xFFFF)
        cs.set_wmask(regs.PCI_BRIDGE_CONTROL, 2, BRIDGE_CONTROL_WMASK)
    elif htype != regs.PCI_HEADER_TYPE_NORMAL:
        return
    for bar in decode_bars(cs, sizes):
        if bar.size is None or bar.size == 0:
            continue
        off = bar_register_offset(bar.index, htype)
        if bar.kind == "rom":
            cs.set_wmask(off, 4, (regs.PCI_ROM_ADDRESS_MASK & ~(bar.size - 1)) | 1)
        elif bar.kind == "io":
            cs.set_wmask(off, 4, regs.PCI_BASE_ADDRESS_IO_MASK & ~(bar.size - 1) & 0xFFFFFFFF)
        else:
            full = ~(bar.size - 1) & 0xFFFFFFFFFFFFFFF0
            cs.set_wmask(off, 4, full & 0xFFFFFFF0)
            if bar.kind == "mem64":
                cs.set_wmask(off + 4, 4, full >> 32)
