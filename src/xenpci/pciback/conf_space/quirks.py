"""Quirk fields added at run time (``conf_space_quirks.c`` and the ``quirks``
sysfs attribute of ``pci_stub.c``).

A quirk written as ``DDDD:BB:SS.F-REG:SIZE:MASK`` (hex; domain optional)
becomes a field with raw hardware read and write, so that register is
guest-writable without permissive mode. The mask is stored, shown, never
applied. Quirk fields are dynamic (``clean``): every release from a guest
drops them. A quirk whose REG equals an existing field's start is silently
ignored (Linux' duplicate check compares start offsets only); a quirk that
*overlaps* a field starting elsewhere is accepted, and being later in the
list its read value wins where they overlap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xenpci.pci.address import SBDF
from xenpci.pciback.conf_space.engine import ConfigField, DevData
from xenpci.pciback.conf_space.header import (
    read_hw8,
    read_hw16,
    read_hw32,
    write_hw8,
    write_hw16,
    write_hw32,
)
from xenpci.pciback.errors import EINVAL, SysfsError

_QUIRK_RE = re.compile(
    r"^(?:(?P<seg>[0-9a-fA-F]{1,4}):)?(?P<bus>[0-9a-fA-F]{1,2}):(?P<slot>[0-9a-fA-F]{1,2})"
    r"\.(?P<fn>[0-7])-(?P<reg>[0-9a-fA-F]{1,8}):(?P<size>[0-9a-fA-F]{1,8}):"
    r"(?P<mask>[0-9a-fA-F]{1,8})$"
)


@dataclass(frozen=True, slots=True)
class QuirkSpec:
    """One parsed quirk line."""

    sbdf: SBDF
    reg: int
    size: int
    mask: int


def parse_quirk(text: str) -> QuirkSpec:
    """Parse a ``quirks`` write; -EINVAL for REG > 0xFFF, SIZE not 1/2/4, a MASK
    wider than SIZE, or bad syntax (``str_to_quirk`` + ``pcistub_quirk_add``)."""
    m = _QUIRK_RE.match(text.strip())
    if m is None:
        raise SysfsError("quirks", text, EINVAL, "expected [DDDD:]BB:SS.F-REG:SIZE:MASK")
    reg, size, mask = int(m["reg"], 16), int(m["size"], 16), int(m["mask"], 16)
    if reg > 0xFFF:
        raise SysfsError("quirks", text, EINVAL, f"register 0x{reg:x} beyond 0xfff")
    if size not in (1, 2, 4):
        raise SysfsError("quirks", text, EINVAL, f"size {size} not 1, 2 or 4")
    if size < 4 and mask >> (8 * size):
        raise SysfsError("quirks", text, EINVAL, f"mask 0x{mask:x} wider than {size} bytes")
    try:
        sbdf = SBDF(
            int(m["seg"] or "0", 16), int(m["bus"], 16), int(m["slot"], 16), int(m["fn"], 16)
        )
    except ValueError as e:
        raise SysfsError("quirks", text, EINVAL, str(e)) from None
    return QuirkSpec(sbdf, reg, size, mask)


_RW = {1: (read_hw8, write_hw8), 2: (read_hw16, write_hw16), 4: (read_hw32, write_hw32)}


def quirk_field(spec: QuirkSpec) -> ConfigField:
    """The dynamic field a quirk adds: raw hardware read and write."""
    read, write = _RW[spec.size]
    return ConfigField(
        f"quirk.0x{spec.reg:03x}",
        spec.reg,
        spec.size,
        read=read,
        write=write,
        clean=True,
        mask=spec.mask,
        on_write="passed to hardware (sysfs quirk; dropped at release)",
    )


def format_quirks(entries: list[tuple[SBDF, DevData]]) -> str:
    """The ``quirks`` read format: ``BB:SS.F`` + ids, then every field of the device."""
    out: list[str] = []
    for sbdf, dd in entries:
        cs = dd.hw.config
        out.append(f"{sbdf.bus:02x}:{sbdf.device:02x}.{sbdf.function:01x}\n")
        out.append(
            f"\t{cs.vendor_id:04x}:{cs.device_id:04x}:{cs.read(0x2C, 2):04x}:"
            f"{cs.read(0x2E, 2):04x}\n"
        )
        for e in dd.config_fields:
            out.append(f"\t\t{e.start:08x}:{e.field.size:01x}:{e.field.mask:08x}\n")
    return "".join(out)
