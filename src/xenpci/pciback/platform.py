"""The hypervisor-backed :class:`InterruptPlatform`: MSI/MSI-X vectors as pirqs.

Models dom0's ``xen_initdom_setup_msi_irqs`` (``arch/x86/pci/xen.c``): for
each vector, ``PHYSDEVOP_map_pirq`` with the guest as owner; Xen's
``map_domain_pirq`` also grants the guest access to that irq, so the guest
can bind the pirq to an event channel. Teardown unmaps and revokes.

Interrupt source names are ``msi:SBDF:N`` / ``msix:SBDF:ENTRY`` (the
hypervisor's naming for message-signalled sources). A hypervisor refusal is
returned as the negative errno Linux would get, never raised into pciback.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

from xenpci.hv.errors import HvError
from xenpci.hv.hypercalls import Hypercalls
from xenpci.pci.address import SBDF
from xenpci.pciback.conf_space.dom0_pci import HostFunction


class HvInterruptPlatform:
    """``InterruptPlatform`` over dom0's hypercall handle."""

    def __init__(self, dom0: Hypercalls) -> None:
        self._hc = dom0
        self._mapped: dict[tuple[SBDF, str], list[tuple[int, int]]] = {}  # -> [(owner, pirq)]

    def mapped(self, dev: HostFunction, kind: str) -> list[int]:
        """The pirqs currently mapped for ``dev``'s MSI (``"msi"``) or MSI-X."""
        return [p for _, p in self._mapped.get((dev.sbdf, kind), [])]

    def _map(self, dev: HostFunction, kind: str, owner: int, ids: Sequence[int]) -> list[int] | int:
        done: list[tuple[int, int]] = []
        try:
            for i in ids:
                pirq = self._hc.map_pirq(owner, f"{kind}:{dev.sbdf}:{i}")
                done.append((owner, pirq))
                self._hc.irq_permission(owner, pirq, True)
        except HvError as e:
            self._unmap(done)
            return -getattr(errno, e.errno, errno.EINVAL)
        self._mapped[(dev.sbdf, kind)] = done
        return [p for _, p in done]

    def _unmap(self, entries: list[tuple[int, int]]) -> None:
        for owner, pirq in entries:
            try:
                self._hc.irq_permission(owner, pirq, False)
                self._hc.unmap_pirq(owner, pirq)
            except HvError:
                pass  # the guest may already be gone; teardown must not fail

    def enable_msi(self, dev: HostFunction, owner: int, nvec: int) -> list[int] | int:
        return self._map(dev, "msi", owner, range(nvec))

    def disable_msi(self, dev: HostFunction) -> None:
        self._unmap(self._mapped.pop((dev.sbdf, "msi"), []))

    def enable_msix(self, dev: HostFunction, owner: int, entries: Sequence[int]) -> list[int] | int:
        return self._map(dev, "msix", owner, entries)

    def disable_msix(self, dev: HostFunction) -> None:
        self._unmap(self._mapped.pop((dev.sbdf, "msix"), []))
