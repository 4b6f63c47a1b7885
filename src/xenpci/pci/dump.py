"""lspci hex dumps: reading (as ``lspci -F``) and writing (as ``lspci -xxxx``).

Reading models pciutils ``lib/dump.c`` (``dump_init``/``dump_read``): a line
``[DDDD:]BB:DD.F <anything>`` starts a device, rows ``OO: xx xx ...`` fill
its config bytes (gaps read 0xff; the known length is the highest byte
written), an empty line ends the device, other lines (the ``-v`` text) are
ignored. Writing follows ``lspci.c`` ``show_hex_dump``: ``%02x:`` offsets, 16
bytes per row, a blank line after each device.

Differences, all stricter: a bad byte, an offset past 4096, a row outside any
device, a duplicate device or a domain over 16 bits is a :class:`SourceError`
naming ``FILE:LINE`` (lspci aborts with a bare message or silently ignores).
From the ``-vv`` text we additionally take dom0's resources (``Region N:
... at ADDR ... [size=S]`` and ``Expansion ROM at ...``, with ``[virtual]``,
``[enhanced]`` and ``<unassigned>``), which the hex alone cannot give, the
routed IRQ (``Interrupt: pin A routed to IRQ N``), ``IOMMU group: N`` and
``Kernel driver in use: D``; without that text sizes stay unknown (and say
so in the function's notes; ``--bar-size`` supplies them). A size that
cannot be right for its BAR is a note on that function only. lspci prints
an I/O address masked with ``~3``, so legacy IDE ports (0x3f6 shows as
``03f4 [size=1]``) come from Linux's fixed values, not from the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from xenpci.pci import bar as _bar
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.bar import ROM_INDEX, Resource, legacy_ide_resources, plausible_sizes
from xenpci.pci.config import ConfigSpace, apply_standard_masks
from xenpci.pci.errors import AddressError, ConfigError, PciError, SourceError
from xenpci.pci.function import PciFunction

# lspci prints the domain with %04x, so it can be longer for domains >= 0x10000.
_HEADER_RE = re.compile(
    r"^(?:(?P<dom>[0-9a-fA-F]{4,6}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<dev>[0-9a-fA-F]{2})"
    r"\.(?P<fn>[0-9a-fA-F]) "
)
_ROW_RE = re.compile(r"^(?P<off>[0-9a-fA-F]{2,8}): (?P<rest>.*)$")
_BYTE_RE = re.compile(r"[0-9a-fA-F]{2}")
# A whole well-formed row body at once (fast path); anything else is diagnosed byte by byte.
_ROW_BODY_RE = re.compile(r"(?:[0-9a-fA-F]{2}(?: |$))*")
# Only first-level lines (one tab, or 8 spaces in re-tabbed files) are the
# function's own BARs; deeper "Region" lines are SR-IOV VF BARs. "[virtual]"
# resources are not in config space and are skipped.
_INDENT = r"^(?:\t| {8})"
_SIZE_RE = re.compile(r"\[size=(?P<size>\d+)(?P<unit>[KMGTPE]?)\]")
_ADDR = r"(?P<addr>[0-9a-fA-F]+|<[a-z0-9-]+>)"
_REGION_RE = re.compile(
    _INDENT
    + r"Region (?P<idx>\d+): (?P<pre>\[virtual\] )?(?P<kind>I/O ports|Memory) at "
    + _ADDR
    + r"(?P<rest>.*)$"
)
# lspci before 3.7 printed "[virtual] " before the region, newer "... at X [virtual]".
_ROM_RE = re.compile(
    _INDENT + r"(?P<pre>\[virtual\] )?Expansion ROM at " + _ADDR + r"(?P<rest>.*)$"
)
_IRQ_RE = re.compile(_INDENT + r"Interrupt: pin \S routed to IRQ (?P<irq>\d+)$")
_CONTROL_RE = re.compile(_INDENT + r"Control: ")
_GROUP_RE = re.compile(_INDENT + r"IOMMU group: (?P<group>\d+)$")
_DRIVER_RE = re.compile(_INDENT + r"Kernel driver in use: (?P<driver>\S+)$")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
#: pciutils reads lines into a 256-byte buffer; longer lines are an error there.
MAX_LINE = 255


@dataclass
class _Block:
    sbdf: SBDF
    line: int
    data: bytearray = field(default_factory=lambda: bytearray(b"\xff" * 256))
    length: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    resources: dict[int, Resource] = field(default_factory=dict)
    verbose: bool = False  # saw -vv text, so Region lines are the whole resource list
    irq: int | None = None
    iommu_group: int | None = None
    driver: str | None = None


def parse_dump(text: str, name: str = "<dump>") -> list[PciFunction]:
    """Parse lspci ``-x``/``-xxx``/``-xxxx`` output (with or without ``-v`` text).

    ``name`` is used in error messages and in each function's ``source``
    (``dump:NAME:LINE``). Raises :class:`SourceError` at the first bad line.
    """
    blocks: list[_Block] = []
    seen: dict[SBDF, int] = {}
    cur: _Block | None = None
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        where = f"{name}:{lineno}"
        if len(line) > MAX_LINE:
            raise SourceError(where, f"line longer than {MAX_LINE} characters")
        if not line:
            cur = None
            continue
        m = _HEADER_RE.match(line)
        if m:
            sbdf = _header_sbdf(m, where)
            if sbdf in seen:
                raise SourceError(where, f"device {sbdf} already defined at line {seen[sbdf]}")
            seen[sbdf] = lineno
            cur = _Block(sbdf, lineno)
            blocks.append(cur)
            continue
        r = _ROW_RE.match(line)
        if r:
            if cur is None:
                raise SourceError(where, "hex row outside a device (no 'BB:DD.F ' line before it)")
            _parse_row(cur, int(r["off"], 16), r["rest"], where)
            continue
        if cur is not None:
            _parse_text(cur, line, where)
    return [_to_function(b, name) for b in blocks]


def _header_sbdf(m: re.Match[str], where: str) -> SBDF:
    dom = int(m["dom"], 16) if m["dom"] else 0
    if dom > 0xFFFF:
        raise SourceError(where, f"domain 0x{dom:x} does not fit in a 16-bit PCI segment")
    try:
        return SBDF(dom, int(m["bus"], 16), int(m["dev"], 16), int(m["fn"], 16))
    except AddressError as e:
        raise SourceError(where, str(e)) from None


def _parse_row(block: _Block, offset: int, rest: str, where: str) -> None:
    if _ROW_BODY_RE.fullmatch(rest):
        _store(block, offset, bytes.fromhex(rest), where)
        return
    tokens = rest.split(" ")
    if tokens and tokens[-1] == "":  # lspci allows one trailing space
        tokens.pop()
    for col, tok in enumerate(tokens):
        if not _BYTE_RE.fullmatch(tok):
            raise SourceError(where, f"malformed byte {tok!r} in column {col}")
    # Valid tokens joined by single spaces always take the fast path above.
    raise SourceError(where, "malformed row")


def _store(block: _Block, offset: int, values: bytes, where: str) -> None:
    end = offset + len(values)
    if end > regs.PCI_CFG_SPACE_EXP_SIZE:
        raise SourceError(
            where, f"row at 0x{offset:x} reaches 0x{end:x}: at most 4096 bytes of config space"
        )
    if end > len(block.data):
        block.data.extend(b"\xff" * (regs.PCI_CFG_SPACE_EXP_SIZE - len(block.data)))
    block.data[offset:end] = values
    block.length = max(block.length, end)


def _parse_text(block: _Block, line: str, where: str) -> None:
    if _CONTROL_RE.match(line):
        block.verbose = True
        return
    g = _GROUP_RE.match(line)
    if g:
        block.iommu_group = int(g["group"])
        return
    d = _DRIVER_RE.match(line)
    if d:
        block.driver = d["driver"]
        return
    q = _IRQ_RE.match(line)
    if q:
        block.irq = int(q["irq"])
        return
    m = _REGION_RE.match(line)
    if m:
        idx = int(m["idx"])
        if idx >= ROM_INDEX:
            raise SourceError(where, f"region index {idx} out of range 0..5")
        _add_resource(block, idx, m, _region_flags(m["kind"], m["rest"]))
        return
    m = _ROM_RE.match(line)
    if m:
        enabled = "[disabled]" not in m["rest"]
        flags = _bar.IORESOURCE_MEM | _bar.IORESOURCE_PREFETCH | _bar.IORESOURCE_READONLY
        _add_resource(block, ROM_INDEX, m, flags | (_bar.IORESOURCE_ROM_ENABLE if enabled else 0))


def _region_flags(kind: str, rest: str) -> int:
    """``IORESOURCE_*`` flags for a Region line, as Linux's ``decode_bar`` sets them."""
    if kind == "I/O ports":
        return _bar.IORESOURCE_IO | _bar.IORESOURCE_SIZEALIGN | regs.PCI_BASE_ADDRESS_SPACE_IO
    flags = _bar.IORESOURCE_MEM | _bar.IORESOURCE_SIZEALIGN
    if "(64-bit," in rest:
        flags |= _bar.IORESOURCE_MEM_64 | regs.PCI_BASE_ADDRESS_MEM_TYPE_64
    if ", prefetchable)" in rest:
        flags |= _bar.IORESOURCE_PREFETCH | regs.PCI_BASE_ADDRESS_MEM_PREFETCH
    return flags


