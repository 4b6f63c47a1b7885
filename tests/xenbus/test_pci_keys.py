"""The PCI device's XenStore key formats, against the C library's own printf/scanf.

libxl, pciback and pcifront write and read these values with ``snprintf`` and
``sscanf``; the oracle here is the C library itself (through ctypes), given
the same format strings the real sources use.
"""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenpci.xenbus import pci_keys

pytestmark = pytest.mark.interop


#: The C library the Python process itself runs on (its symbols are the process's own).
LIBC = ctypes.CDLL(None)


def c_format(fmt: str, *args: int) -> str:
    buf = ctypes.create_string_buffer(64)
    LIBC.snprintf(buf, 64, fmt.encode(), *(ctypes.c_uint(a) for a in args))
    return buf.value.decode()


def c_scan(text: str, fmt: str, n: int) -> tuple[int, ...] | None:
    """``sscanf`` with ``n`` ``%x`` conversions; None unless all ``n`` matched."""
    vals = [ctypes.c_uint() for _ in range(n)]
    got = LIBC.sscanf(text.encode(), fmt.encode(), *(ctypes.byref(v) for v in vals))
    return tuple(v.value for v in vals) if got == n else None


domains = st.integers(0, 0xFFFF)
buses = st.integers(0, 0xFF)
slots = st.integers(0, 0x1F)
funcs = st.integers(0, 7)


@given(domains, buses, slots, funcs)
def test_dev_and_vdev_values_are_printed_as_libxl_and_pciback_print_them(
    d: int, b: int, s: int, f: int
) -> None:
    assert pci_keys.format_dev(d, b, s, f) == c_format("%04x:%02x:%02x.%01x", d, b, s, f)
    assert pci_keys.format_vdev(d, b, s, f) == c_format("%04x:%02x:%02x.%02x", d, b, s, f)


@given(domains, buses)
def test_root_values_are_printed_as_pciback_prints_them(d: int, b: int) -> None:
    assert pci_keys.format_root(d, b) == c_format("%04x:%02x", d, b)


@given(domains, buses, slots, funcs)
def test_what_one_side_prints_the_other_scans_back(d: int, b: int, s: int, f: int) -> None:
    for text in (pci_keys.format_dev(d, b, s, f), pci_keys.format_vdev(d, b, s, f)):
        assert pci_keys.scan_bdf(text) == (d, b, s, f) == c_scan(text, "%x:%x:%x.%x", 4)
    root = pci_keys.format_root(d, b)
    assert pci_keys.scan_root(root) == (d, b) == c_scan(root, "%x:%x", 2)


@pytest.mark.parametrize("text", ["", "0000:00:01", "0000:00.1", "zz:00:01.0", "0000:00:01.", ":"])
def test_malformed_values_are_refused_where_sscanf_matches_short(text: str) -> None:
    assert c_scan(text, "%x:%x:%x.%x", 4) is None
    with pytest.raises(ValueError):
        pci_keys.scan_bdf(text)


@pytest.mark.parametrize("text", ["", "0000", "xx:00", "0000:"])
def test_malformed_roots_are_refused_where_sscanf_matches_short(text: str) -> None:
    assert c_scan(text, "%x:%x", 2) is None
    with pytest.raises(ValueError):
        pci_keys.scan_root(text)


def test_key_names_and_paths() -> None:
    assert [pci_keys.dev_key(3), pci_keys.vdev_key(3), pci_keys.state_key(3)] == [
        "dev-3",
        "vdev-3",
        "state-3",
    ]
    assert pci_keys.root_key(0) == "root-0"
    assert pci_keys.backend_path(7) == "/local/domain/0/backend/pci/7/0"
    assert pci_keys.frontend_path(7) == "/local/domain/7/device/pci/0"
