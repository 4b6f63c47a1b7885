"""The hypervisor-backed :class:`InterruptPlatform`: MSI/MSI-X vectors as pirqs,
MSI-X table protection, and BAR mappings that follow the guest's memory decode.

Models dom0's ``xen_initdom_setup_msi_irqs`` (``arch/x86/pci/xen.c``): for
each vector, ``PHYSDEVOP_map_pirq`` with the guest as owner; Xen's
``map_domain_pirq`` also grants the guest access to that irq, so the guest
can bind the pirq to an event channel. Teardown revokes and unmaps.

``PHYSDEVOP_prepare_msix`` / ``release_msix`` are issued at seize and release
(``pcistub_init_device`` / ``pcistub_device_release``); the table and PBA
windows are computed here from the function's MSI-X capability and BARs
(:func:`msix_windows`), because the hypervisor model has no config space.
:meth:`HvInterruptPlatform.memory_decode` maps or unmaps each memory BAR's
frames for the owner: Xen vPCI's behaviour carried to the PV model (Linux PV
pciback never tells Xen about the guest's COMMAND.MEMORY).

Interrupt source names are ``msi:SBDF:N`` / ``msix:SBDF:ENTRY`` (the
hypervisor's naming for message-signalled sources); :meth:`pirq_for` maps a
device model's message back to its pirq so the machine can raise it. A
hypervisor refusal is returned as the negative errno Linux would get, never
raised into pciback.

Deliberate difference: Xen itself writes each MSI-X table entry's message
when it maps the pirq (``write_msi_msg`` from ``msi.c``) and unmasks the
entry when the guest binds it; here both happen at map time, from this
platform, and only for device models (a device from a dump or sysfs has no
table behind its BAR). The message data word carries the pirq.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Sequence

from xenpci.devices.base import DeviceModel
from xenpci.hv.errors import HvError
from xenpci.hv.hypercalls import Hypercalls
from xenpci.hv.memory import PAGE_SHIFT
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.capabilities import find_capability
from xenpci.pci.function import PciFunction
from xenpci.pciback.conf_space.dom0_pci import HostFunction

#: x86 MSI address base (Intel SDM vol. 3 §11.11.1: 0xFEEx_xxxx).
MSI_ADDRESS_BASE = 0xFEE00000
#: An MSI-X table entry: address lo, address hi, data, vector control (PCI 3.0 §6.8.2).
MSIX_ENTRY_SIZE = 16
MSIX_ENTRY_VECTOR_CTRL_MASKBIT = 1


class HvInterruptPlatform:
    """``InterruptPlatform`` over dom0's hypercall handle."""

    def __init__(self, dom0: Hypercalls) -> None:
        self._hc = dom0
        # Op service (dom0's vCPU) maps; the device models' interrupt path
        # (any thread) looks up: one lock keeps the two tables consistent.
        self._lock = threading.Lock()
        self._mapped: dict[tuple[SBDF, str], list[tuple[int, int, int]]] = {}
        # (sbdf, kind) -> [(vector or entry, owner, pirq)]

    def mapped(self, dev: HostFunction, kind: str) -> list[int]:
        """The pirqs currently mapped for ``dev``'s MSI (``"msi"``) or MSI-X."""
        with self._lock:
            return [p for _, _, p in self._mapped.get((dev.sbdf, kind), [])]

    def pirq_for(self, kind: str, sbdf: SBDF, vector: int) -> int | None:
        """The pirq a device's MSI vector / MSI-X entry is mapped to, if any."""
        with self._lock:
            for v, _, pirq in self._mapped.get((sbdf, kind), []):
                if v == vector:
                    return pirq
        return None

    def _map(self, dev: HostFunction, kind: str, owner: int, ids: Sequence[int]) -> list[int] | int:
        done: list[tuple[int, int, int]] = []
        try:
            for i in ids:
                pirq = self._hc.map_pirq(owner, f"{kind}:{dev.sbdf}:{i}")
                done.append((i, owner, pirq))
                self._hc.irq_permission(owner, pirq, True)
        except HvError as e:
            self._unmap(done)
            return _errno(e)
        with self._lock:
            self._mapped[(dev.sbdf, kind)] = done
        if kind == "msix":
            _program_msix(dev, done)
        return [p for _, _, p in done]

    def _unmap(self, entries: list[tuple[int, int, int]]) -> None:
        # The guest may already be gone: each step is tried, teardown never fails.
        for _, owner, pirq in entries:
            with contextlib.suppress(HvError):
                self._hc.irq_permission(owner, pirq, False)
            with contextlib.suppress(HvError):
                self._hc.unmap_pirq(owner, pirq)

    def _pop(self, dev: HostFunction, kind: str) -> list[tuple[int, int, int]]:
        with self._lock:
            return self._mapped.pop((dev.sbdf, kind), [])

    def enable_msi(self, dev: HostFunction, owner: int, nvec: int) -> list[int] | int:
        return self._map(dev, "msi", owner, range(nvec))

    def disable_msi(self, dev: HostFunction) -> None:
        self._unmap(self._pop(dev, "msi"))

    def enable_msix(self, dev: HostFunction, owner: int, entries: Sequence[int]) -> list[int] | int:
        return self._map(dev, "msix", owner, entries)

    def disable_msix(self, dev: HostFunction) -> None:
        entries = self._pop(dev, "msix")
        _mask_msix(dev, [i for i, _, _ in entries])
        self._unmap(entries)

    def prepare_msix(self, dev: HostFunction) -> int:
        try:
            prepare_msix(self._hc, dev)
        except HvError as e:
            return _errno(e)
        return 0

    def release_msix(self, dev: HostFunction) -> int:
        if msix_windows(dev) is None:
            return 0  # nothing was prepared
        try:
            self._hc.release_msix(dev.sbdf.sbdf_int)
        except HvError as e:
            return _errno(e)
        return 0

    def memory_decode(self, dev: HostFunction, owner: int, enabled: bool) -> int:
        # Every BAR is tried: one the toolstack did not grant is refused by the
        # hypervisor (the guest could not map it anyway), the others still follow.
        err = 0
        for first, nr in memory_bar_frames(dev):
            try:
                self._hc.memory_decode(owner, first, nr, enabled)
            except HvError as e:
                err = err or _errno(e)
        return err


