"""Interrupts a device raises: INTx, MSI and MSI-X messages as values.

A device never calls the hypervisor itself; it calls a ``RaiseIrq`` callback
with an ``Interrupt``. The platform wires that callback to
``Hypervisor.raise_pirq`` (in Xen the MSI address/data were programmed by Xen
through ``PHYSDEVOP_map_pirq``, so the message identifies the pirq). Keeping
the callback makes the models usable, and testable, without a hypervisor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

IrqKind = Literal["intx", "msi", "msix"]


@dataclass(frozen=True, slots=True)
class Interrupt:
    """One interrupt event.

    ``vector`` is the MSI-X table entry, the MSI vector number (0..31) or the
    INTx pin (1=INTA..4=INTD). ``asserted`` matters only for level-triggered
    INTx (False = deassert).
    """

    kind: IrqKind
    vector: int
    address: int = 0
    data: int = 0
    asserted: bool = True

    def __post_init__(self) -> None:
        if self.kind == "intx" and not 1 <= self.vector <= 4:
            raise ValueError(f"INTx pin must be 1..4, got {self.vector}")
        if self.kind == "msi" and not 0 <= self.vector < 32:
            raise ValueError(f"MSI vector must be 0..31, got {self.vector}")
        if self.kind == "msix" and not 0 <= self.vector < 2048:
            raise ValueError(f"MSI-X entry must be 0..2047, got {self.vector}")
        if not 0 <= self.address < 1 << 64 or not 0 <= self.data < 1 << 32:
            raise ValueError("MSI address must fit 64 bits and data 32 bits")


RaiseIrq = Callable[[Interrupt], None]


class IrqLog:
    """A ``RaiseIrq`` that records what was raised (for tests and traces)."""

    def __init__(self) -> None:
        self.events: list[Interrupt] = []

    def __call__(self, irq: Interrupt) -> None:
        self.events.append(irq)

    def clear(self) -> None:
        self.events.clear()
