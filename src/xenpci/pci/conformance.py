"""A conformance check every device source must pass (dump, sysfs, model).

Shipped with the code, like ``trio.testing``'s stream checks, so
``xenpci.devices`` runs the same suite on its models. It checks the bus
contract of :class:`~xenpci.pci.function.PciFunction`, not any one device:
access widths agree, out-of-range accesses fail precisely, BARs are
consistent and size by the all-ones protocol to what the source claims
(leaving config unchanged), and every advertised reset restores config.
Failures raise :class:`ConformanceError` naming the function and the rule.
"""

from __future__ import annotations

from typing import NoReturn

from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.bar import size_bar_by_probe
from xenpci.pci.errors import ConfigError, PciError
from xenpci.pci.function import PciFunction

#: Names Linux uses in ``reset_method`` (drivers/pci/pci.c ``pci_reset_fn_methods``).
RESET_METHOD_NAMES = frozenset({"device_specific", "acpi", "flr", "af_flr", "pm", "bus", "cxl_bus"})


class ConformanceError(PciError, AssertionError):
    """A device source broke the PciFunction contract."""

    def __init__(self, fn: PciFunction, rule: str) -> None:
        self.function = fn
        self.rule = rule
        super().__init__(f"{fn.sbdf} ({fn.source}): {rule}")


def check_pci_function(fn: PciFunction) -> None:
    """Run every rule on ``fn``; raises :class:`ConformanceError` at the first failure.

    Writes config (BAR sizing, COMMAND) through the bus accessors and puts
    every value back; a passive source is left exactly as it was.
    """

    def fail(rule: str) -> NoReturn:
        raise ConformanceError(fn, rule)

    cs = fn.config
    if not isinstance(fn.sbdf, SBDF):
        fail("sbdf is not an SBDF")
    if not fn.source or ":" not in fn.source:
        fail(f"source {fn.source!r} is not 'scheme:detail'")
    if cs.size not in (regs.PCI_CFG_SPACE_SIZE, regs.PCI_CFG_SPACE_EXP_SIZE):
        fail(f"config size {cs.size}")
    if not 0 <= cs.known_size <= cs.size:
        fail(f"known_size {cs.known_size} outside 0..{cs.size}")
    for off in range(0, cs.known_size - 3, 4):
        dword = fn.config_read(off, 4)
        by_bytes = sum(fn.config_read(off + i, 1) << (8 * i) for i in range(4))
        by_words = fn.config_read(off, 2) | (fn.config_read(off + 2, 2) << 16)
        if not dword == by_bytes == by_words:
            fail(f"read widths disagree at 0x{off:x}")
    for off, size in ((cs.size, 1), (cs.size - 2, 4), (0, 3)):
        try:
            fn.config_read(off, size)
        except ConfigError:
            pass
        else:
            fail(f"read at 0x{off:x} size {size} did not raise ConfigError")
    if cs.known_size >= regs.PCI_STD_HEADER_SIZEOF:
        vendor = fn.config_read(regs.PCI_VENDOR_ID, 2)
        if vendor in (0x0000, 0xFFFF):
            fail(f"vendor ID 0x{vendor:04x} means no function")
    problem = _bar_problem(fn)
    if problem:
        fail(problem)
    methods = fn.reset_methods()
    unknown = set(methods) - RESET_METHOD_NAMES
    if unknown:
        fail(f"unknown reset methods {sorted(unknown)}")
    for method in methods:
        before = cs.raw()
        if cs.wmask(regs.PCI_COMMAND, 2):
            fn.config_write(regs.PCI_COMMAND, 2, cs.wmask(regs.PCI_COMMAND, 2))
        fn.reset(method)
        if cs.raw() != before:
            fail(f"reset {method!r} did not restore config")


def _bar_problem(fn: PciFunction) -> str | None:
    used: set[int] = set()
    for bar in fn.bars:
        span = {bar.index, bar.index + 1} if bar.kind == "mem64" else {bar.index}
        if span & used:
            return f"BAR {bar.index} overlaps another BAR's registers"
        used |= span
        if bar.size is None:
            continue
        before = fn.config.raw()
        htype = fn.config.header_type
        probed = size_bar_by_probe(fn.config_read, fn.config_write, bar.index, header_type=htype)
        if probed != bar.size:
            return f"BAR {bar.index} sizes to {probed} by probing, source says {bar.size}"
        if fn.config.raw() != before:
            return f"sizing BAR {bar.index} left config changed"
    return None
