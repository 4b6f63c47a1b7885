"""Read-only PCI functions from a Linux sysfs tree (``/sys/bus/pci/devices``).

Models what pciutils ``lib/sysfs.c``, QEMU ``xen-host-pci-device.c`` and
libxl read from ``drivers/pci/pci-sysfs.c``'s files: ``config`` (binary;
only the first 64 bytes without CAP_SYS_ADMIN, 128 for CardBus),
``resource`` (``start end flags`` per line: BAR0-5, ROM, then bridge
windows; the start and flags are dom0's ``struct resource``, which the
guest's virtual BARs show), ``vendor``/``device``/``class``, ``irq``
(``dev->irq``, shown to a guest as INTERRUPT_LINE), the ``iommu_group`` and
``driver`` symlinks and ``reset_method``.

Nothing is ever written: files are only opened for reading. Differences: the
sysfs root is a parameter so tests use a fake tree; a short ``config`` read
is kept as it is (``ConfigSpace.known_size``) with a note, never padded with
invented bytes; ``vendor``/``device``/``class`` disagreeing with config is a
:class:`SourceError`.
"""

from __future__ import annotations

import os
from pathlib import Path

from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.bar import ROM_INDEX, Resource, plausible_sizes
from xenpci.pci.config import ConfigSpace, apply_standard_masks
from xenpci.pci.errors import AddressError, ConfigError, SourceError
from xenpci.pci.function import PciFunction

#: Where Linux lists PCI functions.
SYSFS_PCI_DEVICES = Path("/sys/bus/pci/devices")
#: ``resource`` line counts pciutils accepts (non-bridge / bridge, without or with SR-IOV).
_RESOURCE_LINES = (7, 11, 13, 17)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(str(path), f"cannot read: {e}") from None


def _hex_attr(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip(), 16)
    except ValueError:
        raise SourceError(str(path), f"expected 0x-hex, got {text.strip()[:40]!r}") from None