def msix_windows(fn: PciFunction) -> tuple[int, int, int, int] | None:
    """(table paddr, table size, PBA paddr, PBA size) of ``fn``'s MSI-X, from its config;
    None without MSI-X or when the BAR holding the table or PBA has no address."""
    cap = find_capability(fn.config, regs.PCI_CAP_ID_MSIX)
    if cap is None:
        return None
    nvec = (fn.config.read(cap + regs.PCI_MSIX_FLAGS, 2) & regs.PCI_MSIX_FLAGS_QSIZE) + 1
    table = fn.config.read(cap + regs.PCI_MSIX_TABLE, 4)
    pba = fn.config.read(cap + regs.PCI_MSIX_PBA, 4)
    bars = {b.index: b for b in fn.bars}
    tbar = bars.get(table & regs.PCI_MSIX_TABLE_BIR)
    pbar = bars.get(pba & regs.PCI_MSIX_PBA_BIR)
    if tbar is None or pbar is None or not tbar.address or not pbar.address:
        return None
    return (
        tbar.address + (table & regs.PCI_MSIX_TABLE_OFFSET),
        nvec * regs.PCI_MSIX_ENTRY_SIZE,
        pbar.address + (pba & regs.PCI_MSIX_PBA_OFFSET),
        max(8, (nvec + 63) // 64 * 8),  # one pending bit per vector, in qwords
    )


def prepare_msix(dom0: Hypercalls, fn: PciFunction) -> bool:
    """``PHYSDEVOP_prepare_msix`` for ``fn``; False when it has no placed MSI-X.
    A hypervisor refusal is raised (:class:`~xenpci.hv.errors.HvError`)."""
    windows = msix_windows(fn)
    if windows is None:
        return False
    dom0.prepare_msix(fn.sbdf.sbdf_int, *windows)
    return True


def memory_bar_frames(fn: PciFunction) -> list[tuple[int, int]]:
    """``(first_mfn, nr_mfns)`` of each placed memory BAR (not the ROM: its own enable
    bit governs it, and vPCI does not map it for guests)."""
    out = []
    for bar in fn.bars:
        if bar.kind in ("mem32", "mem64") and bar.size and bar.address:
            first = bar.address >> PAGE_SHIFT
            last = (bar.address + bar.size - 1) >> PAGE_SHIFT
            out.append((first, last - first + 1))
    return out


def _errno(e: HvError) -> int:
    return -int(getattr(errno, e.errno, errno.EINVAL))


def _program_msix(dev: HostFunction, entries: list[tuple[int, int, int]]) -> None:
    block = dev.msix if isinstance(dev, DeviceModel) else None
    if block is None:
        return
    for entry, _, pirq in entries:
        if not 0 <= entry < block.nvec:
            continue  # pciback already refused it; never write outside the table
        base = entry * MSIX_ENTRY_SIZE
        block.write_table(base, 4, MSI_ADDRESS_BASE)
        block.write_table(base + 4, 4, 0)
        block.write_table(base + 8, 4, pirq)
        block.write_table(base + 12, 4, 0)  # unmasked: the guest bound it


def _mask_msix(dev: HostFunction, entries: list[int]) -> None:
    block = dev.msix if isinstance(dev, DeviceModel) else None
    if block is None:
        return
    for entry in entries:
        if 0 <= entry < block.nvec:
            block.write_table(entry * MSIX_ENTRY_SIZE + 12, 4, MSIX_ENTRY_VECTOR_CTRL_MASKBIT)
