"""Descriptor rings in guest memory, reached only through a ``DmaPort``.

Models the head/tail ownership rule shared by e1000-style NICs: the device
owns descriptors from head up to (not including) tail, software advances tail
(the doorbell) and the device advances head. Head == tail means the device
owns nothing. Descriptors use the 16-byte e1000 legacy layout (Intel 8254x
SDM 3.2.3 receive, 3.3.3 transmit): buffer address, length, then status bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from xenpci.devices.dma import DmaPort

DESC_SIZE = 16
# Transmit descriptor command bits (8254x SDM 3.3.3.1) and status (both rings).
TXD_CMD_EOP = 0x01
TXD_CMD_RS = 0x08
DESC_STA_DD = 0x01
RXD_STA_EOP = 0x02

# addr, length, cso/csum-lo, cmd/csum-hi, status, css/errors, special
_DESC = struct.Struct("<QHBBBBH")


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One 16-byte legacy descriptor (TX: cmd in ``cmd``; RX: checksum unused)."""

    addr: int
    length: int
    cmd: int = 0
    status: int = 0

    def pack(self) -> bytes:
        return _DESC.pack(self.addr, self.length, 0, self.cmd, self.status, 0, 0)

    @classmethod
    def unpack(cls, raw: bytes) -> Descriptor:
        addr, length, _cso, cmd, status, _css, _special = _DESC.unpack(raw)
        return cls(addr, length, cmd, status)


class DescriptorRing:
    """Base/length/head/tail of one ring; the registers stay the source of truth."""

    def __init__(self, base: int, length_bytes: int) -> None:
        self.base = base
        self.count = length_bytes // DESC_SIZE

    def owned(self, head: int, tail: int) -> int:
        """How many descriptors the device owns."""
        if self.count == 0:
            return 0
        return (tail - head) % self.count

    def addr(self, index: int) -> int:
        return self.base + DESC_SIZE * index

    def fetch(self, dma: DmaPort, index: int) -> Descriptor:
        return Descriptor.unpack(dma.read(self.addr(index), DESC_SIZE))

    def store(self, dma: DmaPort, index: int, desc: Descriptor) -> None:
        dma.write(self.addr(index), desc.pack())
