"""Register file semantics: masks, W1C, byte lanes, hooks, hostile accesses."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpci.devices.errors import MmioError
from xenpci.devices.regfile import Reg, RegisterFile


def make() -> RegisterFile:
    return RegisterFile(
        "t",
        0x20,
        [
            Reg("CTRL", 0x0, reset=0x11, wmask=0x0000_FF0F),
            Reg("ISR", 0x4, wmask=0, w1c=0xFF),
            Reg("WIDE", 0x8, 8),
            Reg("RO", 0x10, reset=0xDEADBEEF, wmask=0),
        ],
    )


def test_reset_values_and_readonly() -> None:
    rf = make()
    assert rf.read(0x0, 4) == 0x11
    rf.write(0x10, 4, 0)
    assert rf.read(0x10, 4) == 0xDEADBEEF


def test_wmask_keeps_readonly_bits() -> None:
    rf = make()
    rf.write(0x0, 4, 0xFFFF_FFFF)
    assert rf.read(0x0, 4) == 0x0000_FF0F | 0x11 & ~0xFF0F


def test_w1c_clears_only_written_ones() -> None:
    rf = make()
    rf["ISR"] = 0b1011
    rf.write(0x4, 4, 0b0010)
    assert rf.read(0x4, 4) == 0b1001


def test_unmapped_bytes_read_zero_and_ignore_writes() -> None:
    rf = make()
    rf.write(0x18, 4, 0x1234)
    assert rf.read(0x18, 4) == 0


@pytest.mark.parametrize(("offset", "size"), [(0x1, 2), (0x2, 4), (0x20, 1), (-4, 4), (0, 3)])
def test_bad_accesses_raise_with_data(offset: int, size: int) -> None:
    with pytest.raises(MmioError) as err:
        make().read(offset, size)
    assert err.value.offset == offset and err.value.size == size


def test_hook_runs_even_when_value_unchanged() -> None:
    rf = make()
    calls: list[tuple[int, int]] = []
    rf.on_write("WIDE", lambda old, new: calls.append((old, new)))
    rf.write(0x8, 4, 5)
    rf.write(0x8, 4, 5)
    assert calls == [(0, 5), (5, 5)]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2, 4, 8]), st.integers(0, 3), st.integers(0, 2**64 - 1)),
        max_size=20,
    )
)
def test_byte_lanes_match_a_byte_array(ops: list[tuple[int, int, int]]) -> None:
    """A fully writable 8-byte register behaves like 8 bytes of memory."""
    rf = RegisterFile("m", 8, [Reg("Q", 0, 8)])
    mem = bytearray(8)
    for size, slot, value in ops:
        off = (slot * size) % 8
        value &= (1 << (8 * size)) - 1
        rf.write(off, size, value)
        mem[off : off + size] = value.to_bytes(size, "little")
        assert rf.read(0, 8) == int.from_bytes(mem, "little")
        assert rf.read(off, size) == value


def test_overlapping_registers_rejected() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        RegisterFile("x", 16, [Reg("A", 0, 8), Reg("B", 4, 4)])