def _add_resource(block: _Block, idx: int, m: re.Match[str], flags: int) -> None:
    s = _SIZE_RE.search(m["rest"])
    size = int(s["size"]) * _UNITS[s["unit"]] if s else None
    if size is not None:
        block.sizes[idx] = size
    if "[enhanced]" in m["rest"]:
        flags |= _bar.IORESOURCE_PCI_EA_BEI
    addr = m["addr"]
    # <unassigned>/<ignored>: the kernel holds no address for it (bar_init shows 0).
    start = 0 if addr.startswith("<") else int(addr, 16)
    if addr.startswith("<"):
        flags |= _bar.IORESOURCE_UNSET
    block.resources[idx] = Resource(idx, start, size, flags)


def _to_function(block: _Block, name: str) -> PciFunction:
    where = f"{name}:{block.line}"
    size = (
        regs.PCI_CFG_SPACE_EXP_SIZE
        if len(block.data) > regs.PCI_CFG_SPACE_SIZE
        else regs.PCI_CFG_SPACE_SIZE
    )
    data = bytes(block.data[: block.length])
    notes: list[str] = []
    try:
        cs = ConfigSpace(data, size)
    except ConfigError as e:  # pragma: no cover - sizes are bounded above
        raise SourceError(where, str(e)) from None
    if block.length == 0:
        notes.append("no config bytes in the dump")
    elif block.length < regs.PCI_STD_HEADER_SIZEOF:
        notes.append(f"config truncated at {block.length} bytes (header incomplete)")
    elif block.length < regs.PCI_CFG_SPACE_SIZE:
        notes.append(f"config truncated at {block.length} bytes (an lspci -x dump)")
    sizes = block.sizes
    if block.length >= regs.PCI_STD_HEADER_SIZEOF:
        sizes, size_notes = plausible_sizes(cs, block.sizes)
        notes.extend(size_notes)
        try:
            apply_standard_masks(cs, sizes)
        except PciError as e:  # an impossible encoding: a note on this function only
            notes.append(f"BARs not decoded: {e}")
    resources: dict[int, Resource] | None = None
    if block.verbose or block.resources:
        # lspci's text names every resource the kernel had; legacy IDE ports
        # are printed masked with ~3, so Linux's own fixed values replace them.
        legacy = legacy_ide_resources(cs) if block.length >= regs.PCI_STD_HEADER_SIZEOF else {}
        resources = {**block.resources, **legacy}
    fn = PciFunction(
        block.sbdf,
        cs,
        source=f"dump:{name}:{block.line}",
        bar_sizes=sizes,
        iommu_group=block.iommu_group,
        driver=block.driver,
        notes=notes,
        resources=resources,
        irq=block.irq,
    )
    unknown = [str(b.index) for b in fn.bars if b.size is None]
    if unknown:
        fn.notes.append(
            f"size unknown for BAR {', '.join(unknown)} (no [size=] in the dump's -v text; "
            "give it with --bar-size BAR=SIZE)"
        )
    return fn


