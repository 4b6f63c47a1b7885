"""Capability walkers against lspci's decoding, and against hostile lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpci.pci import regs
from xenpci.pci.capabilities import (
    CAPABILITY_NAMES,
    EXT_CAPABILITY_NAMES,
    capability_problems,
    find_capability,
    find_ext_capability,
    walk_capabilities,
    walk_extended_capabilities,
)
from xenpci.pci.config import ConfigSpace
from xenpci.pci.dump import load_dump
from xenpci.pci.errors import CapabilityError

from .conftest import DUMP_FILES, lspci_blocks

_CAP_LINE = re.compile(r"^(?:\t| {8})Capabilities: \[(?P<off>[0-9a-f]+)(?: v(?P<ver>\d+))?\] ")


@pytest.mark.interop
@pytest.mark.parametrize("path", DUMP_FILES, ids=lambda p: p.name)
def test_walk_matches_lspci(path: Path) -> None:
    """Offsets (and ext versions) equal the ``Capabilities: [..]`` lines of ``lspci -F -vvv``."""
    blocks = lspci_blocks(path, "-vvv")
    functions = load_dump(path)
    assert len(blocks) == len(functions)
    for fn, lines in zip(functions, blocks, strict=True):
        expected = [
            (int(m["off"], 16), int(m["ver"]) if m["ver"] else None)
            for m in map(_CAP_LINE.match, lines)
            if m
        ]
        caps = walk_capabilities(fn.config) + walk_extended_capabilities(fn.config)
        got = [(c.offset, c.version if c.extended else None) for c in caps]
        assert got == expected, fn.sbdf


@pytest.mark.interop
def test_names_match_lspci_for_ext_caps() -> None:
    """Our extended-capability names are the ones lspci prints (where it prints one)."""
    checked = 0
    for path in DUMP_FILES:
        for fn, lines in zip(load_dump(path), lspci_blocks(path, "-vvv"), strict=True):
            by_off = {c.offset: c for c in walk_extended_capabilities(fn.config)}
            for line in lines:
                m = _CAP_LINE.match(line)
                if m and int(m["off"], 16) in by_off:
                    cap = by_off[int(m["off"], 16)]
                    text = line[m.end() :]
                    if text.startswith("Extended Capability ID"):
                        continue  # newer than this lspci (3.9 lacks e.g. Device 3)
                    assert text.startswith(cap.name) or cap.id not in EXT_CAPABILITY_NAMES, (
                        text,
                        cap,
                    )
                    checked += 1
    assert checked > 50


def _space(size: int = 256) -> ConfigSpace:
    cs = ConfigSpace(bytes(size))
    cs.poke(regs.PCI_STATUS, 2, regs.PCI_STATUS_CAP_LIST)
    return cs


def _chain(cs: ConfigSpace, entries: list[tuple[int, int, int]]) -> None:
    """entries: (offset, id, next)."""
    cs.poke(regs.PCI_CAPABILITY_LIST, 1, entries[0][0])
    for off, cap_id, nxt in entries:
        cs.poke(off, 1, cap_id)
        cs.poke(off + 1, 1, nxt)


def test_standard_walk_and_find() -> None:
    cs = _space()
    _chain(cs, [(0x40, regs.PCI_CAP_ID_PM, 0x50), (0x50, regs.PCI_CAP_ID_MSI, 0x70),
                (0x70, regs.PCI_CAP_ID_MSIX, 0)])  # fmt: skip
    caps = walk_capabilities(cs)
    assert [(c.id, c.offset, c.name) for c in caps] == [
        (1, 0x40, "Power Management"),
        (5, 0x50, "MSI"),
        (0x11, 0x70, "MSI-X"),
    ]
    assert find_capability(cs, regs.PCI_CAP_ID_MSIX) == 0x70
    assert find_capability(cs, regs.PCI_CAP_ID_EXP) is None
    assert capability_problems(cs) == []
    # Without STATUS.CAP_LIST the pointer means nothing (PCI 3.0 §6.7).
    cs.poke(regs.PCI_STATUS, 2, 0)
    assert walk_capabilities(cs) == []


def test_low_pointer_bits_are_ignored() -> None:
    cs = _space()
    _chain(cs, [(0x40, regs.PCI_CAP_ID_PM, 0x53)])
    cs.poke(0x50, 1, regs.PCI_CAP_ID_MSI)
    cs.poke(0x51, 1, 0)
    assert [c.offset for c in walk_capabilities(cs)] == [0x40, 0x50]


def test_loop_is_reported_with_offset() -> None:
    cs = _space()
    _chain(cs, [(0x40, 1, 0x50), (0x50, 5, 0x40)])
    assert [c.offset for c in walk_capabilities(cs)] == [0x40, 0x50]
    (problem,) = capability_problems(cs)
    assert problem.offset == 0x51 and "loop back to 0x40" in problem.reason
    with pytest.raises(CapabilityError) as exc:
        walk_capabilities(cs, strict=True)
    assert exc.value.offset == 0x51


def test_self_loop_and_pointer_into_header() -> None:
    cs = _space()
    _chain(cs, [(0x40, 1, 0x40)])
    assert len(walk_capabilities(cs)) == 1
    cs2 = _space()
    _chain(cs2, [(0x40, 1, 0x10)])
    (problem,) = capability_problems(cs2)
    assert "points into the header" in problem.reason and problem.offset == 0x41


def test_truncated_space_stops_at_known_bytes() -> None:
    """A 64-byte (non-root sysfs / lspci -x) read must not pretend to have caps."""
    full = _space()
    _chain(full, [(0x40, 1, 0)])
    cs = ConfigSpace(full.raw()[:64], 256)
    assert walk_capabilities(cs) == []
    (problem,) = capability_problems(cs)
    assert problem.offset == 0x40 and "truncated" in problem.reason


def _express(size: int = 4096) -> ConfigSpace:
    cs = _space(size)
    _chain(cs, [(0x40, regs.PCI_CAP_ID_EXP, 0)])
    return cs


def test_extended_walk() -> None:
    cs = _express()
    cs.poke(0x100, 4, (0x140 << 20) | (1 << 16) | regs.PCI_EXT_CAP_ID_ERR)
    cs.poke(0x140, 4, (2 << 16) | regs.PCI_EXT_CAP_ID_DSN)
    caps = walk_extended_capabilities(cs)
    assert [(c.id, c.offset, c.version, c.name) for c in caps] == [
        (1, 0x100, 1, "Advanced Error Reporting"),
        (3, 0x140, 2, "Device Serial Number"),
    ]
    assert find_ext_capability(cs, regs.PCI_EXT_CAP_ID_DSN) == 0x140
    # Conventional functions have no extended space even in a 4096-byte image.
    conventional = _space(4096)
    conventional.poke(0x100, 4, regs.PCI_EXT_CAP_ID_ERR)
    assert walk_extended_capabilities(conventional) == []


def test_extended_loop_and_bad_next() -> None:
    cs = _express()
    cs.poke(0x100, 4, (0x200 << 20) | 1)
    cs.poke(0x200, 4, (0x100 << 20) | 2)
    assert [c.offset for c in walk_extended_capabilities(cs)] == [0x100, 0x200]
    assert "loop back to 0x100" in capability_problems(cs)[0].reason
    cs.poke(0x200, 4, (0x0F0 << 20) | 2)
    assert "below 0x100" in capability_problems(cs)[0].reason


def test_every_lspci_known_id_has_a_name() -> None:
    assert set(range(1, regs.PCI_CAP_ID_MAX + 1)) <= set(CAPABILITY_NAMES)
    assert set(range(1, regs.PCI_EXT_CAP_ID_MAX + 1)) <= set(EXT_CAPABILITY_NAMES)


def _pointer_rich_spaces() -> st.SearchStrategy[tuple[ConfigSpace, int]]:
    """Spaces full of plausible pointers, so chains, loops and bad links are common."""
    ptr = st.integers(0, 0xFF)
    std = st.dictionaries(st.integers(0x10, 0x3F).map(lambda i: i * 4), st.tuples(
        st.sampled_from([regs.PCI_CAP_ID_EXP, 1, 5, 0x11, 0xFF, 0]), ptr))  # fmt: skip
    ext = st.dictionaries(
        st.integers(0x40, 0x3FF).map(lambda i: i * 4),
        st.tuples(st.integers(0, 0x40), st.integers(0, 0xFFF)),
    )
    known = st.sampled_from([64, 68, 256, 260, 4096])
    return st.builds(_build_space, ptr, std, ext, known)


def _build_space(
    first: int,
    std: dict[int, tuple[int, int]],
    ext: dict[int, tuple[int, int]],
    known: int,
) -> tuple[ConfigSpace, int]:
    cs = ConfigSpace(bytes(4096))
    cs.poke(regs.PCI_STATUS, 2, regs.PCI_STATUS_CAP_LIST)
    cs.poke(regs.PCI_CAPABILITY_LIST, 1, first)
    for off, (cap_id, nxt) in std.items():
        cs.poke(off, 2, cap_id | (nxt << 8))
    for off, (cap_id, nxt) in ext.items():
        cs.poke(off, 4, cap_id | (1 << 16) | (nxt << 20))
    size = 4096 if known > 256 else 256
    return ConfigSpace(cs.raw()[:known], size), known


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_pointer_rich_spaces())
def test_walkers_terminate_on_hostile_spaces(case: tuple[ConfigSpace, int]) -> None:
    """Any list: walks end, offsets are unique, aligned, in range and within known bytes."""
    cs, _ = case
    std = walk_capabilities(cs)
    ext = walk_extended_capabilities(cs)
    for caps, lo in ((std, 0x40), (ext, 0x100)):
        offsets = [c.offset for c in caps]
        assert len(offsets) == len(set(offsets))
        assert all(o % 4 == 0 and lo <= o < cs.known_size for o in offsets)
    assert len(std) <= 48
    problems = capability_problems(cs)  # never raises
    if problems:
        with pytest.raises(CapabilityError):
            walk_capabilities(cs, strict=True)
            walk_extended_capabilities(cs, strict=True)


@given(_pointer_rich_spaces())
def test_find_stops_at_the_first_match_with_the_walks_answer(case: tuple[ConfigSpace, int]) -> None:
    """``find_capability`` stops at the first match (as ``pci_find_capability``); on any
    list, hostile ones included, it answers what the full walk's first match is."""
    cs, _ = case
    std = walk_capabilities(cs)
    for cap_id in {c.id for c in std} | {0x01, 0x05, 0x10, 0x11, 0xFE}:
        first = next((c.offset for c in std if c.id == cap_id), None)
        assert find_capability(cs, cap_id) == first
