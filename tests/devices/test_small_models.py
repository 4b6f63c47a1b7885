"""The legacy UART, the GPU copy engine and the sub-page BAR device."""

from __future__ import annotations

import pytest

from tests.devices.conftest import enable
from xenpci.devices import catalog
from xenpci.devices.dma import DmaWindow, MemoryDmaPort
from xenpci.devices.errors import MmioError
from xenpci.devices.gpu import (
    COPY_BAD_RANGE,
    COPY_DONE,
    COPY_FAULT,
    COPY_FROM_VRAM,
    COPY_TO_VRAM,
    GpuFunction,
)
from xenpci.devices.irq import Interrupt, IrqLog
from xenpci.devices.serial import (
    UART_IER,
    UART_IER_RDI,
    UART_IER_THRI,
    UART_IIR,
    UART_IIR_NO_INT,
    UART_IIR_RDI,
    UART_IIR_THRI,
    UART_LCR,
    UART_LSR,
    UART_LSR_DR,
    UART_MCR,
    UART_MCR_LOOP,
    UART_RX,
    UART_TX,
    SerialFunction,
)
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.capabilities import walk_capabilities

PAGE = 4096


def uart() -> tuple[SerialFunction, IrqLog]:
    log = IrqLog()
    fn = SerialFunction(SBDF(0, 1, 0, 0), raise_irq=log)
    enable(fn, mem=False, io=True, master=False)
    return fn, log


def test_legacy_device_has_io_bar_intx_and_no_capabilities() -> None:
    fn = catalog.make("legacy")[0]
    (bar,) = fn.bars
    assert (bar.kind, bar.size) == ("io", 8)
    assert fn.config_read(regs.PCI_INTERRUPT_PIN, 1) == 1
    assert not fn.config_read(regs.PCI_STATUS, 2) & regs.PCI_STATUS_CAP_LIST
    assert walk_capabilities(fn.config) == []


def test_uart_transmits_and_io_decode_gates_it() -> None:
    fn, _log = uart()
    for b in b"hi":
        fn.io_write(0, UART_TX, 1, b)
    assert bytes(fn.uart.output) == b"hi"
    fn.config_write(regs.PCI_COMMAND, 2, 0)
    fn.io_write(0, UART_TX, 1, ord("!"))
    assert bytes(fn.uart.output) == b"hi"
    assert fn.io_read(0, UART_LSR, 1) == 0xFF


def test_uart_receive_interrupt_is_level_triggered_intx() -> None:
    fn, log = uart()
    fn.io_write(0, UART_IER, 1, UART_IER_RDI)
    assert log.events == []
    fn.uart.feed(b"ab")
    assert log.events == [Interrupt("intx", 1, asserted=True)]
    assert fn.io_read(0, UART_IIR, 1) & 0x0F == UART_IIR_RDI
    assert fn.io_read(0, UART_LSR, 1) & UART_LSR_DR
    assert fn.io_read(0, UART_RX, 1) == ord("a")
    assert fn.io_read(0, UART_RX, 1) == ord("b")
    assert log.events[-1] == Interrupt("intx", 1, asserted=False)
    assert fn.io_read(0, UART_IIR, 1) & 0x0F == UART_IIR_NO_INT
    assert not fn.config_read(regs.PCI_STATUS, 2) & regs.PCI_STATUS_INTERRUPT


def test_uart_thre_interrupt_acknowledged_by_iir_read() -> None:
    fn, log = uart()
    fn.io_write(0, UART_IER, 1, UART_IER_THRI)
    assert log.events[-1].asserted
    assert fn.io_read(0, UART_IIR, 1) & 0x0F == UART_IIR_THRI
    assert not log.events[-1].asserted


