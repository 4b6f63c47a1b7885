"""What ``xenpci check`` knows about a host: its PCI functions plus the few
facts beyond config space that passthrough safety depends on.

Read from a Linux sysfs tree (this host's ``/``, or a captured copy of it):
``/sys/bus/pci/devices`` through :func:`xenpci.pci.sysfs.load_sysfs` (the one
sysfs reader), ``/sys/class/iommu`` and ``/sys/kernel/iommu_groups/N/devices``
(as libvirt's ``virt-host-validate`` and the IOMMU-group listing scripts do),
each function's ``boot_vga``, ``/sys/class/block/*`` links (whose targets run
through the PCI device that hosts the disk) and ``/proc/mounts``. From an
lspci dump only the functions are known (plus any ``IOMMU group`` and
``Kernel driver in use`` lines): the host facts are ``None``, "unknown".

Nothing is written, and everything is readable by a non-root user (config
then stops at 64 bytes; the rules say when that hides an answer). Under Xen,
dom0's kernel does not see Xen's IOMMU: ``/sys/hypervisor/type`` is recorded
so the report can say so rather than call the host IOMMU-less.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from xenpci.pci.address import SBDF
from xenpci.pci.errors import AddressError, SourceError
from xenpci.pci.function import PciFunction
from xenpci.pci.sysfs import load_sysfs

# The kernel's mangle() escapes space, tab, newline and backslash as \ooo.
_OCTAL = re.compile(r"\\([0-3][0-7]{2})")


@dataclass(frozen=True, slots=True)
class Mount:
    """One ``/proc/mounts`` line: the block device, where it is mounted, its type."""

    device: str
    mountpoint: str
    fstype: str


@dataclass
class HostFacts:
    """Everything the rules read; ``None`` means the source cannot tell."""

    functions: list[PciFunction]
    source: str
    #: IOMMU units (``/sys/class/iommu`` names); None when unknown (a dump).
    iommu_units: list[str] | None = None
    #: IOMMU group number -> member functions (``/sys/kernel/iommu_groups``).
    iommu_groups: dict[int, list[SBDF]] | None = None
    #: Functions whose ``boot_vga`` reads 1 (dom0's console).
    boot_vga: set[SBDF] = field(default_factory=set)
    #: Block device name -> the PCI functions on its sysfs path (outermost first).
    block_devices: dict[str, list[SBDF]] | None = None
    mounts: list[Mount] | None = None
    #: ``/sys/hypervisor/type`` ("xen" in a Xen dom0), None when absent.
    hypervisor: str | None = None
    #: Set by a caller that knows (the toolstack asks the hypervisor): overrides sysfs.
    iommu: bool | None = None

    def function(self, sbdf: SBDF) -> PciFunction | None:
        return next((f for f in self.functions if f.sbdf == sbdf), None)

    @property
    def iommu_enabled(self) -> bool | None:
        """True when the kernel has IOMMU units and groups; None when unknown."""
        if self.iommu is not None:
            return self.iommu
        if self.iommu_units is None:
            # A dump: "IOMMU group: N" lines prove an IOMMU; their absence proves nothing.
            return True if self.iommu_groups else None
        return bool(self.iommu_units) and bool(self.iommu_groups)


def _sbdfs_on_path(path: str) -> list[SBDF]:
    out: list[SBDF] = []
    for part in path.split("/"):
        try:
            out.append(SBDF.parse(part))
        except (AddressError, ValueError):
            continue
    return out


def _read_opt(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _list(path: Path) -> list[str] | None:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SourceError(str(path), f"cannot list: {e.strerror or e}") from None


def parse_mounts(text: str) -> list[Mount]:
    """``/proc/mounts`` lines (``\\040``-style escapes decoded); malformed lines skipped."""
    out: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        dev, mnt, fstype = (_OCTAL.sub(lambda m: chr(int(m[1], 8)), f) for f in fields[:3])
        out.append(Mount(dev, mnt, fstype))
    return out


def sysfs_dirs(root: str | Path) -> tuple[Path, Path | None]:
    """(``sys`` dir, ``proc`` dir or None) of a root: ``/``-like, or a bare ``sys`` tree."""
    r = Path(root)
    if (r / "bus" / "pci" / "devices").is_dir():
        return r, None
    if (r / "sys" / "bus" / "pci" / "devices").is_dir():
        return r / "sys", r / "proc"
    raise SourceError(str(r), "no sys/bus/pci/devices below it (not a sysfs tree)")


def load_host_facts(root: str | Path = "/") -> HostFacts:
    """Read a host (or a captured tree shaped like ``/``) without writing anything."""
    sys_dir, proc_dir = sysfs_dirs(root)
    devices = sys_dir / "bus" / "pci" / "devices"
    functions = load_sysfs(devices)
    units = _list(sys_dir / "class" / "iommu") or []
    groups: dict[int, list[SBDF]] = {}
    for name in _list(sys_dir / "kernel" / "iommu_groups") or []:
        if name.isdigit():
            members = _list(sys_dir / "kernel" / "iommu_groups" / name / "devices") or []
            groups[int(name)] = sorted(s for m in members for s in _sbdfs_on_path(m))
    boot_vga = {f.sbdf for f in functions if _read_opt(devices / str(f.sbdf) / "boot_vga") == "1"}
    block: dict[str, list[SBDF]] = {}
    dm_names: dict[str, str] = {}
    class_block = sys_dir / "class" / "block"
    for name in _list(class_block) or []:
        link = class_block / name
        target = os.readlink(link) if link.is_symlink() else str(link.resolve())
        block[name] = _sbdfs_on_path(target)
        dm_name = _read_opt(link / "dm" / "name")
        if dm_name:
            dm_names[dm_name] = name
    # A device-mapper or md device sits on its "slaves": the disk is theirs.
    for name in list(block):
        for slave in _list(class_block / name / "slaves") or []:
            block[name] = block[name] + [s for s in block.get(slave, []) if s not in block[name]]
    for dm_name, name in dm_names.items():
        block.setdefault(f"mapper/{dm_name}", block[name])
    mounts: list[Mount] | None = None
    if proc_dir is not None:
        text = _read_opt(proc_dir / "mounts")
        mounts = parse_mounts(text) if text is not None else None
    return HostFacts(
        functions=functions,
        source=f"sysfs:{root}",
        iommu_units=units,
        iommu_groups=groups,
        boot_vga=boot_vga,
        block_devices=block,
        mounts=mounts,
        hypervisor=_read_opt(sys_dir / "hypervisor" / "type"),
    )


def facts_from_functions(functions: list[PciFunction], source: str) -> HostFacts:
    """Reduced facts for an lspci dump: groups only if the dump names them."""
    groups: dict[int, list[SBDF]] | None = None
    if any(f.iommu_group is not None for f in functions):
        groups = {}
        for f in functions:
            if f.iommu_group is not None:
                groups.setdefault(f.iommu_group, []).append(f.sbdf)
    return HostFacts(functions=functions, source=source, iommu_groups=groups)
