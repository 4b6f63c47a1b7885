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
``resources`` is dom0's record of the BARs (sysfs ``resource``, a dump's
``Region`` lines) when the source gives one, else what the registers decode
to; ``irq`` is ``dev->irq`` when the source says (sysfs ``irq``, ``routed to
IRQ N``), else ``None``. A BAR size that cannot be right is dropped with a
note (:func:`~xenpci.pci.bar.plausible_sizes`), never an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.bar import (
    ROM_INDEX,
    Bar,
    Resource,
    bar_resource,
    decode_bars,
    legacy_ide_resources,
    plausible_sizes,
)
from xenpci.pci.capabilities import (
    Capability,
    find_capability,
    walk_capabilities,
    walk_extended_capabilities,
)
from xenpci.pci.config import ConfigSpace, apply_standard_masks
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
        resources: Mapping[int, Resource] | None = None,
        irq: int | None = None,
    ) -> None:
        self.sbdf = sbdf
        self.config = config
        self.source = source
        self.iommu_group = iommu_group
        self.driver = driver
        self.irq = irq
        self.notes: list[str] = list(notes)
        self._resources = None if resources is None else dict(resources)
        self._reset_methods = None if reset_methods is None else list(reset_methods)
        self._set_sizes(bar_sizes or {})
        self._defaults = config.snapshot()

    def _set_sizes(self, sizes: Mapping[int, int]) -> None:
        kept, notes = plausible_sizes(self.config, sizes)
        self.notes.extend(n for n in notes if n not in self.notes)
        self._bar_sizes: dict[int, int] = kept
        try:
            decode_bars(self.config, kept)
            self._bars_ok = True
        except BarError as e:
            self._bars_ok = False
            self.notes.append(f"BARs not decoded: {e}")

    def set_bar_sizes(self, sizes: Mapping[int, int]) -> None:
        """Give BAR sizes the source lacked (``--bar-size``): the user's word, not a guess.

        Only for passive sources before anyone used the function: the standard
        write masks are re-applied for the new sizes and become the reset
        defaults. A size that cannot fit its BAR raises :class:`BarError`.
        """
        merged = {**self._bar_sizes, **sizes}
        kept, _ = plausible_sizes(self.config, merged)
        for index, size in sizes.items():
            if kept.get(index) != size:
                decode_bars(self.config, {index: size})  # raises with the reason
                raise BarError(index, f"size {size} does not fit this BAR")
        if self.config.known_size >= regs.PCI_STD_HEADER_SIZEOF:
            apply_standard_masks(self.config, kept)
        self._set_sizes(kept)
        if self._resources is not None:
            for index, size in sizes.items():
                r = self._resources.get(index)
                if r is not None and r.size is None:
                    self._resources[index] = Resource(index, r.start, size, r.flags)
        self.notes = [n for n in self.notes if not n.startswith("size unknown for BAR")]
        self._defaults = self.config.snapshot()

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
    def resources(self) -> dict[int, Resource]:
        """dom0's ``dev->resource[0..6]`` by index; missing means no resource.

        From the source when it gave them (sysfs ``resource``, a dump's
        ``Region`` lines), else from the decoded BARs; legacy IDE ports as
        Linux's ``pci_setup_device`` sets them.
        """
        if self._resources is not None:
            out = dict(self._resources)
        else:
            out = {b.index: bar_resource(b) for b in self.bars}
        for index, r in legacy_ide_resources(self.config).items():
            out.setdefault(index, r)
        return {i: out[i] for i in sorted(out) if i <= ROM_INDEX}

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

    @property
    def reset_methods_listed(self) -> bool:
        """True when the source listed the methods (sysfs ``reset_method``)."""
        return self._reset_methods is not None

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
