"""One PCI function as the bus sees it: address, config space, BARs, reset.

Models the parts of Linux's ``struct pci_dev`` that passthrough needs
(``devfn``/``bus``, ``resource[]``, ``reset_methods``, ``driver``, the IOMMU
group) and the config accessors ``pci_read_config_*``/``pci_write_config_*``.
Every device source (lspci dump, sysfs, device model) provides this one
interface; models subclass it and override :meth:`PciFunction.config_write`
(calling ``super()``) or :meth:`PciFunction.on_reset` for side effects.

Differences: a passive source (dump, sysfs) is a register file with the
standard write masks and nothing behind it; it never touches the host. Reset
restores the config space captured at construction; which methods exist is
what sysfs said, else what the capabilities advertise (FLR in the Express or
AF capability, PM soft reset), as Linux's ``pci_init_reset_methods`` probes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.bar import Bar, decode_bars
from xenpci.pci.capabilities import (
    Capability,
    find_capability,
    walk_capabilities,
    walk_extended_capabilities,
)
from xenpci.pci.config import ConfigSpace
from xenpci.pci.errors import BarError, ResetError


class PciFunction:
    """A PCI function: the one interface every device source provides."""

    def __init__(
        self,
        sbdf: SBDF,
        config: ConfigSpace,
        *,
        source: str,
        bar_sizes: Mapping[int, int] | None = None,
        iommu_group: int | None = None,
        driver: str | None = None,
        reset_methods: Iterable[str] | None = None,
        notes: Iterable[str] = (),
    ) -> None:
        self.sbdf = sbdf
        self.config = config
        self.source = source
        self.iommu_group = iommu_group
        self.driver = driver
        self.notes: list[str] = list(notes)
        self._bar_sizes: dict[int, int] = {k: v for k, v in (bar_sizes or {}).items() if v}
        self._reset_methods = None if reset_methods is None else list(reset_methods)
        try:
            decode_bars(config, self._bar_sizes)
            self._bars_ok = True
        except BarError as e:
            self._bars_ok = False
            self.notes.append(f"BARs not decoded: {e}")
        self._defaults = config.snapshot()

    # --- bus accesses -----------------------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        """A config read cycle (``pci_read_config_*``)."""
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A config write cycle; models override to add side effects."""
        self.config.write(offset, size, value)

    # --- decoded views ------------------------------------------------------------
    @property
    def bars(self) -> tuple[Bar, ...]:
        """BARs decoded from the current config (sizes as the source gave them)."""
        if not self._bars_ok:
            return ()
        try:
            return decode_bars(self.config, self._bar_sizes)
        except BarError:
            return ()

    @property
    def bar_sizes(self) -> dict[int, int]:
        """Known BAR sizes by index (6 = ROM); missing means unknown."""
        return dict(self._bar_sizes)

    @property
    def capabilities(self) -> list[Capability]:
        """Standard then extended capabilities (walks stop at broken lists)."""
        return walk_capabilities(self.config) + walk_extended_capabilities(self.config)

    @property
    def vendor_id(self) -> int:
        return self.config.vendor_id

    @property
    def device_id(self) -> int:
        return self.config.device_id

    @property
    def class_code(self) -> int:
        return self.config.class_code

    # --- reset ---------------------------------------------------------------------
    def reset_methods(self) -> list[str]:
        """Reset methods in Linux's order and sysfs names (``flr``, ``af_flr``, ``pm``, ``bus``)."""
        if self._reset_methods is not None:
            return list(self._reset_methods)
        methods: list[str] = []
        cs = self.config
        exp = find_capability(cs, regs.PCI_CAP_ID_EXP)
        if (
            exp is not None
            and exp + regs.PCI_EXP_DEVCAP + 4 <= cs.known_size
            and cs.read(exp + regs.PCI_EXP_DEVCAP, 4) & regs.PCI_EXP_DEVCAP_FLR
        ):
            methods.append("flr")
        af = find_capability(cs, regs.PCI_CAP_ID_AF)
        if (
            af is not None
            and af + regs.PCI_AF_CAP < cs.known_size
            and cs.read(af + regs.PCI_AF_CAP, 1) & regs.PCI_AF_CAP_TP
            and cs.read(af + regs.PCI_AF_CAP, 1) & regs.PCI_AF_CAP_FLR
        ):
            methods.append("af_flr")
        pm = find_capability(cs, regs.PCI_CAP_ID_PM)
        if (
            pm is not None
            and pm + regs.PCI_PM_CTRL + 2 <= cs.known_size
            and not cs.read(pm + regs.PCI_PM_CTRL, 2) & regs.PCI_PM_CTRL_NO_SOFT_RESET
        ):
            methods.append("pm")
        return methods

    def reset(self, method: str) -> None:
        """Reset with ``method``: config returns to its state at construction."""
        supported = self.reset_methods()
        if method not in supported:
            raise ResetError(method, supported)
        self.config.restore(self._defaults)
        self.on_reset(method)

    def on_reset(self, method: str) -> None:
        """Hook for models: reset internal (non-config) state. Passive: nothing."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.sbdf} {self.vendor_id:04x}:{self.device_id:04x} "
            f"source={self.source!r})"
        )
