"""Lay out a captured-sysfs tree (shaped like ``/``) from PCI functions, as Linux's
``drivers/pci/pci-sysfs.c``, ``drivers/iommu/iommu.c`` and ``block/genhd.c`` show it.

``/sys/devices/pci0000:00/<bridge>/.../<BDF>/`` holds each function's files
(``config``, ``resource``, ``vendor``, ``device``, ``class``, ``irq``,
``reset_method``, ``boot_vga``, ``iommu_group`` and ``driver`` links), and
``/sys/bus/pci/devices/<BDF>`` links to it; ``/sys/kernel/iommu_groups/N/devices``
links back; ``/sys/class/iommu/<unit>``; ``/sys/class/block/<disk>`` links into
the PCI device's directory; ``/proc/mounts``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from xenpci.check.rules import upstream_bridges
from xenpci.pci.address import SBDF
from xenpci.pci.bar import ROM_INDEX
from xenpci.pci.function import PciFunction


@dataclass
class HostSpec:
    """What the captured host looks like beyond the functions' config bytes."""

    iommu_units: list[str] = field(default_factory=lambda: ["dmar0"])
    #: group -> members; None: one group per function (what ACS everywhere gives).
    groups: Mapping[int, Iterable[str]] | None = None
    drivers: Mapping[str, str] = field(default_factory=dict)
    reset_methods: Mapping[str, str] = field(default_factory=dict)
    boot_vga: Iterable[str] = ()
    #: disk name -> BDF it hangs off, e.g. {"sda": "0000:00:1f.2"} (partitions get "sda1").
    disks: Mapping[str, str] = field(default_factory=dict)
    mounts: Iterable[tuple[str, str, str]] = ()
    #: bdf -> {bar index: size}, for sources without sizes.
    sizes: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    irqs: Mapping[str, int] = field(default_factory=dict)
    #: True: every config file is the 64 bytes a non-root reader sees.
    nonroot: bool = False
    hypervisor: str | None = None


def _rel(target: Path, link: Path) -> str:
    return os.path.relpath(target, link.parent)


def _resource_lines(fn: PciFunction, sizes: Mapping[int, int]) -> str:
    lines = []
    res = fn.resources
    for i in range(ROM_INDEX + 1):
        r = res.get(i)
        size = sizes.get(i) or (r.size if r is not None else None)
        if r is None or not size or not r.start:
            lines.append((0, 0, 0))
        else:
            lines.append((r.start, r.start + size - 1, r.flags))
    nlines = 17 if fn.config.header_type == 1 else 13
    lines += [(0, 0, 0)] * (nlines - len(lines))
    return "".join(f"0x{s:016x} 0x{e:016x} 0x{f:016x}\n" for s, e, f in lines)


def build_tree(root: Path, functions: list[PciFunction], spec: HostSpec | None = None) -> Path:
    """Write the tree under ``root`` and return ``root``."""
    spec = spec or HostSpec()
    sys_dir = root / "sys"
    devices = sys_dir / "devices"
    bus_devices = sys_dir / "bus" / "pci" / "devices"
    bus_devices.mkdir(parents=True)
    (sys_dir / "bus" / "pci" / "drivers").mkdir()
    dirs: dict[SBDF, Path] = {}
    for fn in sorted(functions, key=lambda f: (f.sbdf.segment, f.sbdf.bus, f.sbdf.devfn)):
        chain = upstream_bridges(fn, functions)
        base = devices / f"pci{fn.sbdf.segment:04x}:00"
        for b in chain:
            base = base / str(b.sbdf)
        d = base / str(fn.sbdf)
        d.mkdir(parents=True, exist_ok=True)
        dirs[fn.sbdf] = d
        key = str(fn.sbdf)
        cfg = fn.config.known()
        (d / "config").write_bytes(cfg[:64] if spec.nonroot else cfg)
        cs = fn.config
        (d / "vendor").write_text(f"0x{cs.vendor_id:04x}\n")
        (d / "device").write_text(f"0x{cs.device_id:04x}\n")
        (d / "class").write_text(f"0x{cs.class_code:06x}\n")
        (d / "resource").write_text(_resource_lines(fn, spec.sizes.get(key, {})))
        irq = spec.irqs.get(key, fn.irq)
        if irq is not None:
            (d / "irq").write_text(f"{irq}\n")
        # Linux hides reset_method when a function has none; by default, what its
        # pci_init_reset_methods finds in the capabilities (FLR, AF FLR, PM).
        methods = spec.reset_methods.get(key, " ".join(fn.reset_methods()))
        if methods:
            (d / "reset_method").write_text(methods + "\n")
        if cs.class_code >> 8 == 0x0300:
            (d / "boot_vga").write_text("1\n" if key in set(spec.boot_vga) else "0\n")
        if key in spec.drivers:
            drv = sys_dir / "bus" / "pci" / "drivers" / spec.drivers[key]
            drv.mkdir(exist_ok=True)
            os.symlink(_rel(drv, d / "driver"), d / "driver")
            os.symlink(_rel(d, drv / key), drv / key)
        link = bus_devices / key
        os.symlink(_rel(d, link), link)
    groups = spec.groups
    if groups is None:
        groups = {i: [str(f.sbdf)] for i, f in enumerate(sorted(functions, key=lambda f: f.sbdf))}
    if spec.iommu_units:
        (sys_dir / "kernel" / "iommu_groups").mkdir(parents=True)
        for n, members in groups.items():
            g = sys_dir / "kernel" / "iommu_groups" / str(n)
            (g / "devices").mkdir(parents=True)
            for m in members:
                d = dirs[SBDF.parse(m)]
                os.symlink(_rel(d, g / "devices" / m), g / "devices" / m)
                os.symlink(_rel(g, d / "iommu_group"), d / "iommu_group")
    (sys_dir / "class" / "iommu").mkdir(parents=True)
    for unit in spec.iommu_units:
        u = devices / "virtual" / "iommu" / unit
        u.mkdir(parents=True)
        os.symlink(_rel(u, sys_dir / "class" / "iommu" / unit), sys_dir / "class" / "iommu" / unit)
    (sys_dir / "class" / "block").mkdir(parents=True)
    for disk, bdf in spec.disks.items():
        disk_dir = dirs[SBDF.parse(bdf)] / "host0" / "target0:0:0" / "block" / disk
        for name, d in ((disk, disk_dir), (f"{disk}1", disk_dir / f"{disk}1")):
            d.mkdir(parents=True)
            link = sys_dir / "class" / "block" / name
            os.symlink(_rel(d, link), link)
    (root / "proc").mkdir()
    (root / "proc" / "mounts").write_text(
        "proc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n"
        + "".join(f"{dev} {mnt} {fs} rw 0 0\n" for dev, mnt, fs in spec.mounts)
    )
    if spec.hypervisor:
        (sys_dir / "hypervisor").mkdir()
        (sys_dir / "hypervisor" / "type").write_text(spec.hypervisor + "\n")
    return root
