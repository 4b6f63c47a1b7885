"""The hypervisor-backed :class:`InterruptPlatform`: MSI/MSI-X vectors as pirqs.

Models dom0's ``xen_initdom_setup_msi_irqs`` (``arch/x86/pci/xen.c``): for
each vector, ``PHYSDEVOP_map_pirq`` with the guest as owner; Xen's
``map_domain_pirq`` also grants the guest access to that irq, so the guest
can bind the pirq to an event channel. Teardown revokes and unmaps.

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
from xenpci.pci.address import SBDF
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
            return -int(getattr(errno, e.errno, errno.EINVAL))
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
