"""The engine's non-obvious behaviours (fact sheet §1.2 and checklist §5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pciback.conftest import NIC_BAR0, FakePlatform, make_nic, make_vpd_function, seize
from xenpci.pci import regs
from xenpci.pci.pcibios import PCIBIOS_SET_FAILED
from xenpci.pciback.conf_space import ConfigField, add_field, config_read, config_write
from xenpci.pciback.conf_space.engine import (
    DevData,
    merge_value,
    xen_pcibios_err_to_errno,
)
from xenpci.pciback.errors import EINVAL, SysfsError
from xenpci.pciback.pci_stub import PciStub


def test_dropped_write_returns_success_and_warns_once(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    dd = psdev.dev_data
    before = hw.config_read(0x48 + regs.PCI_EXP_DEVCTL, 2)
    assert config_write(dd, 0x48 + regs.PCI_EXP_DEVCTL, 2, 0x0F) == 0
    assert config_write(dd, 0x2C, 2, 0x1111) == 0
    assert hw.config_read(0x48 + regs.PCI_EXP_DEVCTL, 2) == before
    assert len(dd.warnings) == 1 and "offset 0x50, size 2" in dd.warnings[0]


def test_permissive_writes_uncovered_bytes(stub: PciStub, params) -> None:  # type: ignore[no-untyped-def]
    hw = make_nic()
    psdev = seize(stub, hw)
    devctl = 0x48 + regs.PCI_EXP_DEVCTL
    params.permissive = True  # the global module parameter
    config_write(psdev.dev_data, devctl, 2, regs.PCI_EXP_DEVCTL_URRE)
    assert hw.config_read(devctl, 2) & regs.PCI_EXP_DEVCTL_URRE


def test_uncovered_reads_come_from_hardware(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    for off in (0x08, 0x2C, 0x34, 0x48, 0x100):
        assert config_read(psdev.dev_data, off, 4) == (0, hw.config_read(off, 4))


def test_offsets_beyond_config_space(stub: PciStub) -> None:
    """No range check in pciback: the host accessor's -EINVAL reaches the guest raw,
    with the all-ones error response; a conventional function's extended space
    reads all-ones (master abort) successfully."""
    nic = seize(stub, make_nic())
    assert config_read(nic.dev_data, 0x1000, 4) == (EINVAL, 0xFFFFFFFF)
    assert config_read(nic.dev_data, -4, 4) == (EINVAL, 0xFFFFFFFF)  # -4 % 4 == 0 in C
    nic.dev_data.permissive = True
    assert config_write(nic.dev_data, 0x7FFFFFFC, 4, 1) == EINVAL
    vpd = seize(stub, make_vpd_function())
    assert config_read(vpd.dev_data, 0x100, 4) == (0, 0xFFFFFFFF)


@pytest.mark.parametrize(
    ("val", "new", "mask", "off", "want"),
    [
        (0xAABBCCDD, 0x11, 0xFF, 0, 0xAABBCC11),
        (0xAABBCCDD, 0x11, 0xFF, 3, 0x11BBCCDD),
        (0xAABBCCDD, 0x1122, 0xFFFF, 3, 0x22BBCCDD),  # the top byte falls off the u32
        (0xAABBCCDD, 0x11223344, 0xFFFFFFFF, -2, 0xAABB1122),
    ],
)
def test_merge_value(val: int, new: int, mask: int, off: int, want: int) -> None:
    assert merge_value(val, new, mask, off) == want


def test_pcibios_mapping() -> None:
    assert xen_pcibios_err_to_errno(PCIBIOS_SET_FAILED) == -3
    assert xen_pcibios_err_to_errno(0x86) == -1
    assert xen_pcibios_err_to_errno(0x87) == -2
    assert xen_pcibios_err_to_errno(0x81) == -4
    assert xen_pcibios_err_to_errno(-22) == -22
    assert xen_pcibios_err_to_errno(0x89) == 0x89  # not mapped by Linux either


def test_last_field_error_wins(stub: PciStub) -> None:
    """A 4-byte write over two fields: the first fails, the second succeeds -> 0."""
    psdev = seize(stub, make_vpd_function())
    dd = psdev.dev_data
    # VPD address at 0x42 (F flag refused) then a later field: a quirk at 0x40 is a dup
    # of the cap header, so put an extra field at 0x43 that always succeeds.
    # Alone, the VPD write with F set is access denied.
    assert config_write(dd, 0x42, 2, 0x8000) == -3
    ok = ConfigField("test.ok", 0x43, 1, read=lambda d, o, x: (0, 0), write=lambda d, o, v, x: 0)
    assert add_field(dd, ok)
    assert config_write(dd, 0x40, 4, 0x8000_0000) == 0
    assert config_write(dd, 0x42, 2, 0x8000) == 0
    assert not psdev.hw.config_read(0x42, 2) & 0x8000  # still refused, only the code differs


def test_quirk_overlap_and_dup(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    dd = psdev.dev_data
    # Same start as the BAR0 field: silently skipped.
    assert stub.add_quirk("0000:03:00.0-10:4:ffffffff") is False
    # Overlapping BAR0's top half from another start: accepted, and being later it wins.
    assert stub.add_quirk("03:00.0-12:2:ffff") is True
    assert config_read(dd, 0x10, 4) == (0, NIC_BAR0)  # hardware equals the virtual value
    hw.config.poke(0x10, 4, 0xF0000000)
    assert config_read(dd, 0x10, 4) == (0, 0xF0000000)  # upper half from the quirk (hw)
    # The quirk makes 0x12 writable without permissive.
    config_write(dd, 0x12, 2, 0xFE00)
    assert hw.config_read(0x10, 4) == 0xFE000000
    assert "\t\t00000012:2:0000ffff\n" in stub.quirks_text()


@pytest.mark.parametrize(
    "text", ["03:00.0-1000:4:0", "03:00.0-10:3:0", "03:00.0-10:1:1ff", "nonsense", "03:00.8-10:4:0"]
)
def test_bad_quirks(stub: PciStub, text: str) -> None:
    seize(stub, make_nic())
    with pytest.raises(SysfsError) as e:
        stub.add_quirk(text)
    assert e.value.code == EINVAL


def test_quirk_needs_seized_device(stub: PciStub) -> None:
    with pytest.raises(SysfsError) as e:
        stub.add_quirk("09:00.0-40:4:0")
    assert e.value.code == -19


def test_field_table_rows_are_valid() -> None:
    with pytest.raises(Exception, match="size"):
        ConfigField("x.y", 0, 3)
    with pytest.raises(Exception, match="offset"):
        ConfigField("x.y", 0x1000, 4)


def _linear_read(dd: DevData, offset: int, size: int) -> tuple[int, int]:
    """Linux's ``xen_pcibk_config_read`` loop as written: every entry, in list order."""
    err, value = dd.hw_read(offset, size)
    for e in dd.config_fields:
        if offset + size > e.start and e.end > offset:
            if e.field.read is None:
                tmp = 0
            else:
                err, tmp = e.field.read(dd, e.start, e.data)
                tmp &= (1 << (8 * e.field.size)) - 1
            if err:
                break
            value = merge_value(value, tmp, (1 << (8 * e.field.size)) - 1, e.start - offset)
    return xen_pcibios_err_to_errno(err), value


