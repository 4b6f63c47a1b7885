"""dom0 Linux's PCI core state for a seized device, as pciback drives it.

Models the parts of ``struct pci_dev`` and ``drivers/pci/pci.c`` /
``drivers/pci/msi/`` that xen-pciback calls: ``pci_enable_device`` /
``pci_disable_device`` (``enable_cnt``), ``pci_set_master`` /
``pci_clear_master`` (``is_busmaster``), ``pci_set_mwi`` / ``pci_clear_mwi``,
``pci_intx``, ``pci_set_power_state``, ``msi_enabled`` / ``msix_enabled`` and
``dev->irq``, plus ``pci_save_state`` / ``pci_restore_state``.

``pci_set_master`` runs ``pcibios_set_master`` (a conventional function's
latency timer below 16 becomes 64; PCIe has none), ``pci_set_mwi`` first
programs the cache line size (``pci_set_cacheline_size``: 64-byte lines, 16
dwords, as x86's clflush size gives), and ``pci_set_power_state`` refuses to
go from a low-power state to a shallower one other than D0 (D3hot -> D1 is
-EINVAL, which pciback reports as "access denied").

Differences: these helpers act on the host function through its
``config_read``/``config_write`` only (so device models see the same config
cycles Linux would issue), MSI/MSI-X vector set-up is delegated to an
:class:`InterruptPlatform` (the hypervisor maps pirqs), and the saved state
is the 64-byte header only (Linux also saves PCIe/MSI capability state).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from xenpci.errors import XenpciError
from xenpci.pci import regs
from xenpci.pci.bar import IORESOURCE_ROM_ENABLE, ROM_INDEX, Bar, bar_register_offset
from xenpci.pci.capabilities import find_capability as _find_capability
from xenpci.pci.errors import ConfigError
from xenpci.pci.function import PciFunction
from xenpci.pciback.errors import EINVAL, EIO

_PCI_CFG_SPACE_MAX = regs.PCI_CFG_SPACE_EXP_SIZE
#: ``pci_cache_line_size`` in dwords: x86's ``boot_cpu_data.x86_clflush_size >> 2`` (64 bytes).
PCI_CACHE_LINE_SIZE = 16
#: ``pcibios_max_latency`` (drivers/pci/pci.c default; x86 does not lower it).
PCIBIOS_MAX_LATENCY = 255
#: What ``pcibios_set_master`` programs into a latency timer below 16.
PCIBIOS_MIN_LATENCY = 64


#: Every host device source (dump, sysfs, model) is a ``PciFunction``.
HostFunction = PciFunction


class InterruptPlatform(Protocol):
    """What pciback asks of the hypervisor through dom0 for a seized device.

    MSI/MSI-X vectors are pirqs: Linux dom0 does this in
    ``xen_initdom_setup_msi_irqs`` (``arch/x86/pci/xen.c``), ``PHYSDEVOP_map_pirq``
    with the guest as owner, so the returned pirqs live in the guest's pirq
    space. MSI-X table protection is ``PHYSDEVOP_prepare_msix`` at seize and
    ``PHYSDEVOP_release_msix`` at release (``pci_stub.c``; privileged since
    XSA-87). :meth:`memory_decode` follows the guest's COMMAND.MEMORY bit into
    the hypervisor's mapping of the BARs: that is Xen vPCI's behaviour
    (``cmd_write``/``modify_bars``) carried to the PV model, Linux PV pciback
    has no such hook. A refusal is returned as a negative errno (the value
    pciback would get); a raised ``XenpciError`` is converted to one.
    """

    def prepare_msix(self, dev: HostFunction) -> int: ...

    def release_msix(self, dev: HostFunction) -> int: ...

    def memory_decode(self, dev: HostFunction, owner: int, enabled: bool) -> int: ...

    def enable_msi(self, dev: HostFunction, owner: int, nvec: int) -> list[int] | int: ...

    def disable_msi(self, dev: HostFunction) -> None: ...

    def enable_msix(
        self, dev: HostFunction, owner: int, entries: Sequence[int]
    ) -> list[int] | int: ...

    def disable_msix(self, dev: HostFunction) -> None: ...


def hw_read(hw: HostFunction, offset: int, size: int) -> tuple[int, int]:
    """A config read as ``pci_read_config_*`` sees it: ``(err, value)``.

    Registers beyond 4095 or negative fail with -EINVAL and all-ones (what the
    x86 accessors return, ``PCI_SET_ERROR_RESPONSE``); extended-space offsets on
    a conventional function read all-ones successfully (a master abort).
    """
    ones = (1 << (8 * size)) - 1
    if offset < 0 or offset + size > _PCI_CFG_SPACE_MAX:
        return EINVAL, ones
    try:
        return 0, hw.config_read(offset, size)
    except ConfigError:
        return 0, ones


def hw_write(hw: HostFunction, offset: int, size: int, value: int) -> int:
    """A config write as ``pci_write_config_*``: returns 0 or a negative errno."""
    if offset < 0 or offset + size > _PCI_CFG_SPACE_MAX:
        return EINVAL
    try:
        hw.config_write(offset, size, value & ((1 << (8 * size)) - 1))
    except ConfigError:
        return 0  # no function answers there: the write is lost, as on the bus
    return 0


def find_capability(hw: HostFunction, cap_id: int) -> int | None:
    """``pci_find_capability`` on the host function (the PCI layer's walker)."""
    return _find_capability(hw.config, cap_id)


def platform_call(call: Callable[[], list[int] | int]) -> list[int] | int:
    """Run a platform request; a raised xenpci error becomes its negative errno, so
    a hypervisor refusal can never escape into (and stop) the op handler."""
    try:
        return call()
    except XenpciError as e:
        name = getattr(e, "errno", None)
        code = getattr(errno, name, None) if isinstance(name, str) else None
        return -code if isinstance(code, int) else EIO


@dataclass(slots=True)
class Dom0PciDev:
    """The dom0 kernel's bookkeeping for one host function (``struct pci_dev``)."""

    hw: HostFunction
    enable_cnt: int = 0
    is_busmaster: bool = False
    msi_enabled: bool = False
    msix_enabled: bool = False
    intx_irq: int = 0  # the legacy IRQ (GSI) dom0 routed for INTx; 0 when pin is 0 or a VF
    irq: int = 0  # dev->irq: the INTx irq, or the first MSI pirq while MSI is on
    msix_pirqs: list[int] = field(default_factory=list)
    saved_state: tuple[int, ...] | None = None
    resources: tuple[Bar, ...] = ()  # dev->resource[] as enumerated (for pci_restore_bars)
    log: list[str] = field(default_factory=list)

    @classmethod
    def probe(cls, hw: HostFunction) -> Dom0PciDev:
        """What Linux knows after enumerating the function (before any driver)."""
        _, pin = hw_read(hw, regs.PCI_INTERRUPT_PIN, 1)
        if hw.irq is not None:
            # The source said what dom0 routed (sysfs irq, lspci "routed to IRQ N"):
            # that is dev->irq, which may differ from the firmware's INTERRUPT_LINE.
            irq = hw.irq
        else:
            _, line = hw_read(hw, regs.PCI_INTERRUPT_LINE, 1)
            irq = line if pin and line != 0xFF else 0
        return cls(hw=hw, intx_irq=irq, irq=irq, resources=hw.bars)

    # --- command register helpers --------------------------------------------------
    def _cmd(self) -> int:
        return hw_read(self.hw, regs.PCI_COMMAND, 2)[1]

    def _set_cmd(self, value: int) -> None:
        hw_write(self.hw, regs.PCI_COMMAND, 2, value)

    def pci_enable_device(self) -> int:
        """Turn on decode for every resource type the function has (``pci_enable_resources``)."""
        self.enable_cnt += 1
        if self.enable_cnt > 1:
            return 0
        want = 0
        for r in self.hw.resources.values():
            if not r.size or not r.usable:
                continue
            if r.is_io:
                want |= regs.PCI_COMMAND_IO
            elif r.index != ROM_INDEX or r.flags & IORESOURCE_ROM_ENABLE:
                want |= regs.PCI_COMMAND_MEMORY
        cmd = self._cmd()
        if cmd & want != want:
            self._set_cmd(cmd | want)
        return 0

    def pci_disable_device(self) -> None:
        """Drop the enable count and bus mastering; decode bits stay on (as in Linux)."""
        if self.enable_cnt == 0:
            return
        self.enable_cnt = 0
        cmd = self._cmd()
        if cmd & regs.PCI_COMMAND_MASTER:
            self._set_cmd(cmd & ~regs.PCI_COMMAND_MASTER)
        self.is_busmaster = False

    def pci_set_master(self, enable: bool) -> None:
        """``pci_set_master`` (with ``pcibios_set_master``) or ``pci_clear_master``."""
        cmd = self._cmd()
        new = cmd | regs.PCI_COMMAND_MASTER if enable else cmd & ~regs.PCI_COMMAND_MASTER
        if new != cmd:
            self._set_cmd(new)
        self.is_busmaster = enable
        if enable:
            self.pcibios_set_master()

    def pcibios_set_master(self) -> None:
        """A conventional function's latency timer below 16 becomes 64 (PCIe has none)."""
        if find_capability(self.hw, regs.PCI_CAP_ID_EXP) is not None:
            return
        _, lat = hw_read(self.hw, regs.PCI_LATENCY_TIMER, 1)
        if lat < 16:
            lat = min(PCIBIOS_MIN_LATENCY, PCIBIOS_MAX_LATENCY)
        elif lat > PCIBIOS_MAX_LATENCY:  # pragma: no cover - a u8 never exceeds 255
            lat = PCIBIOS_MAX_LATENCY
        else:
            return
        hw_write(self.hw, regs.PCI_LATENCY_TIMER, 1, lat)

    def pci_set_cacheline_size(self) -> int:
        """Keep a multiple of the system line size, else program it; -EINVAL if it
        does not stick (the register is read-only or takes other values)."""
        _, cls = hw_read(self.hw, regs.PCI_CACHE_LINE_SIZE, 1)
        if cls >= PCI_CACHE_LINE_SIZE and cls % PCI_CACHE_LINE_SIZE == 0:
            return 0
        hw_write(self.hw, regs.PCI_CACHE_LINE_SIZE, 1, PCI_CACHE_LINE_SIZE)
        if hw_read(self.hw, regs.PCI_CACHE_LINE_SIZE, 1)[1] == PCI_CACHE_LINE_SIZE:
            return 0
        return EINVAL

    def pci_set_mwi(self) -> int:
        """``pci_set_mwi``: the cache line size first (its failure is the only error),
        then Memory-Write-Invalidate, without checking that the bit stuck."""
        err = self.pci_set_cacheline_size()
        if err:
            return err
        cmd = self._cmd()
        if not cmd & regs.PCI_COMMAND_INVALIDATE:
            self._set_cmd(cmd | regs.PCI_COMMAND_INVALIDATE)
        return 0

    def pci_clear_mwi(self) -> None:
        cmd = self._cmd()
        if cmd & regs.PCI_COMMAND_INVALIDATE:
            self._set_cmd(cmd & ~regs.PCI_COMMAND_INVALIDATE)

    def pci_intx(self, enable: bool) -> None:
        cmd = self._cmd()
        if enable:
            new = cmd & ~regs.PCI_COMMAND_INTX_DISABLE
        else:
            new = cmd | regs.PCI_COMMAND_INTX_DISABLE
        if new != cmd:
            self._set_cmd(new)

    # --- power management ---------------------------------------------------------
    def pci_set_power_state(self, state: int) -> int:
        """Move to D0..D3hot through PMCSR; D1/D2 only if PMC advertises them.

        As ``pci_set_low_power_state``: from a low-power state only D0 or a
        deeper state is allowed (D3hot -> D1 is -EINVAL and nothing is written).
        """
        pm = find_capability(self.hw, regs.PCI_CAP_ID_PM)
        if pm is None:
            return EIO
        _, csr = hw_read(self.hw, pm + regs.PCI_PM_CTRL, 2)
        old = csr & regs.PCI_PM_CTRL_STATE_MASK
        if old == state:
            return 0
        if state != 0 and old > state:
            self.log.append(f"invalid power transition (from D{old} to D{state})")
            return EINVAL
        _, pmc = hw_read(self.hw, pm + regs.PCI_PM_PMC, 2)
        if (state == 1 and not pmc & regs.PCI_PM_CAP_D1) or (
            state == 2 and not pmc & regs.PCI_PM_CAP_D2
        ):
            return EIO
        # Never write PME_STATUS back as 1: it is RW1C and would clear a pending PME.
        new = (csr & ~(regs.PCI_PM_CTRL_STATE_MASK | regs.PCI_PM_CTRL_PME_STATUS)) | state
        err = hw_write(self.hw, pm + regs.PCI_PM_CTRL, 2, new)
        if not err and old == 3 and state == 0 and not csr & regs.PCI_PM_CTRL_NO_SOFT_RESET:
            # D3hot -> D0 without No_Soft_Reset lost the BARs (PCI PM 1.2 §5.4):
            # Linux' pci_set_full_power_state() calls pci_restore_bars().
            self.pci_restore_bars()
        return err

    def pci_restore_bars(self) -> None:
        """Rewrite every BAR from dom0's resources (``pci_restore_bars``)."""
        htype = self.hw.config.header_type
        for bar in self.resources:
            if not bar.size:
                continue
            off = bar_register_offset(bar.index, htype)
            if bar.kind == "rom":
                low = hw_read(self.hw, off, 4)[1] & regs.PCI_ROM_ADDRESS_ENABLE
                hw_write(self.hw, off, 4, (bar.address & regs.PCI_ROM_ADDRESS_MASK) | low)
                continue
            hw_write(self.hw, off, 4, bar.address & 0xFFFFFFFF)
            if bar.kind == "mem64":
                hw_write(self.hw, off + 4, 4, bar.address >> 32)

    # --- MSI / MSI-X --------------------------------------------------------------
    def _set_flags(self, cap_id: int, bit: int, on: bool) -> None:
        pos = find_capability(self.hw, cap_id)
        if pos is None:
            return
        _, flags = hw_read(self.hw, pos + 2, 2)
        hw_write(self.hw, pos + 2, 2, (flags | bit) if on else (flags & ~bit))

    def msix_table_size(self) -> int:
        pos = find_capability(self.hw, regs.PCI_CAP_ID_MSIX)
        if pos is None:
            return 0
        return (hw_read(self.hw, pos + regs.PCI_MSIX_FLAGS, 2)[1] & regs.PCI_MSIX_FLAGS_QSIZE) + 1

    def pci_enable_msi(self, platform: InterruptPlatform, owner: int, nvec: int = 1) -> int:
        """``pci_enable_msi``/``pci_alloc_irq_vectors``: pirq(s) from the platform, then
        INTx off and MSI Enable on. Returns 0 or a negative errno."""
        pos = find_capability(self.hw, regs.PCI_CAP_ID_MSI)
        if pos is None or self.msi_enabled or self.msix_enabled:
            return EINVAL
        _, flags = hw_read(self.hw, pos + regs.PCI_MSI_FLAGS, 2)
        if nvec < 1 or nvec > 1 << ((flags & regs.PCI_MSI_FLAGS_QMASK) >> 1):
            return EINVAL
        got = platform_call(lambda: platform.enable_msi(self.hw, owner, nvec))
        if isinstance(got, int):
            return got
        self.pci_intx(False)
        qsize = (nvec - 1).bit_length()
        new = (flags & ~regs.PCI_MSI_FLAGS_QSIZE) | (qsize << 4) | regs.PCI_MSI_FLAGS_ENABLE
        hw_write(self.hw, pos + regs.PCI_MSI_FLAGS, 2, new)
        self.msi_enabled = True
        self.irq = got[0] if got else 0
        return 0

    def pci_disable_msi(self, platform: InterruptPlatform) -> None:
        if not self.msi_enabled:
            return
        self._set_flags(regs.PCI_CAP_ID_MSI, regs.PCI_MSI_FLAGS_ENABLE, False)
        platform.disable_msi(self.hw)
        self.pci_intx(True)
        self.msi_enabled = False
        self.irq = self.intx_irq

    def pci_enable_msix_exact(
        self, platform: InterruptPlatform, owner: int, entries: Sequence[int]
    ) -> int:
        """Checks of the PCI core, then pirqs from the platform and MSI-X Enable on."""
        size = self.msix_table_size()
        if size == 0 or self.msi_enabled or self.msix_enabled:
            return EINVAL
        if not entries or any(e >= size for e in entries) or len(set(entries)) != len(entries):
            return EINVAL
        got = platform_call(lambda: platform.enable_msix(self.hw, owner, entries))
        if isinstance(got, int):
            return got
        self.pci_intx(False)
        self._set_flags(regs.PCI_CAP_ID_MSIX, regs.PCI_MSIX_FLAGS_ENABLE, True)
        self.msix_enabled = True
        self.msix_pirqs = list(got)
        return 0

    def pci_disable_msix(self, platform: InterruptPlatform) -> None:
        if not self.msix_enabled:
            return
        self._set_flags(regs.PCI_CAP_ID_MSIX, regs.PCI_MSIX_FLAGS_ENABLE, False)
        platform.disable_msix(self.hw)
        self.pci_intx(True)
        self.msix_enabled = False
        self.msix_pirqs = []

    # --- save / restore -----------------------------------------------------------
    def pci_save_state(self) -> tuple[int, ...]:
        """The 16 header dwords (``pci_save_state``'s ``saved_config_space``)."""
        return tuple(hw_read(self.hw, 4 * i, 4)[1] for i in range(16))

    def pci_restore_state(self, saved: tuple[int, ...]) -> None:
        """Rewrite every header dword that differs, in Linux's order (10-15, 4-9, 0-3,
        each from the top), so COMMAND (dword 1) is restored after the BARs."""
        for lo, hi in ((10, 15), (4, 9), (0, 3)):
            for i in range(hi, lo - 1, -1):
                if hw_read(self.hw, 4 * i, 4)[1] != saved[i]:
                    hw_write(self.hw, 4 * i, 4, saved[i])
