"""A legacy 16550A UART behind an I/O BAR, interrupting on INTx only.

Mirrors QEMU's ``pci-serial`` (``hw/char/serial-pci.c``, IDs 1b36:0002,
class 07:00:02 "16550-compatible serial controller"): BAR0 is an 8-byte I/O
BAR holding the 16550 registers (National Semiconductor PC16550D data sheet):
RBR/THR and IER (or the divisor latch DLL/DLM when LCR.DLAB is set), IIR/FCR,
LCR, MCR, LSR, MSR, SCR. No capabilities, so no MSI: INTx pin A.

Differences: transmission is instantaneous (THR is always empty again when
the write returns), bytes written go to ``output`` (or back into the receive
FIFO when MCR.LOOP is set), ``feed`` injects received bytes, FIFOs are
unbounded queues, and MCR.OUT2 does not gate the interrupt (it only does on
PC motherboards, not on the PCI function).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from xenpci.devices.base import DeviceModel, Region
from xenpci.devices.builder import ConfigBuilder
from xenpci.devices.dma import DmaPort
from xenpci.devices.errors import MmioError
from xenpci.devices.irq import RaiseIrq
from xenpci.pci.address import SBDF

UART_RX = 0  # in: receive buffer (DLAB=0)
UART_TX = 0  # out: transmit holding (DLAB=0)
UART_DLL = 0  # divisor latch low (DLAB=1)
UART_IER = 1
UART_DLM = 1
UART_IIR = 2  # in
UART_FCR = 2  # out
UART_LCR = 3
UART_MCR = 4
UART_LSR = 5
UART_MSR = 6
UART_SCR = 7

UART_IER_RDI = 0x01
UART_IER_THRI = 0x02
UART_IIR_NO_INT = 0x01
UART_IIR_THRI = 0x02
UART_IIR_RDI = 0x04
UART_IIR_FIFO = 0xC0  # FIFOs enabled
UART_LCR_DLAB = 0x80
UART_MCR_LOOP = 0x10
UART_LSR_DR = 0x01
UART_LSR_THRE = 0x20
UART_LSR_TEMT = 0x40
UART_FCR_ENABLE_FIFO = 0x01
UART_FCR_CLEAR_RCVR = 0x02


class Uart16550:
    """The register block (byte-wide accesses only, as on the real part)."""

    def __init__(self, on_level: Callable[[bool], None] | None = None) -> None:
        self.output = bytearray()
        self.on_level = on_level
        self.reset()

    def reset(self) -> None:
        self.rx: deque[int] = deque()
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.fcr = 0
        self.scr = 0
        self.dll = 0x0C  # 9600 baud from the 1.8432 MHz clock
        self.dlm = 0
        self.thr_ipending = False
        self.irq_level = False

    def _update(self) -> None:
        """Recompute the interrupt line (IIR says whether anything is pending)."""
        level = not self.iir() & UART_IIR_NO_INT
        if level != self.irq_level:
            self.irq_level = level
            if self.on_level is not None:
                self.on_level(level)

    def feed(self, data: bytes) -> None:
        """Bytes arriving on the wire."""
        self.rx.extend(data)
        self._update()

    def iir(self) -> int:
        fifo = UART_IIR_FIFO if self.fcr & UART_FCR_ENABLE_FIFO else 0
        if self.ier & UART_IER_RDI and self.rx:
            return UART_IIR_RDI | fifo
        if self.ier & UART_IER_THRI and self.thr_ipending:
            return UART_IIR_THRI | fifo
        return UART_IIR_NO_INT | fifo

    def read(self, offset: int, size: int) -> int:
        if size != 1:
            raise MmioError("uart16550", offset, size, "the 16550 has byte-wide registers")
        dlab = self.lcr & UART_LCR_DLAB
        if offset == UART_RX:
            if dlab:
                return self.dll
            value = self.rx.popleft() if self.rx else 0
            self._update()
            return value
        if offset == UART_IER:
            return self.dlm if dlab else self.ier
        if offset == UART_IIR:
            value = self.iir()
            if value & 0x0F == UART_IIR_THRI:
                self.thr_ipending = False  # reading IIR acknowledges THRE (data sheet)
                self._update()
            return value
        if offset == UART_LCR:
            return self.lcr
        if offset == UART_MCR:
            return self.mcr
        if offset == UART_LSR:
            return UART_LSR_THRE | UART_LSR_TEMT | (UART_LSR_DR if self.rx else 0)
        if offset == UART_MSR:
            return 0xB0  # CTS, DSR and DCD asserted: a cable is always attached
        return self.scr

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1:
            raise MmioError("uart16550", offset, size, "the 16550 has byte-wide registers")
        dlab = self.lcr & UART_LCR_DLAB
        if offset == UART_TX:
            if dlab:
                self.dll = value
                return
            if self.mcr & UART_MCR_LOOP:
                self.rx.append(value)
            else:
                self.output.append(value)
            self.thr_ipending = True  # sent at once: THR empty again
        elif offset == UART_IER:
            if dlab:
                self.dlm = value
                return
            if value & UART_IER_THRI and not self.ier & UART_IER_THRI:
                self.thr_ipending = True  # enabling THRI with THR empty interrupts at once
            self.ier = value & 0x0F
        elif offset == UART_FCR:
            self.fcr = value & 0xC9
            if value & UART_FCR_CLEAR_RCVR:
                self.rx.clear()
        elif offset == UART_LCR:
            self.lcr = value
        elif offset == UART_MCR:
            self.mcr = value & 0x1F
        elif offset == UART_SCR:
            self.scr = value
        self._update()


class SerialFunction(DeviceModel):
    """16550A on conventional PCI: I/O BAR0 (8 bytes), INTx pin A, no capabilities."""

    model_name = "legacy"

    def __init__(
        self,
        sbdf: SBDF,
        *,
        dma: DmaPort | None = None,
        raise_irq: RaiseIrq | None = None,
    ) -> None:
        b = ConfigBuilder(
            0x1B36, 0x0002, 0x070002, revision=1, subsystem=(0x1AF4, 0x1100), interrupt_pin=1
        )
        b.bar(0, "io", 8)
        super().__init__(sbdf, b.build(), dma=dma, raise_irq=raise_irq)
        self.uart = Uart16550(self.set_intx)
        self.add_region(0, Region("uart16550", 0, 8, self.uart.read, self.uart.write))

    def reset_device(self) -> None:
        self.uart.reset()
