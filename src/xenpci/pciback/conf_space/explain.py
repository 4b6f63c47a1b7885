"""Name the rule behind everything a guest sees differently from the host.

Built for ``xenpci pci guest-view``: :func:`explain` compares, field by field,
what the guest reads through pciback with what the host function holds, and
:func:`write_rules` lists which guest writes are filtered and how. Each row
names the :class:`~xenpci.pciback.conf_space.engine.ConfigField` responsible
(e.g. ``header.command``, ``msix.flags``), or ``conf_space.unhandled`` for
bytes no field covers.

Reading through the fields has no side effects on the device (every read
handler only reads), so explaining a device changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from xenpci.pciback.conf_space.engine import DevData, config_read, get_mask

UNHANDLED = "conf_space.unhandled"


@dataclass(frozen=True, slots=True)
class Difference:
    """A register whose guest view differs from the host's, and the rule why."""

    offset: int
    size: int
    host_value: int
    guest_value: int
    rule: str

    def __post_init__(self) -> None:
        if self.size not in (1, 2, 4) or not 0 <= self.offset < 0x1000:
            raise ValueError(f"bad register 0x{self.offset:x}/{self.size}")


@dataclass(frozen=True, slots=True)
class WriteRule:
    """What a guest write to ``offset``/``size`` does, and the rule that decides."""

    offset: int
    size: int
    rule: str
    effect: str


def _covered(dd: DevData) -> set[int]:
    return {b for e in dd.config_fields for b in range(e.start, e.end)}


def explain(dd: DevData) -> list[Difference]:
    """Every field (and, in the strict policy, every uncovered dword) whose guest
    value differs from the host value; later fields win where they overlap."""
    out: list[Difference] = []
    seen: set[tuple[int, int]] = set()
    for entry in reversed(dd.config_fields):
        key = (entry.start, entry.field.size)
        if key in seen:
            continue
        seen.add(key)
        _, host = dd.hw_read(entry.start, entry.field.size)
        _, guest = config_read(dd, entry.start, entry.field.size)
        guest &= get_mask(entry.field.size)
        if host != guest:
            out.append(Difference(entry.start, entry.field.size, host, guest, entry.field.name))
    if dd.options.policy == "strict":
        covered = _covered(dd)
        size = dd.hw.config.size
        for off in range(0, size, 4):
            if any(b in covered for b in range(off, off + 4)):
                continue
            _, host = dd.hw_read(off, 4)
            if host != 0xFFFFFFFF:
                out.append(Difference(off, 4, host, 0xFFFFFFFF, UNHANDLED))
    return sorted(out, key=lambda d: (d.offset, d.size))


def write_rules(dd: DevData) -> list[WriteRule]:
    """One row per field in list order, then the rule for every other byte."""
    rows = [
        WriteRule(e.start, e.field.size, e.field.name, e.field.on_write) for e in dd.config_fields
    ]
    if dd.options.policy == "strict":
        effect = "dropped (success returned); reads all-ones"
    elif dd.is_permissive:
        effect = "passed to hardware (permissive) unless the write touches any field"
    else:
        effect = "dropped (success returned, one warning per device); see permissive"
    rows.append(WriteRule(0, 4, UNHANDLED, effect))
    return rows