def load_dump(path: str | Path) -> list[PciFunction]:
    """Read and parse a dump file (see :func:`parse_dump`)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise SourceError(str(p), f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        # The hex is ASCII; names in the -v text may be Latin-1 or UTF-8.
        text = raw.decode("latin-1")
    return parse_dump(text, str(p))


# --- writer ---------------------------------------------------------------------


def format_header(fn: PciFunction, *, with_domain: bool = False) -> str:
    """The device line, in ``lspci -n`` form: ``BB:DD.F CCCC: VVVV:DDDD (rev RR)``.

    lspci only needs ``BB:DD.F`` and a space; the rest is for people.
    """
    addr = str(fn.sbdf) if with_domain or fn.sbdf.segment else fn.sbdf.bdf
    cs = fn.config
    if cs.known_size < regs.PCI_CLASS_DEVICE + 2:
        return f"{addr} Device"
    text = f"{addr} {cs.class_code >> 8:04x}: {cs.vendor_id:04x}:{cs.device_id:04x}"
    if cs.revision:
        text += f" (rev {cs.revision:02x})"
    return text


def format_dump(functions: Iterable[PciFunction], *, with_domain: bool = False) -> str:
    """Render functions as ``lspci -xxxx`` text that ``lspci -F`` reads back.

    Only the bytes the source knew are written (16 per row, the last row
    possibly short), so a 64-byte sysfs read stays 64 bytes and a 256-byte
    device gets no extended rows.
    """
    out: list[str] = []
    for fn in functions:
        out.append(format_header(fn, with_domain=with_domain))
        data = fn.config.known()
        for off in range(0, len(data), 16):
            row = data[off : off + 16]
            out.append(f"{off:02x}: " + row.hex(" "))
        out.append("")
    return "\n".join(out) + ("\n" if out else "")


def write_dump(functions: Iterable[PciFunction], path: str | Path) -> None:
    """Write :func:`format_dump` output to ``path``."""
    Path(path).write_text(format_dump(functions), encoding="ascii")
