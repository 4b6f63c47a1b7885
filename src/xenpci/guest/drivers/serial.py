"""The guest driver for the catalog's legacy 16550 UART: port IO only.

Models the parts of Linux ``drivers/tty/serial/8250`` a PCI serial card's
probe and a loopback self-test use (``serial8250_do_startup``'s MCR.LOOP
check): ``pci_enable_device`` for I/O decode, then ``inb``/``outb`` on the
I/O BAR. Every access is a port-IO instruction that the hypervisor checks
against the ports the toolstack granted; none goes through dom0.
Deliberate difference: no tty layer; ``loopback`` is the whole workload.
"""

from __future__ import annotations

from typing import ClassVar

from xenpci.devices import serial as hw
from xenpci.guest.drivers.base import DeviceFailed, DriverError, PciDriver
from xenpci.guest.kernel import GuestKernel
from xenpci.guest.pci_core import GuestPciDevice

SERIAL_VENDOR = 0x1B36
SERIAL_DEVICE = 0x0002


class SerialDriver(PciDriver):
    """A 16550 on an I/O BAR, driven with ``inb``/``outb``."""

    VENDOR: ClassVar[int] = SERIAL_VENDOR
    DEVICE: ClassVar[int] = SERIAL_DEVICE

    def __init__(self, kernel: GuestKernel, dev: GuestPciDevice | None = None) -> None:
        super().__init__(kernel, dev)
        self.base: int | None = None

    def probe(self) -> None:
        bar = self.bar(0)
        if not bar.is_io:
            raise DriverError(f"{self.dev.sbdf}: BAR0 is not an I/O BAR")
        self.enable(memory=False, io=True, master=False)
        self.base = bar.address
        self.outb(hw.UART_LCR, 0x03)  # 8N1, DLAB clear
        self.outb(hw.UART_FCR, hw.UART_FCR_ENABLE_FIFO | hw.UART_FCR_CLEAR_RCVR)

    def _port(self, reg: int) -> int:
        if self.base is None:
            raise DriverError(f"d{self.domid}: UART not probed")
        return self.base + reg

    def outb(self, reg: int, value: int) -> None:
        self.hc.ioport_write(self._port(reg), 1, value)

    def inb(self, reg: int) -> int:
        return self.hc.ioport_read(self._port(reg), 1)

    def loopback(self, data: bytes) -> bytes:
        """Send ``data`` with MCR.LOOP set and read it back from the receive FIFO."""
        self.outb(hw.UART_MCR, hw.UART_MCR_LOOP)
        out = bytearray()
        for byte in data:
            if not self.inb(hw.UART_LSR) & hw.UART_LSR_THRE:
                raise DeviceFailed(f"d{self.domid} UART transmitter busy", self.inb(hw.UART_LSR))
            self.outb(hw.UART_TX, byte)
            if not self.inb(hw.UART_LSR) & hw.UART_LSR_DR:
                raise DeviceFailed(f"d{self.domid} UART lost byte {byte:#x}", 0)
            out.append(self.inb(hw.UART_RX))
        self.outb(hw.UART_MCR, 0)
        return bytes(out)

    def remove(self) -> None:
        self.base = None
        super().remove()
