"""MSI-X table and Pending Bit Array, as they live inside a memory BAR.

Mirrors PCIe Base Spec 6.1.4 / 7.7.2 (and QEMU ``hw/pci/msix.c``): a 16-byte
table entry per vector (address low, address high, data, vector control with
bit 0 = mask) and one pending bit per vector in the PBA. A vector that fires
while it, or the whole function, is masked sets its pending bit instead; when
it is unmasked with the bit set the message is sent and the bit cleared.

Access rule from the spec: "software must use aligned full DWORD or aligned
full QWORD transactions"; the spec leaves anything else undefined, here it is
an ``MmioError``. The PBA is read-only (writes are dropped, as Xen vPCI does).
Enable and Function Mask live in config space; the owning device forwards
them with ``set_control``.
"""

from __future__ import annotations

from xenpci.devices.errors import MmioError
from xenpci.devices.irq import Interrupt, RaiseIrq

ENTRY_SIZE = 16
PCI_MSIX_ENTRY_LOWER_ADDR = 0
PCI_MSIX_ENTRY_UPPER_ADDR = 4
PCI_MSIX_ENTRY_DATA = 8
PCI_MSIX_ENTRY_VECTOR_CTRL = 12
PCI_MSIX_ENTRY_CTRL_MASKBIT = 0x1


class MsixBlock:
    """Table, PBA and delivery logic of one function's MSI-X."""

    def __init__(self, nvec: int, raise_irq: RaiseIrq | None = None) -> None:
        if not 1 <= nvec <= 2048:
            raise ValueError(f"MSI-X table size must be 1..2048, got {nvec}")
        self.nvec = nvec
        self.raise_irq = raise_irq
        self.enabled = False
        self.function_masked = False
        self._table = bytearray(ENTRY_SIZE * nvec)
        self._pending = [False] * nvec
        self.delivered = 0
        self.reset()

    @property
    def table_size(self) -> int:
        return ENTRY_SIZE * self.nvec

    @property
    def pba_size(self) -> int:
        return 8 * ((self.nvec + 63) // 64)

    def reset(self) -> None:
        # Spec 7.7.2: after reset every Mask bit is set; address/data are undefined (zero here).
        self._table[:] = bytes(len(self._table))
        for v in range(self.nvec):
            self._set_ctrl(v, PCI_MSIX_ENTRY_CTRL_MASKBIT)
        self._pending = [False] * self.nvec
        self.enabled = False
        self.function_masked = False

    # -- entry fields ---------------------------------------------------------
    def _word(self, vector: int, field: int) -> int:
        off = vector * ENTRY_SIZE + field
        return int.from_bytes(self._table[off : off + 4], "little")

    def _set_ctrl(self, vector: int, value: int) -> None:
        off = vector * ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL
        self._table[off : off + 4] = value.to_bytes(4, "little")

    def masked(self, vector: int) -> bool:
        return bool(self._word(vector, PCI_MSIX_ENTRY_VECTOR_CTRL) & PCI_MSIX_ENTRY_CTRL_MASKBIT)

    def pending(self, vector: int) -> bool:
        return self._pending[vector]

    def message(self, vector: int) -> Interrupt:
        addr = self._word(vector, PCI_MSIX_ENTRY_LOWER_ADDR)
        addr |= self._word(vector, PCI_MSIX_ENTRY_UPPER_ADDR) << 32
        return Interrupt("msix", vector, addr, self._word(vector, PCI_MSIX_ENTRY_DATA))

    # -- delivery -------------------------------------------------------------
    def notify(self, vector: int) -> bool:
        """The device wants to signal ``vector``; True if a message went out.

        With MSI-X disabled nothing is sent or latched (the device may use INTx).
        """
        if not 0 <= vector < self.nvec:
            raise ValueError(f"MSI-X vector {vector} out of range 0..{self.nvec - 1}")
        if not self.enabled:
            return False
        if self.function_masked or self.masked(vector):
            self._pending[vector] = True
            return False
        self._send(vector)
        return True

    def _send(self, vector: int) -> None:
        self.delivered += 1
        if self.raise_irq is not None:
            self.raise_irq(self.message(vector))

    def _flush(self, vector: int) -> None:
        if (
            self.enabled
            and self._pending[vector]
            and not self.function_masked
            and not self.masked(vector)
        ):
            self._pending[vector] = False
            self._send(vector)

    def set_control(self, enabled: bool, function_masked: bool) -> None:
        """Apply the Message Control Enable and Function Mask bits."""
        self.enabled = enabled
        self.function_masked = function_masked
        for v in range(self.nvec):
            self._flush(v)

    # -- BAR accesses ---------------------------------------------------------
    def _check(self, what: str, offset: int, size: int, limit: int) -> None:
        if size not in (4, 8) or offset % size:
            raise MmioError(what, offset, size, "MSI-X needs aligned DWORD or QWORD accesses")
        if offset < 0 or offset + size > limit:
            raise MmioError(what, offset, size, f"outside the {limit:#x}-byte structure")

    def read_table(self, offset: int, size: int) -> int:
        self._check("msix-table", offset, size, self.table_size)
        return int.from_bytes(self._table[offset : offset + size], "little")

    def write_table(self, offset: int, size: int, value: int) -> None:
        self._check("msix-table", offset, size, self.table_size)
        self._table[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(
            size, "little"
        )
        first = offset // ENTRY_SIZE
        last = (offset + size - 1) // ENTRY_SIZE
        for v in range(first, last + 1):
            # Only the low bit of Vector Control is defined; the rest is reserved.
            ctrl = self._word(v, PCI_MSIX_ENTRY_VECTOR_CTRL) & PCI_MSIX_ENTRY_CTRL_MASKBIT
            self._set_ctrl(v, ctrl)
            self._flush(v)

    def read_pba(self, offset: int, size: int) -> int:
        self._check("msix-pba", offset, size, self.pba_size)
        value = 0
        for bit in range(8 * size):
            v = 8 * offset + bit
            if v < self.nvec and self._pending[v]:
                value |= 1 << bit
        return value

    def write_pba(self, offset: int, size: int, value: int) -> None:
        self._check("msix-pba", offset, size, self.pba_size)
        # Read-only structure: the write is dropped.
