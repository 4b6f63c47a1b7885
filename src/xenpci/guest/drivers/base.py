"""What every guest PCI driver does at probe and remove: the Linux PCI driver API.

Models the calls a Linux driver's ``probe`` makes on a passed-through device
in a PV guest: ``pci_enable_device`` and ``pci_set_master`` (COMMAND writes
that travel through pcifront to pciback), ``pci_iomap`` (the BAR's machine
frames mapped straight into the guest with ``Hypercalls.mmio_map``, which
the hypervisor allows only for frames the toolstack granted),
``inb``/``outb`` (port IO, allowed only for granted ports),
``dma_alloc_coherent`` (guest pages, addressed by the bus address
``xen_phys_to_bus`` gives) and ``pci_alloc_irq_vectors(PCI_IRQ_MSIX)``
(pcifront's ``enable_msix``: each vector becomes a pirq bound to an event
channel). Only the control-plane steps (config writes, MSI-X enable) go
through dom0; everything after probe is direct.

Deliberate differences: the driver runs on the caller's thread and waits
for its interrupts (which arrive on the guest vCPU) with a condition
variable instead of sleeping in the kernel; DMA buffers are whole pages.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import ClassVar

from xenpci.errors import XenpciError
from xenpci.guest.kernel import GuestKernel
from xenpci.guest.pci_core import GuestPciDevice
from xenpci.hv import PAGE_SHIFT, PAGE_SIZE, Hypercalls, MmioMapping
from xenpci.hv.scheduler import wait_for
from xenpci.pci import regs
from xenpci.pci.bar import Bar
from xenpci.pcifront.xenbus import Pcifront

DEFAULT_IRQ_TIMEOUT = 5.0


class DriverError(XenpciError):
    """Base of the guest drivers' errors."""


class DeviceNotFound(DriverError):
    """No device with the driver's IDs on the guest's PCI buses."""

    def __init__(self, domid: int, vendor: int, device: int) -> None:
        self.domid = domid
        self.vendor = vendor
        self.device = device
        super().__init__(f"d{domid}: no PCI device {vendor:04x}:{device:04x}")


class IrqTimeout(DriverError):
    """An expected interrupt did not arrive (the device or its delivery is broken)."""

    def __init__(self, domid: int, vector: int, timeout: float) -> None:
        self.domid = domid
        self.vector = vector
        self.timeout = timeout
        super().__init__(f"d{domid}: no interrupt on vector {vector} within {timeout:g} s")


class DeviceFailed(DriverError):
    """The device reported an error (``status`` is the device's own code)."""

    def __init__(self, what: str, status: int) -> None:
        self.what = what
        self.status = status
        super().__init__(f"{what}: device status {status:#x}")


@dataclass(frozen=True, slots=True)
class DmaBuffer:
    """One guest page used for DMA: where the guest sees it and what the device is told."""

    gfn: int
    bus: int

    def __post_init__(self) -> None:
        if self.gfn < 0 or self.bus < 0 or self.bus % PAGE_SIZE:
            raise ValueError(f"bad DMA buffer gfn={self.gfn} bus={self.bus:#x}")

    @property
    def gpaddr(self) -> int:
        return self.gfn << PAGE_SHIFT


