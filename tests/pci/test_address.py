"""SBDF and xl BDF parsing against the formats Linux and xl.cfg(5) define."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpci.pci.address import PCI_DEVFN, PCI_FUNC, PCI_SLOT, SBDF, parse_xl_bdf
from xenpci.pci.errors import AddressError, PciError

sbdfs = st.builds(
    SBDF,
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFF),
    st.integers(0, 0x1F),
    st.integers(0, 7),
)


def test_parse_and_print_linux_names() -> None:
    a = SBDF.parse("0000:03:00.0")
    assert (a.segment, a.bus, a.device, a.function) == (0, 3, 0, 0)
    assert str(a) == "0000:03:00.0"
    b = SBDF.parse("03:1f.7")
    assert b == SBDF(0, 3, 0x1F, 7)
    assert str(b) == "0000:03:1f.7" and b.bdf == "03:1f.7"
    assert SBDF.parse("ABCD:EF:1A.3") == SBDF(0xABCD, 0xEF, 0x1A, 3)


def test_devfn_matches_linux_macros() -> None:
    # include/uapi/linux/pci.h: PCI_DEVFN(slot, func) ((((slot) & 0x1f) << 3) | ((func) & 0x07))
    a = SBDF.parse("0001:02:1f.7")
    assert a.devfn == 0xFF
    assert a.sbdf_int == 0x0001_02FF
    assert SBDF.parse("00:01.2").devfn == 0x0A
    assert (PCI_SLOT(0x0A), PCI_FUNC(0x0A)) == (1, 2)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sbdfs)
def test_print_parse_roundtrip(a: SBDF) -> None:
    assert SBDF.parse(str(a)) == a
    assert SBDF.from_int(a.sbdf_int) == a
    assert SBDF.from_devfn(a.segment, a.bus, a.devfn) == a
    assert PCI_DEVFN(PCI_SLOT(a.devfn), PCI_FUNC(a.devfn)) == a.devfn


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("03:00", "missing '.F'"),
        ("03:00.8", "function 8 > 7"),
        ("03:20.0", "device 0x20 > 0x1f"),
        ("3:00.0", "bus '3' is not 2 hex digits"),
        ("000:03:00.0", "domain '000' is not 4 hex digits"),
        ("0000:03:0g.0", "device '0g'"),
        ("0000:03:00.a", "function a > 7"),
        ("0000:03:00.00", "function '00'"),
        ("1:2:3:4.0", "expected [DDDD:]BB:DD.F"),
        (" 03:00.0", "bus ' 03'"),
    ],
)
def test_parse_errors_are_precise(text: str, fragment: str) -> None:
    with pytest.raises(AddressError) as exc:
        SBDF.parse(text)
    assert exc.value.text == text
    assert fragment in exc.value.reason
    assert isinstance(exc.value, PciError)


@pytest.mark.parametrize(
    ("field", "value"), [("segment", 0x10000), ("bus", 256), ("device", 32), ("function", -1)]
)
def test_construction_validates(field: str, value: int) -> None:
    kw = {"segment": 0, "bus": 0, "device": 0, "function": 0, field: value}
    with pytest.raises(AddressError, match=field):
        SBDF(**kw)


def test_frozen_and_ordered() -> None:
    a = SBDF.parse("00:01.0")
    with pytest.raises(AttributeError):
        a.bus = 3  # type: ignore[misc]
    assert sorted([SBDF.parse("01:00.0"), a]) == [a, SBDF.parse("01:00.0")]


def test_xl_bdf_examples_from_xl_cfg_man_page() -> None:
    # xl.cfg(5): pci=[ "BDF_SPEC_STRING" ] with "[DDDD:]BB:DD.F[@VSLOT]".
    assert parse_xl_bdf("08:00.1") == (SBDF(0, 8, 0, 1), None)
    assert parse_xl_bdf("0000:08:00.1@a") == (SBDF(0, 8, 0, 1), 0xA)
    assert parse_xl_bdf("01:02.3@1f") == (SBDF(0, 1, 2, 3), 0x1F)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("08:00.1@", "virtual slot ''"),
        ("08:00.1@20", "virtual slot 0x20 > 0x1f"),
        ("08:00.1@xyz", "virtual slot 'xyz'"),
        ("08:00@3", "missing '.F'"),
    ],
)
def test_xl_bdf_errors(text: str, fragment: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_xl_bdf(text)
    assert fragment in str(exc.value)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=20))
def test_parse_never_crashes(text: str) -> None:
    try:
        a = SBDF.parse(text)
    except AddressError:
        return
    assert str(a).endswith(text[-4:].lower())