def _int_attr(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise SourceError(
            str(path), f"expected a decimal number, got {text.strip()[:40]!r}"
        ) from None


def parse_resources(text: str, where: str) -> dict[int, Resource]:
    """dom0's resources by BAR index (6 = ROM) from a sysfs ``resource`` file.

    A line is ``0x%016llx 0x%016llx 0x%016llx`` (start, end, flags). A line
    of zero flags is no resource; the size is ``end - start + 1`` when
    ``start`` is non-zero (unassigned BARs print start 0). Bridge windows
    (lines 7-10) and SR-IOV VF BARs are skipped.
    """
    lines = text.splitlines()
    if len(lines) not in _RESOURCE_LINES:
        raise SourceError(where, f"{len(lines)} lines; expected one of {_RESOURCE_LINES}")
    out: dict[int, Resource] = {}
    for i, line in enumerate(lines[: ROM_INDEX + 1]):
        fields = line.split()
        if len(fields) != 3:
            raise SourceError(f"{where}:{i + 1}", "expected 'start end flags'")
        try:
            start, end, flags = (int(f, 16) for f in fields)
        except ValueError:
            raise SourceError(f"{where}:{i + 1}", f"bad hex in {line!r}") from None
        if start and end < start:
            raise SourceError(f"{where}:{i + 1}", f"end 0x{end:x} below start 0x{start:x}")
        if start or flags:
            out[i] = Resource(i, start, end - start + 1 if start else None, flags)
    return out


def parse_resource(text: str, where: str) -> dict[int, int]:
    """Sizes by BAR index (6 = ROM) from a sysfs ``resource`` file (see :func:`parse_resources`)."""
    return {i: r.size for i, r in parse_resources(text, where).items() if r.size}


def load_sysfs_function(path: str | Path) -> PciFunction:
    """Load one function from its sysfs directory (named ``DDDD:BB:DD.F``)."""
    d = Path(path)
    try:
        sbdf = SBDF.parse(d.name)
    except AddressError as e:
        raise SourceError(str(d), str(e)) from None
    cfg_path = d / "config"
    try:
        with open(cfg_path, "rb") as f:  # read-only: nothing here ever writes to a device
            declared = os.fstat(f.fileno()).st_size
            data = f.read(regs.PCI_CFG_SPACE_EXP_SIZE)
    except OSError as e:
        raise SourceError(str(cfg_path), f"cannot read: {e.strerror or e}") from None
    size = (
        regs.PCI_CFG_SPACE_EXP_SIZE
        if max(declared, len(data)) > regs.PCI_CFG_SPACE_SIZE
        else regs.PCI_CFG_SPACE_SIZE
    )
    notes: list[str] = []
    if len(data) < size:
        notes.append(
            f"config truncated at {len(data)} bytes (non-root sysfs read; "
            f"the file is {max(declared, size)} bytes)"
        )
    try:
        cs = ConfigSpace(data, size)
    except ConfigError as e:
        raise SourceError(str(cfg_path), str(e)) from None
    _cross_check(d, cs)
    res_text = _read_text(d / "resource")
    resources = parse_resources(res_text, str(d / "resource")) if res_text is not None else None
    sizes = {i: r.size for i, r in (resources or {}).items() if r.size}
    if res_text is None:
        notes.append("no resource file: BAR sizes unknown (give them with --bar-size BAR=SIZE)")
    if cs.known_size >= regs.PCI_STD_HEADER_SIZEOF:
        sizes, size_notes = plausible_sizes(cs, sizes)
        notes.extend(size_notes)
        apply_standard_masks(cs, sizes)
    irq = _int_attr(d / "irq")
    group: int | None = None
    if (d / "iommu_group").is_symlink():
        name = os.path.basename(os.readlink(d / "iommu_group"))
        if not name.isdigit():
            raise SourceError(str(d / "iommu_group"), f"link target {name!r} is not a number")
        group = int(name)
    driver = os.path.basename(os.readlink(d / "driver")) if (d / "driver").is_symlink() else None
    rm_text = _read_text(d / "reset_method")
    return PciFunction(
        sbdf,
        cs,
        source=f"sysfs:{d}",
        bar_sizes=sizes,
        iommu_group=group,
        driver=driver,
        # Absent reset_method means Linux found no method; say so, do not guess.
        reset_methods=rm_text.split() if rm_text is not None else [],
        notes=notes,
        resources=resources,
        irq=irq,
    )


def _cross_check(d: Path, cs: ConfigSpace) -> None:
    """The text attributes come from the kernel's cache; config must agree."""
    for attr, off, width in (
        ("vendor", regs.PCI_VENDOR_ID, 2),
        ("device", regs.PCI_DEVICE_ID, 2),
    ):
        value = _hex_attr(d / attr)
        if value is not None and off + width <= cs.known_size and cs.read(off, width) != value:
            raise SourceError(
                str(d / attr), f"0x{value:04x} disagrees with config 0x{cs.read(off, width):04x}"
            )
    klass = _hex_attr(d / "class")
    if klass is not None and cs.known_size >= 12 and cs.class_code != klass:
        raise SourceError(
            str(d / "class"), f"0x{klass:06x} disagrees with config 0x{cs.class_code:06x}"
        )


def load_sysfs(root: str | Path = SYSFS_PCI_DEVICES, bdf: SBDF | None = None) -> list[PciFunction]:
    """Every function under ``root`` (sorted by address), or just ``bdf``."""
    r = Path(root)
    if bdf is not None:
        d = r / str(bdf)
        if not d.is_dir():
            raise SourceError(str(d), f"no PCI function {bdf} under {r}")
        return [load_sysfs_function(d)]
    try:
        entries = sorted(os.listdir(r))
    except OSError as e:
        raise SourceError(str(r), f"cannot list: {e.strerror or e}") from None
    return [load_sysfs_function(r / e) for e in entries]
