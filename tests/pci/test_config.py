"""ConfigSpace register semantics (PCI 3.0 §6.1-6.2): RO, RW, RW1C, bounds, snapshots."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpci.pci import regs
from xenpci.pci.config import COMMAND_WMASK, ConfigSpace, apply_standard_masks
from xenpci.pci.errors import ConfigError

from .conftest import DUMPS_DIR


def _header(vendor: int = 0x8086, device: int = 0x10D3, htype: int = 0) -> ConfigSpace:
    cs = ConfigSpace(bytes(256))
    cs.poke(regs.PCI_VENDOR_ID, 2, vendor)
    cs.poke(regs.PCI_DEVICE_ID, 2, device)
    cs.poke(regs.PCI_HEADER_TYPE, 1, htype)
    return cs


def test_sizes_and_known_bytes() -> None:
    assert ConfigSpace(bytes(256)).size == 256
    assert ConfigSpace(bytes(257)).size == 4096
    cs = ConfigSpace(b"\x86\x80" + bytes(62), 4096)
    assert (cs.size, cs.known_size, cs.is_express) == (4096, 64, True)
    # Unknown bytes read as lspci shows dump gaps, and are not "known".
    assert cs.read(0x40, 4) == 0xFFFFFFFF
    assert cs.known() == b"\x86\x80" + bytes(62)
    with pytest.raises(ConfigError, match="256 or 4096"):
        ConfigSpace(b"", 512)
    with pytest.raises(ConfigError, match="exceed"):
        ConfigSpace(bytes(300), 256)


def test_little_endian_reads() -> None:
    cs = ConfigSpace(bytes.fromhex("86 80 d3 10") + bytes(252))
    assert cs.read(0, 2) == 0x8086
    assert cs.read(2, 2) == 0x10D3
    assert cs.read(0, 4) == 0x10D38086
    assert cs.read(1, 1) == 0x80
    assert (cs.vendor_id, cs.device_id) == (0x8086, 0x10D3)


@pytest.mark.parametrize(
    ("offset", "size", "fragment"),
    [(0, 3, "size must be"), (-1, 1, "outside"), (255, 2, "outside"), (256, 1, "outside")],
)
def test_bad_accesses(offset: int, size: int, fragment: str) -> None:
    cs = ConfigSpace(bytes(256))
    for op in (lambda: cs.read(offset, size), lambda: cs.write(offset, size, 0)):
        with pytest.raises(ConfigError) as exc:
            op()
        assert fragment in exc.value.reason
        assert (exc.value.offset, exc.value.size) == (offset, size)


def test_value_must_fit() -> None:
    cs = ConfigSpace(bytes(256))
    with pytest.raises(ConfigError, match="does not fit"):
        cs.write(0, 1, 0x100)
    with pytest.raises(ConfigError, match="does not fit"):
        cs.poke(0, 2, -1)


def test_fresh_space_is_read_only() -> None:
    cs = _header()
    before = cs.raw()
    for off in range(0, 256, 4):
        cs.write(off, 4, 0xFFFFFFFF)
    assert cs.raw() == before


def test_standard_header_semantics() -> None:
    cs = _header()
    cs.poke(regs.PCI_STATUS, 2, regs.PCI_STATUS_CAP_LIST | regs.PCI_STATUS_REC_MASTER_ABORT)
    apply_standard_masks(cs)
    # Vendor/device are read-only.
    cs.write(regs.PCI_VENDOR_ID, 4, 0)
    assert cs.read(regs.PCI_VENDOR_ID, 4) == 0x10D38086
    # COMMAND: writable bits take the value, reserved bits stay zero.
    cs.write(regs.PCI_COMMAND, 2, 0xFFFF)
    assert cs.read(regs.PCI_COMMAND, 2) == COMMAND_WMASK
    assert cs.read(regs.PCI_COMMAND, 2) & regs.PCI_COMMAND_INTX_DISABLE
    cs.write(regs.PCI_COMMAND, 2, 0)
    assert cs.read(regs.PCI_COMMAND, 2) == 0
    # STATUS: error bits are write-1-to-clear, CAP_LIST is read-only.
    cs.write(regs.PCI_STATUS, 2, 0)
    assert cs.read(regs.PCI_STATUS, 2) & regs.PCI_STATUS_REC_MASTER_ABORT
    cs.write(regs.PCI_STATUS, 2, 0xFFFF)
    assert cs.read(regs.PCI_STATUS, 2) == regs.PCI_STATUS_CAP_LIST
    # A 4-byte write at COMMAND reaches STATUS too (a dword cycle).
    cs.poke(regs.PCI_STATUS, 2, regs.PCI_STATUS_DETECTED_PARITY | regs.PCI_STATUS_CAP_LIST)
    cs.write(regs.PCI_COMMAND, 4, (regs.PCI_STATUS_DETECTED_PARITY << 16) | 0x6)
    assert cs.read(regs.PCI_COMMAND, 4) == (regs.PCI_STATUS_CAP_LIST << 16) | 0x6
    # Cache line, latency, interrupt line RW; interrupt pin RO.
    for off in (regs.PCI_CACHE_LINE_SIZE, regs.PCI_LATENCY_TIMER, regs.PCI_INTERRUPT_LINE):
        cs.write(off, 1, 0x5A)
        assert cs.read(off, 1) == 0x5A
    cs.write(regs.PCI_INTERRUPT_PIN, 1, 3)
    assert cs.read(regs.PCI_INTERRUPT_PIN, 1) == 0


def test_bridge_header_semantics() -> None:
    cs = _header(htype=regs.PCI_HEADER_TYPE_BRIDGE | regs.PCI_HEADER_TYPE_MFD)
    assert cs.header_type == 1 and cs.multifunction
    apply_standard_masks(cs)
    cs.write(regs.PCI_PRIMARY_BUS, 4, 0x40_05_01_00)
    assert cs.read(regs.PCI_PRIMARY_BUS, 4) == 0x40_05_01_00
    cs.write(regs.PCI_MEMORY_BASE, 2, 0xFFFF)
    assert cs.read(regs.PCI_MEMORY_BASE, 2) == 0xFFF0  # low nibble is RO
    cs.poke(regs.PCI_SEC_STATUS, 2, regs.PCI_STATUS_SIG_SYSTEM_ERROR)
    cs.write(regs.PCI_SEC_STATUS, 2, regs.PCI_STATUS_SIG_SYSTEM_ERROR)
    assert cs.read(regs.PCI_SEC_STATUS, 2) == 0
    # 0x30 is IO_BASE_UPPER16 on a bridge, not a ROM BAR: all 16 bits writable.
    cs.write(regs.PCI_IO_BASE_UPPER16, 2, 0xFFFF)
    assert cs.read(regs.PCI_IO_BASE_UPPER16, 2) == 0xFFFF


def test_masks_cannot_overlap() -> None:
    cs = ConfigSpace(bytes(256))
    cs.set_wmask(4, 2, 0x00FF)
    with pytest.raises(ConfigError, match="both"):
        cs.set_w1cmask(4, 2, 0x0101)
    cs.set_w1cmask(6, 2, 0xF000)
    with pytest.raises(ConfigError, match="both"):
        cs.set_wmask(6, 2, 0x1000)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(min_size=8, max_size=8),
    wmask=st.integers(0, 0xFFFFFFFF),
    w1c=st.integers(0, 0xFFFFFFFF),
    value=st.integers(0, 0xFFFFFFFF),
    size=st.sampled_from([1, 2, 4]),
    offset=st.integers(0, 4),
)
def test_write_semantics_per_bit(
    data: bytes, wmask: int, w1c: int, value: int, size: int, offset: int
) -> None:
    """Each bit independently follows RO / RW / RW1C (PCI 3.0 §6.2)."""
    w1c &= ~wmask
    cs = ConfigSpace(data + bytes(248))
    cs.set_wmask(0, 4, wmask)
    cs.set_w1cmask(0, 4, w1c)
    cs.set_wmask(4, 4, wmask)
    cs.set_w1cmask(4, 4, w1c)
    value &= (1 << (8 * size)) - 1
    before = int.from_bytes(cs.raw()[:8], "little")
    cs.write(offset, size, value)
    after = int.from_bytes(cs.raw()[:8], "little")
    wm64 = wmask | (wmask << 32)
    w1c64 = w1c | (w1c << 32)
    v64 = value << (8 * offset)
    touched = ((1 << (8 * size)) - 1) << (8 * offset)
    for bit in range(64):
        m = 1 << bit
        old, new, v = before & m, after & m, v64 & m
        if not touched & m or not (wm64 | w1c64) & m:
            assert new == old  # untouched bytes and read-only bits never change
        elif wm64 & m:
            assert new == v  # read-write bits take the written value
        else:
            assert new == (0 if v else old)  # RW1C: a 1 clears, a 0 keeps
    assert cs.read(offset, size) == (after >> (8 * offset)) & ((1 << (8 * size)) - 1)


def test_poke_ignores_masks_and_extends_known() -> None:
    cs = ConfigSpace(bytes(64), 256)
    cs.poke(0x40, 2, 0x1234)
    assert cs.read(0x40, 2) == 0x1234
    assert cs.known_size == 0x42


def test_snapshot_restore_and_copy_are_independent() -> None:
    cs = _header()
    apply_standard_masks(cs)
    snap = cs.snapshot()
    clone = cs.copy()
    cs.write(regs.PCI_COMMAND, 2, 0x6)
    cs.set_wmask(0x40, 1, 0xFF)
    assert clone.read(regs.PCI_COMMAND, 2) == 0
    assert clone.wmask(0x40, 1) == 0
    cs.restore(snap)
    assert cs.read(regs.PCI_COMMAND, 2) == 0 and cs.wmask(0x40, 1) == 0
    assert cs.raw() == clone.raw()
    big = ConfigSpace(bytes(4096))
    with pytest.raises(ConfigError, match="snapshot size"):
        big.restore(snap)


def test_real_dump_header_fields() -> None:
    from xenpci.pci.dump import load_dump

    fn = load_dump(DUMPS_DIR / "cap-pcie-2")[0]
    cs = fn.config
    # lspci's own line: "01:00.0 Ethernet controller: Intel ... 82576 (rev 01)"
    assert (cs.vendor_id, cs.device_id, cs.class_code, cs.revision) == (
        0x8086,
        0x10C9,
        0x020000,
        0x01,
    )
    assert cs.multifunction  # 82576 is dual-port: functions 0 and 1
