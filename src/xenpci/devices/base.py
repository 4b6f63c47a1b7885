"""A device model: a PCI function with live BARs, DMA, interrupts and reset.

Mirrors the split of QEMU's ``PCIDevice`` (``hw/pci/pci.c``): config space
with side effects on write (``pci_default_write_config``: decode enables,
MSI/MSI-X control, PCIe FLR in ``pcie_cap_flr_write_config``, PM state),
``MemoryRegion``-style BAR regions with read/write callbacks, DMA through the
bus master address space, and ``pci_set_irq``/``msi_notify``/``msix_notify``.

Behaviour taken from the specs:

* A BAR decodes only while COMMAND's Memory (or I/O) Space bit is set and the
  function is in D0; otherwise the access is a master abort: reads return all
  ones and writes are dropped (counted in ``master_aborts``). The ROM also
  needs its enable bit (PCI 3.0 §6.2.5.2).
* DMA needs Bus Master Enable (PCI 3.0 §6.2.2); without it the port refuses
  with a ``DmaFault``.
* FLR (PCIe Base §6.6.2) and D3hot->D0 with No_Soft_Reset clear (PCI PM 1.2
  §5.4) return config space and the device's internal state to defaults,
  which also clears Bus Master Enable.
* Interrupts go out as MSI-X if enabled, else MSI if enabled, else INTx on the
  declared pin unless Interrupt Disable is set (Status.Interrupt still shows
  the level).

Differences: writes happen synchronously (an FLR completes inside the config
write that started it), and the platform, not the device, maps BARs: it asks
``bar_handler(index)`` for an object with ``read(offset, size)`` and
``write(offset, size, value)`` and registers it at the BAR's address.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xenpci.devices.builder import BuiltConfig, MsixLayout
from xenpci.devices.dma import DmaPort
from xenpci.devices.errors import DmaFault, MmioError
from xenpci.devices.irq import Interrupt, RaiseIrq
from xenpci.devices.msix import MsixBlock
from xenpci.errors import XenpciError
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.bar import ROM_INDEX, bar_register_offset
from xenpci.pci.function import PciFunction

RegionRead = Callable[[int, int], int]
RegionWrite = Callable[[int, int, int], None]

PM_D0 = 0
PM_D3HOT = 3


@dataclass(frozen=True, slots=True)
class Region:
    """A window of a BAR served by one pair of callbacks (offsets are region-relative)."""

    name: str
    offset: int
    size: int
    read: RegionRead
    write: RegionWrite

    def __post_init__(self) -> None:
        if self.offset < 0 or self.size <= 0:
            raise ValueError(f"region {self.name}: bad offset/size")


class BarHandler:
    """What the platform registers at a BAR's address (``IoBus.register_mmio``)."""

    def __init__(self, model: DeviceModel, index: int) -> None:
        self.model = model
        self.index = index

    def read(self, offset: int, size: int) -> int:
        return self.model.mmio_read(self.index, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.model.mmio_write(self.index, offset, size, value)


class _BusMasterPort:
    """The DMA port as the device sees it: gated by Bus Master Enable and D0."""

    def __init__(self, model: DeviceModel) -> None:
        self.model = model

    def _port(self, addr: int, n: int, write: bool) -> DmaPort:
        m = self.model
        if m.dma_port is None:
            raise DmaFault(addr, n, write=write, reason="no DMA port attached")
        if not m.config.read(regs.PCI_COMMAND, 2) & regs.PCI_COMMAND_MASTER:
            raise DmaFault(addr, n, write=write, reason="Bus Master Enable is clear")
        if m.power_state != PM_D0:
            raise DmaFault(addr, n, write=write, reason="function is not in D0")
        return m.dma_port

    # Any refusal by the port (the hypervisor's IOMMU raises its own hv-layer
    # DmaFault) becomes this layer's DmaFault, so device engines handle one type.
    def read(self, bus_addr: int, n: int) -> bytes:
        port = self._port(bus_addr, n, False)
        try:
            return port.read(bus_addr, n)
        except DmaFault:
            raise
        except XenpciError as e:
            raise DmaFault(bus_addr, n, write=False, reason=str(e)) from e

    def write(self, bus_addr: int, data: bytes) -> None:
        port = self._port(bus_addr, len(data), True)
        try:
            port.write(bus_addr, data)
        except DmaFault:
            raise
        except XenpciError as e:
            raise DmaFault(bus_addr, len(data), write=True, reason=str(e)) from e


class DeviceModel(PciFunction):
    """Base of every catalog model (see module doc)."""

    model_name = "device"

    def __init__(
        self,
        sbdf: SBDF,
        built: BuiltConfig,
        *,
        dma: DmaPort | None = None,
        raise_irq: RaiseIrq | None = None,
        msix: MsixLayout | None = None,
    ) -> None:
        # Regions are added before PciFunction.__init__ runs, so keep our own copy.
        self._declared_sizes = dict(built.bar_sizes)
        self.dma_port = dma
        self.raise_irq = raise_irq
        self.dma: DmaPort = _BusMasterPort(self)
        self.caps = dict(built.caps)
        self.regions: dict[int, list[Region]] = {}
        self.master_aborts = 0
        self.resets: list[str] = []
        self.msix_layout = msix
        self.msix: MsixBlock | None = None
        if msix is not None:
            self.msix = MsixBlock(msix.nvec, self._emit)
            block = self.msix
            self.add_region(
                msix.table_bar,
                Region(
                    "msix-table",
                    msix.table_offset,
                    block.table_size,
                    block.read_table,
                    block.write_table,
                ),
            )
            self.add_region(
                msix.pba_bar,
                Region(
                    "msix-pba", msix.pba_offset, block.pba_size, block.read_pba, block.write_pba
                ),
            )
        super().__init__(
            sbdf,
            built.config,
            source=f"model:{self.model_name}",
            bar_sizes=built.bar_sizes,
        )

    # -- wiring ----------------------------------------------------------------
    def attach_dma(self, port: DmaPort | None) -> None:
        """Give the device its DMA port (the IOMMU's ``dma_port(sbdf)``)."""
        self.dma_port = port

    def connect_irq(self, raise_irq: RaiseIrq | None) -> None:
        self.raise_irq = raise_irq

    def add_region(self, bar: int, region: Region) -> None:
        size = self._declared_sizes.get(bar, 0)
        if region.offset + region.size > size:
            raise ValueError(f"region {region.name} does not fit BAR {bar} ({size:#x} bytes)")
        for other in self.regions.get(bar, []):
            if (
                region.offset < other.offset + other.size
                and other.offset < region.offset + region.size
            ):
                raise ValueError(f"region {region.name} overlaps {other.name}")
        self.regions.setdefault(bar, []).append(region)

    # -- state -----------------------------------------------------------------
    @property
    def command(self) -> int:
        return self.config.read(regs.PCI_COMMAND, 2)

    @property
    def power_state(self) -> int:
        pm = self.caps.get(regs.PCI_CAP_ID_PM)
        if pm is None:
            return PM_D0
        return self.config.read(pm + regs.PCI_PM_CTRL, 2) & regs.PCI_PM_CTRL_STATE_MASK

    def assign_bar(self, index: int, address: int) -> None:
        """Program BAR ``index`` (6 = ROM) with ``address`` by config writes, as firmware does.

        The BAR's read-only low bits (type, prefetch, ROM enable) are kept by
        the write masks; an address not aligned to the BAR size loses its low
        bits exactly as hardware drops them.
        """
        if index not in self.bar_sizes:
            raise MmioError(f"{self.sbdf} BAR {index}", 0, 0, "BAR not implemented")
        off = bar_register_offset(index, self.config.header_type)
        low = self.config.read(off, 4)
        if index == ROM_INDEX:
            keep = low & regs.PCI_ROM_ADDRESS_ENABLE
            self.config_write(off, 4, (address & regs.PCI_ROM_ADDRESS_MASK) | keep)
            return
        self.config_write(off, 4, address & 0xFFFFFFFF)
        if (
            not low & 1
            and low & regs.PCI_BASE_ADDRESS_MEM_TYPE_MASK == regs.PCI_BASE_ADDRESS_MEM_TYPE_64
        ):
            self.config_write(off + 4, 4, address >> 32)

    def bar_handler(self, index: int) -> BarHandler:
        """The MMIO/IO handler to register at BAR ``index`` (6 = ROM)."""
        if index not in self.bar_sizes:
            raise MmioError(f"{self.sbdf} BAR {index}", 0, 0, "BAR not implemented")
        return BarHandler(self, index)

    # -- data plane ----------------------------------------------------------------
    def _decodes(self, bar: int) -> bool:
        if self.power_state != PM_D0:
            return False
        cmd = self.command
        if bar == ROM_INDEX:
            rom = self.config.read(self._rom_offset(), 4)
            return bool(cmd & regs.PCI_COMMAND_MEMORY and rom & regs.PCI_ROM_ADDRESS_ENABLE)
        if self._is_io(bar):
            return bool(cmd & regs.PCI_COMMAND_IO)
        return bool(cmd & regs.PCI_COMMAND_MEMORY)

    def _rom_offset(self) -> int:
        if self.config.header_type == regs.PCI_HEADER_TYPE_BRIDGE:
            return regs.PCI_ROM_ADDRESS1
        return regs.PCI_ROM_ADDRESS

    def _is_io(self, bar: int) -> bool:
        if bar == ROM_INDEX:
            return False
        return bool(self.config.read(regs.PCI_BASE_ADDRESS_0 + 4 * bar, 4) & 1)

    def _locate(self, bar: int, offset: int, size: int) -> tuple[Region | None, int]:
        # The error's location is formatted only for an error: this runs per access.
        total = self.bar_sizes.get(bar)
        if total is None:
            raise MmioError(f"{self.sbdf} BAR {bar}", offset, size, "BAR not implemented")
        if size not in (1, 2, 4, 8) or offset < 0 or offset + size > total:
            raise MmioError(
                f"{self.sbdf} BAR {bar}", offset, size, f"outside the {total:#x}-byte BAR"
            )
        for region in self.regions.get(bar, ()):
            if region.offset <= offset < region.offset + region.size:
                if offset + size > region.offset + region.size:
                    raise MmioError(
                        f"{self.sbdf} BAR {bar}",
                        offset,
                        size,
                        f"access crosses the end of {region.name}",
                    )
                return region, offset - region.offset
        return None, 0

    def mmio_read(self, bar: int, offset: int, size: int) -> int:
        region, rel = self._locate(bar, offset, size)
        if not self._decodes(bar):
            self.master_aborts += 1
            return (1 << (8 * size)) - 1
        return 0 if region is None else region.read(rel, size)

    def mmio_write(self, bar: int, offset: int, size: int, value: int) -> None:
        region, rel = self._locate(bar, offset, size)
        if not self._decodes(bar):
            self.master_aborts += 1
            return
        if region is not None:
            region.write(rel, size, value & ((1 << (8 * size)) - 1))

    # Port IO uses the same path; the BAR type decides which COMMAND bit gates it.
    io_read = mmio_read
    io_write = mmio_write

    # -- interrupts --------------------------------------------------------------------
    def _emit(self, irq: Interrupt) -> None:
        if self.raise_irq is not None:
            self.raise_irq(irq)

    def signal(self, vector: int = 0) -> None:
        """The device has an event for ``vector``: MSI-X, else MSI, else INTx."""
        if self.msix is not None and self.msix.enabled:
            self.msix.notify(vector % self.msix.nvec)
            return
        msi = self.caps.get(regs.PCI_CAP_ID_MSI)
        if msi is not None and self.config.read(msi + regs.PCI_MSI_FLAGS, 2) & 1:
            self._msi_notify(msi, vector)
            return
        self.set_intx(True)

    def set_intx(self, level: bool) -> None:
        """Drive the INTx pin (level-triggered); no-op for a function without a pin."""
        pin = self.config.read(regs.PCI_INTERRUPT_PIN, 1)
        if not pin:
            return
        status = self.config.read(regs.PCI_STATUS, 2)
        was = bool(status & regs.PCI_STATUS_INTERRUPT)
        status = (
            (status | regs.PCI_STATUS_INTERRUPT) if level else (status & ~regs.PCI_STATUS_INTERRUPT)
        )
        self.config.poke(regs.PCI_STATUS, 2, status)
        if self.command & regs.PCI_COMMAND_INTX_DISABLE:
            return
        if level or was:
            self._emit(Interrupt("intx", pin, asserted=level))

    def _msi_fields(self, msi: int) -> tuple[int, int, int | None, int | None]:
        flags = self.config.read(msi + regs.PCI_MSI_FLAGS, 2)
        addr = self.config.read(msi + regs.PCI_MSI_ADDRESS_LO, 4)
        if flags & regs.PCI_MSI_FLAGS_64BIT:
            addr |= self.config.read(msi + regs.PCI_MSI_ADDRESS_HI, 4) << 32
            data_off, mask_off, pend_off = (
                regs.PCI_MSI_DATA_64,
                regs.PCI_MSI_MASK_64,
                regs.PCI_MSI_PENDING_64,
            )
        else:
            data_off, mask_off, pend_off = (
                regs.PCI_MSI_DATA_32,
                regs.PCI_MSI_MASK_32,
                regs.PCI_MSI_PENDING_32,
            )
        data = self.config.read(msi + data_off, 2)
        if flags & regs.PCI_MSI_FLAGS_MASKBIT:
            return addr, data, msi + mask_off, msi + pend_off
        return addr, data, None, None

    def _msi_notify(self, msi: int, vector: int) -> None:
        flags = self.config.read(msi + regs.PCI_MSI_FLAGS, 2)
        allocated = 1 << ((flags & regs.PCI_MSI_FLAGS_QSIZE) >> 4)
        vector %= allocated
        addr, data, mask_off, pend_off = self._msi_fields(msi)
        masked = mask_off is not None and self.config.read(mask_off, 4) >> vector & 1
        if masked and pend_off is not None:
            pending = self.config.read(pend_off, 4) | (1 << vector)
            self.config.poke(pend_off, 4, pending)
            return
        # Multiple Message Enable: the function ORs the vector into the low data bits.
        data = (data & ~(allocated - 1)) | vector
        self._emit(Interrupt("msi", vector, addr, data))

    def _msi_flush(self, msi: int) -> None:
        flags = self.config.read(msi + regs.PCI_MSI_FLAGS, 2)
        if not flags & regs.PCI_MSI_FLAGS_ENABLE:
            return
        _addr, _data, mask_off, pend_off = self._msi_fields(msi)
        if mask_off is None or pend_off is None:
            return
        pending = self.config.read(pend_off, 4)
        ready = pending & ~self.config.read(mask_off, 4)
        if ready:
            self.config.poke(pend_off, 4, pending & ~ready)
            for v in range(32):
                if ready >> v & 1:
                    self._msi_notify(msi, v)

    # -- config space side effects ---------------------------------------------------------
    def config_write(self, offset: int, size: int, value: int) -> None:
        pm = self.caps.get(regs.PCI_CAP_ID_PM)
        old_state = self.power_state
        super().config_write(offset, size, value)

        def touched(start: int, length: int) -> bool:
            return offset < start + length and start < offset + size

        exp = self.caps.get(regs.PCI_CAP_ID_EXP)
        if exp is not None and touched(exp + regs.PCI_EXP_DEVCTL, 2):
            devctl = self.config.read(exp + regs.PCI_EXP_DEVCTL, 2)
            if devctl & regs.PCI_EXP_DEVCTL_BCR_FLR:
                # Initiate FLR reads back as 0 (PCIe Base §7.5.3.4); the reset
                # restores the whole space, including this register.
                self.reset("flr")
                return
        if pm is not None and touched(pm + regs.PCI_PM_CTRL, 2):
            self._pm_written(pm, old_state)
        msix = self.caps.get(regs.PCI_CAP_ID_MSIX)
        if msix is not None and self.msix is not None and touched(msix + regs.PCI_MSIX_FLAGS, 2):
            flags = self.config.read(msix + regs.PCI_MSIX_FLAGS, 2)
            self.msix.set_control(
                bool(flags & regs.PCI_MSIX_FLAGS_ENABLE),
                bool(flags & regs.PCI_MSIX_FLAGS_MASKALL),
            )
        msi = self.caps.get(regs.PCI_CAP_ID_MSI)
        if msi is not None and touched(msi, 24):
            self._msi_flush(msi)

    def _pm_written(self, pm: int, old_state: int) -> None:
        ctrl_off = pm + regs.PCI_PM_CTRL
        ctrl = self.config.read(ctrl_off, 2)
        new_state = ctrl & regs.PCI_PM_CTRL_STATE_MASK
        if new_state in (1, 2):
            # D1/D2 are not advertised in PMC: the write leaves the state alone.
            self.config.poke(ctrl_off, 2, (ctrl & ~regs.PCI_PM_CTRL_STATE_MASK) | old_state)
            return
        if (
            old_state == PM_D3HOT
            and new_state == PM_D0
            and not ctrl & regs.PCI_PM_CTRL_NO_SOFT_RESET
        ):
            self.reset("pm")

    def on_reset(self, method: str) -> None:
        self.resets.append(method)
        if self.msix is not None:
            self.msix.reset()
        self.reset_device()

    def reset_device(self) -> None:
        """Subclasses: return internal (non-config) state to power-on values."""