@dataclass
class _Irqs:
    """Per-vector interrupt counts, bumped by the event-channel handler on the vCPU."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    counts: dict[int, int] = field(default_factory=dict)


class PciDriver:
    """A driver bound to one guest PCI device (``struct pci_driver`` + its probe state)."""

    VENDOR: ClassVar[int] = 0
    DEVICE: ClassVar[int] = 0

    def __init__(self, kernel: GuestKernel, dev: GuestPciDevice | None = None) -> None:
        self.kernel = kernel
        self.dev = dev if dev is not None else self.find(kernel)
        self.hc: Hypercalls = kernel.domain.hypercalls
        self.domid = kernel.domid
        self.mappings: dict[int, BarMapping] = {}
        self.buffers: list[DmaBuffer] = []
        self.ports: dict[int, int] = {}  # MSI-X vector -> event-channel port
        self._vector_of_port: dict[int, int] = {}
        self._irqs = _Irqs()
        self._front: Pcifront | None = None

    # -- binding ------------------------------------------------------------------
    @classmethod
    def find(cls, kernel: GuestKernel) -> GuestPciDevice:
        """The first device with this driver's IDs (``pci_match_id``)."""
        for dev in kernel.pci.devices():
            if (dev.vendor, dev.device) == (cls.VENDOR, cls.DEVICE):
                return dev
        raise DeviceNotFound(kernel.domid, cls.VENDOR, cls.DEVICE)

    def enable(self, *, memory: bool = True, io: bool = False, master: bool = True) -> None:
        """``pci_enable_device`` + ``pci_set_master``: COMMAND through pcifront."""
        cmd = self.dev.read_config_checked(regs.PCI_COMMAND, 2)
        want = cmd
        want |= regs.PCI_COMMAND_MEMORY if memory else 0
        want |= regs.PCI_COMMAND_IO if io else 0
        want |= regs.PCI_COMMAND_MASTER if master else 0
        self.dev.write_config_checked(regs.PCI_COMMAND, 2, want)

    def disable(self) -> None:
        """``pci_disable_device``: decode and bus mastering off."""
        cmd = self.dev.read_config_checked(regs.PCI_COMMAND, 2)
        off = regs.PCI_COMMAND_MEMORY | regs.PCI_COMMAND_IO | regs.PCI_COMMAND_MASTER
        self.dev.write_config_checked(regs.PCI_COMMAND, 2, cmd & ~off)

    def bar(self, index: int) -> Bar:
        for b in self.dev.bars:
            if b.index == index:
                return b
        raise DriverError(f"{self.dev.sbdf}: no BAR{index}")

    def iomap(self, index: int) -> BarMapping:
        """``pci_iomap``: map a memory BAR's frames (the hypervisor checks the grant)."""
        if index in self.mappings:
            return self.mappings[index]
        b = self.bar(index)
        if b.is_io or not b.size:
            raise DriverError(f"{self.dev.sbdf}: BAR{index} is not a sized memory BAR")
        first = b.address >> PAGE_SHIFT
        last = (b.address + b.size - 1) >> PAGE_SHIFT
        mapping = BarMapping(self.hc.mmio_map(first, last - first + 1), b.address & (PAGE_SIZE - 1))
        self.mappings[index] = mapping
        return mapping

    # -- DMA --------------------------------------------------------------------------
    def alloc_dma(self) -> DmaBuffer:
        """``dma_alloc_coherent`` of one zeroed page."""
        gfn = self.hc.alloc_page()
        self.hc.write(gfn << PAGE_SHIFT, bytes(PAGE_SIZE))
        buf = DmaBuffer(gfn, self.hc.bus_address(gfn << PAGE_SHIFT))
        self.buffers.append(buf)
        return buf

    # -- interrupts ---------------------------------------------------------------------
    def _pcifront(self) -> Pcifront:
        front = self.kernel.pcifront
        if front is None:
            raise DriverError(f"d{self.domid}: pcifront is not connected")
        return front

    def enable_msix(self, vectors: list[int]) -> dict[int, int]:
        """``pci_alloc_irq_vectors(PCI_IRQ_MSIX)``: vector -> guest event-channel port."""
        front = self._pcifront()
        ports = front.enable_msix(self.dev, vectors, self._on_event)
        self._front = front
        for vector, port in zip(vectors, ports, strict=True):
            self.ports[vector] = port
            self._vector_of_port[port] = vector
        return dict(self.ports)

    def _on_event(self, port: int) -> None:
        # Runs on the guest's vCPU: the interrupt arrived as an event.
        vector = self._vector_of_port.get(port, -1)
        with self._irqs.cond:
            self._irqs.counts[vector] = self._irqs.counts.get(vector, 0) + 1
            self._irqs.cond.notify_all()

    def irq_count(self, vector: int) -> int:
        with self._irqs.cond:
            return self._irqs.counts.get(vector, 0)

    def wait_irq(self, vector: int, after: int, timeout: float = DEFAULT_IRQ_TIMEOUT) -> int:
        """Wait until ``vector`` has fired more than ``after`` times; return the count."""
        with self._irqs.cond:
            if not wait_for(
                self._irqs.cond,
                lambda: self._irqs.counts.get(vector, 0) > after,
                timeout,
                self.kernel.executor,
            ):
                raise IrqTimeout(self.domid, vector, timeout)
            return self._irqs.counts[vector]

    # -- teardown -----------------------------------------------------------------------
    def remove(self) -> None:
        """The driver's ``remove``: interrupts off, unmap, decode off, pages back."""
        front = self._front
        if front is not None and self.ports:
            with contextlib.suppress(XenpciError):
                front.disable_msix(self.dev)
            for port in self.ports.values():
                with contextlib.suppress(XenpciError):
                    self.hc.evtchn_close(port)
        self.ports.clear()
        self._vector_of_port.clear()
        for mapping in self.mappings.values():
            mapping.unmap()
        self.mappings.clear()
        with contextlib.suppress(XenpciError):
            self.disable()
        for buf in self.buffers:
            with contextlib.suppress(XenpciError):
                self.hc.free_page(buf.gfn)
        self.buffers.clear()


class BarMapping:
    """A mapped BAR: offsets are BAR-relative (a BAR need not start on a page)."""

    __slots__ = ("base", "mapping")

    def __init__(self, mapping: MmioMapping, base: int) -> None:
        self.mapping = mapping
        self.base = base

    def read(self, offset: int, size: int) -> int:
        return self.mapping.read(self.base + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.mapping.write(self.base + offset, size, value)

    def unmap(self) -> None:
        self.mapping.unmap()