_quirk_fields = st.lists(
    st.tuples(st.sampled_from([1, 2, 4]), st.integers(0, 0xFF), st.integers(0, 0xFFFFFFFF)),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(
    quirks=_quirk_fields,
    reads=st.lists(st.tuples(st.integers(-8, 0x110), st.sampled_from([1, 2, 4]))),
)
def test_indexed_lookup_matches_linear_scan(
    quirks: list[tuple[int, int, int]], reads: list[tuple[int, int]]
) -> None:
    """The offset index is only a cache: with arbitrary extra fields (overlapping
    each other and the header, added between reads), every read equals Linux's
    full linear scan, and fields added later are seen at once."""
    dd = PciStub(platform=FakePlatform()).seize(make_nic()).dev_data
    for i, (size, off, val) in enumerate(quirks):
        off -= off % size
        fld = ConfigField(f"test.q{i}", off, size, read=lambda _d, _o, _data, v=val: (0, v))
        add_field(dd, fld)
        for offset, rsize in reads[i : i + 3]:
            offset -= offset % rsize
            assert config_read(dd, offset, rsize) == _linear_read(dd, offset, rsize)
    for offset, rsize in reads:
        offset -= offset % rsize
        assert config_read(dd, offset, rsize) == _linear_read(dd, offset, rsize)