def test_uart_loopback_and_divisor_latch() -> None:
    fn, _log = uart()
    fn.io_write(0, UART_MCR, 1, UART_MCR_LOOP)
    fn.io_write(0, UART_TX, 1, 0x42)
    assert fn.io_read(0, UART_RX, 1) == 0x42
    fn.io_write(0, UART_LCR, 1, 0x80)
    fn.io_write(0, UART_TX, 1, 0x01)  # DLL while DLAB is set
    assert fn.uart.dll == 1 and fn.io_read(0, UART_RX, 1) == 0x01
    with pytest.raises(MmioError):
        fn.io_read(0, UART_RX, 2)


def test_gpu_copy_engine_round_trip_through_dma() -> None:
    mem, log = MemoryDmaPort(), IrqLog()
    gpu = GpuFunction(SBDF(0, 6, 0, 0), dma=mem, raise_irq=log)
    enable(gpu)
    data = bytes((i * 5) & 0xFF for i in range(3 * PAGE + 17))
    mem.write(0x10000, data)

    def copy(direction: int, sys_addr: int, vram: int, n: int) -> int:
        gpu.mmio_write(0, 0x10, 8, sys_addr)
        gpu.mmio_write(0, 0x18, 4, vram)
        gpu.mmio_write(0, 0x1C, 4, n)
        gpu.mmio_write(0, 0x20, 4, direction)
        return gpu.mmio_read(0, 0x24, 4)

    assert copy(COPY_TO_VRAM, 0x10000, 128 << 20, len(data)) == COPY_DONE
    assert gpu.mmio_read(2, 128 << 20, 8) == int.from_bytes(data[:8], "little")
    assert len(gpu.vram.pages) == 4  # only the touched pages exist
    assert copy(COPY_FROM_VRAM, 0x80000, 128 << 20, len(data)) == COPY_DONE
    assert mem.read(0x80000, len(data)) == data
    assert copy(COPY_TO_VRAM, 0x10000, (256 << 20) - 4, 8) == COPY_BAD_RANGE
    assert gpu.mmio_read(0, 0x20, 4) == 0  # the command register self-clears
    assert log.events and log.events[0].kind == "intx"


def test_gpu_copy_fault_is_a_status_not_an_exception() -> None:
    mem = MemoryDmaPort((DmaWindow(0x10000, PAGE),))
    gpu = GpuFunction(SBDF(0, 6, 0, 0), dma=mem)
    enable(gpu)
    gpu.mmio_write(0, 0x10, 8, 0x10000)
    gpu.mmio_write(0, 0x1C, 4, 2 * PAGE)  # runs past the mapping
    gpu.mmio_write(0, 0x20, 4, COPY_TO_VRAM)
    assert gpu.mmio_read(0, 0x24, 4) == COPY_FAULT
    assert gpu.vram.pages == {}  # nothing half-copied


def test_gpu_rom_is_read_only() -> None:
    gpu = catalog.make("gpu")[0]
    gpu.assign_bar(6, 0xFE00_0000)
    gpu.config_write(regs.PCI_ROM_ADDRESS, 4, 0xFE00_0001)
    enable(gpu, master=False)
    with pytest.raises(MmioError):
        gpu.mmio_write(6, 0, 4, 0)


def test_subpage_bars_are_smaller_than_a_page_and_bounded() -> None:
    fn = catalog.make("subpage")[0]
    sizes = {b.index: b.size for b in fn.bars}
    assert sizes == {0: 256, 1: 128, 2: 16}
    assert all(s is not None and s < PAGE for s in sizes.values())
    enable(fn, io=True)
    fn.mmio_write(1, 124, 4, 0xCAFEF00D)
    assert fn.mmio_read(1, 124, 4) == 0xCAFEF00D
    assert fn.mmio_read(0, 124, 4) == 0  # banks are separate
    fn.io_write(2, 12, 4, 7)
    assert fn.io_read(2, 12, 4) == 7
    with pytest.raises(MmioError):
        fn.mmio_read(1, 128, 4)  # one past the end of a 128-byte BAR
    with pytest.raises(MmioError):
        fn.mmio_read(5, 0, 4)  # no such BAR
