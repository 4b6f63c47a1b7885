"""The assignable pool of Linux xen-pciback (``pci_stub.c``): seize, hand to a
guest, take back, release; with the per-device sysfs knobs.

A seized device gets its virtual config space built, is enabled, has its
pristine state saved, is reset and restored, then disabled
(``pcistub_init_device``). Every release from a guest resets it and restores
that pristine state again (``pcistub_put_pci_dev``); unbinding from pciback
(:meth:`PciStub.release`) does the same and frees everything.

Differences: reset picks the first of FLR, AF FLR, PM (D3hot->D0) that the
function supports and *says* when none exists (Linux' ``__pci_reset_function_locked``
also tries device-specific, ACPI and bus resets; a secondary bus reset would
hit siblings we cannot see, so it is not used). The seize list (``hide=``,
``new_slot``) is reduced to seizing a function directly. MSI-X table
protection (``PHYSDEVOP_prepare_msix`` at seize, ``release_msix`` at unbind)
goes through the platform as in Linux. Not Linux: while a device is
assigned, the guest's COMMAND.MEMORY is carried to the hypervisor's BAR
mappings (Xen vPCI's behaviour, see ``header.memory_decode_follow``); a guest
that left decode off has it turned back on for it when the device is taken
back, so no stale unmapping outlives the assignment.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pciback.conf_space import (
    DevData,
    DeviceOptions,
    ModuleParams,
    add_field,
    config_free_dev,
    config_free_dyn_fields,
    config_init_dev,
    config_reset_dev,
)
from xenpci.pciback.conf_space.dom0_pci import (
    Dom0PciDev,
    HostFunction,
    InterruptPlatform,
    find_capability,
    platform_call,
)
from xenpci.pciback.conf_space.header import memory_decode_follow
from xenpci.pciback.conf_space.quirks import format_quirks, parse_quirk, quirk_field
from xenpci.pciback.errors import (
    EBUSY,
    EINVAL,
    ENODEV,
    ENOSYS,
    AssignError,
    FieldError,
    SeizeError,
    SysfsError,
)

#: Reset methods pciback will use, in preference order.
RESET_ORDER = ("flr", "af_flr", "pm")


@dataclass(slots=True)
class PcistubDevice:
    """``struct pcistub_device``: a seized function, its data and its current owner."""

    hw: HostFunction
    dev_data: DevData
    saved_state: tuple[int, ...]
    owner: int | None = None  # guest domid while assigned (``psdev->pdev != NULL``)
    resets: list[str] = field(default_factory=list)  # method used at each reset, or "none"
    is_virtfn: bool = False  # an SR-IOV VF (affects vpci slot grouping)

    @property
    def sbdf(self) -> SBDF:
        return self.hw.sbdf


def pci_reset_function(hw: HostFunction) -> str | None:
    """Reset with the best supported method; None when the function has none."""
    supported = hw.reset_methods()
    for method in RESET_ORDER:
        if method in supported:
            hw.reset(method)
            return method
    return None


class PciStub:
    """The pool of devices bound to pciback (the ``pcistub_devices`` list)."""

    def __init__(
        self,
        params: ModuleParams | None = None,
        platform: InterruptPlatform | None = None,
    ) -> None:
        self.params = params if params is not None else ModuleParams()
        self.platform = platform
        self._devices: dict[SBDF, PcistubDevice] = {}

    # --- lookup ------------------------------------------------------------------
    def __contains__(self, sbdf: object) -> bool:
        return sbdf in self._devices

    def __iter__(self) -> Iterator[PcistubDevice]:
        return iter(list(self._devices.values()))

    def get(self, sbdf: SBDF) -> PcistubDevice:
        psdev = self._devices.get(sbdf)
        if psdev is None:
            raise AssignError(str(sbdf), ENODEV, "not seized by pciback")
        return psdev

    # --- seize / release -------------------------------------------------------------
    def seize(self, hw: HostFunction, options: DeviceOptions | None = None) -> PcistubDevice:
        """``pcistub_probe`` + ``pcistub_init_device``."""
        if hw.sbdf in self._devices:
            raise SeizeError(str(hw.sbdf), EBUSY, "already bound to pciback")
        htype = hw.config.header_type
        if htype not in (regs.PCI_HEADER_TYPE_NORMAL, regs.PCI_HEADER_TYPE_BRIDGE):
            raise SeizeError(
                str(hw.sbdf),
                ENODEV,
                f"can't export pci devices that don't have a "
                f"normal (0) or bridge (1) header type ({htype})",
            )
        linux = Dom0PciDev.probe(hw)
        dd = DevData(
            hw=hw,
            linux=linux,
            params=self.params,
            options=options or DeviceOptions(),
            platform=self.platform,
        )
        try:
            config_init_dev(dd)
        except FieldError as e:
            raise SeizeError(str(hw.sbdf), EINVAL, e.reason) from None
        linux.pci_enable_device()
        self._msix_hypercall(dd, "prepare")
        saved = linux.pci_save_state()
        psdev = PcistubDevice(hw=hw, dev_data=dd, saved_state=saved)
        self._reset_and_restore(psdev)
        self._reset_device(psdev)
        self._devices[hw.sbdf] = psdev
        return psdev

    def release(self, sbdf: SBDF) -> None:
        """Unbind from pciback (``pcistub_remove``): force-release from a guest if
        still in use, reset, restore, free the fields."""
        psdev = self.get(sbdf)
        if psdev.owner is not None:
            psdev.dev_data.warnings.append(
                f"****** removing device {sbdf} while still in-use by domain {psdev.owner}! ******"
            )
            self.put_pci_dev(sbdf)
        self._reset_and_restore(psdev)
        self._msix_hypercall(psdev.dev_data, "release")
        self._reset_device(psdev)
        config_free_dev(psdev.dev_data)
        del self._devices[sbdf]

    # --- guest assignment ---------------------------------------------------------------
    def get_pci_dev(self, sbdf: SBDF, domid: int) -> PcistubDevice:
        """``pcistub_get_pci_dev_by_slot``: only a seized device not already in use."""
        psdev = self._devices.get(sbdf)
        if psdev is None or psdev.owner is not None:
            raise AssignError(
                str(sbdf), ENODEV, f"Couldn't locate PCI device ({sbdf})! perhaps already in-use?"
            )
        psdev.owner = psdev.dev_data.owner = domid
        return psdev

    def put_pci_dev(self, sbdf: SBDF) -> None:
        """``pcistub_put_pci_dev``: release from the guest with reset and restore.
        Kept: ``permissive`` and the virtual COMMAND value. Dropped: quirks and
        ``allow_interrupt_control``."""
        psdev = self.get(sbdf)
        dd = psdev.dev_data
        if dd.decode_off:
            memory_decode_follow(dd, True)  # the guest left its mapping off: undo it
        dd.owner = None
        self._reset_and_restore(psdev)
        self._reset_device(psdev)
        config_reset_dev(dd)
        config_free_dyn_fields(dd)
        dd.allow_interrupt_control = False
        psdev.owner = None

    # --- hypervisor requests -------------------------------------------------------------
    def _msix_hypercall(self, dd: DevData, which: Literal["prepare", "release"]) -> None:
        """``PHYSDEVOP_prepare_msix`` / ``release_msix`` for a function with MSI-X. A
        failure is logged and seizing goes on, as in Linux (-ENOSYS silently)."""
        platform = self.platform
        if platform is None or find_capability(dd.hw, regs.PCI_CAP_ID_MSIX) is None:
            return
        call = platform.prepare_msix if which == "prepare" else platform.release_msix
        err = platform_call(lambda: call(dd.hw))
        if err and err != ENOSYS:
            verb = "preparation" if which == "prepare" else "release"
            dd.warnings.append(f"MSI-X {verb} failed ({err})")

    # --- the reset / disable helpers -------------------------------------------------------
    def _reset_and_restore(self, psdev: PcistubDevice) -> None:
        method = pci_reset_function(psdev.hw)
        psdev.resets.append(method or "none")
        if method is None:
            psdev.dev_data.warnings.append(f"{psdev.sbdf}: no reset method (FLR, PM) available")
        psdev.dev_data.linux.pci_restore_state(psdev.saved_state)

    def _reset_device(self, psdev: PcistubDevice) -> None:
        """``xen_pcibk_reset_device``: interrupts and enable off; COMMAND is not zeroed."""
        dd = psdev.dev_data
        linux = dd.linux
        dd.enable_intx = dd.ack_intr = dd.isr_on = False
        if psdev.hw.config.header_type == regs.PCI_HEADER_TYPE_NORMAL:
            if linux.msix_enabled and self.platform is not None:
                linux.pci_disable_msix(self.platform)
            if linux.msi_enabled and self.platform is not None:
                linux.pci_disable_msi(self.platform)
            if linux.enable_cnt:
                linux.pci_disable_device()
            linux.is_busmaster = False
        else:
            cmd = dd.hw_read(regs.PCI_COMMAND, 2)[1]
            if cmd & regs.PCI_COMMAND_INVALIDATE:
                dd.hw_write(regs.PCI_COMMAND, 2, cmd & ~regs.PCI_COMMAND_INVALIDATE)
                linux.is_busmaster = False

    # --- sysfs knobs -----------------------------------------------------------------------
    def set_permissive(self, sbdf: SBDF) -> None:
        """``permissive`` write: sticky until unbind."""
        dd = self.get(sbdf).dev_data
        dd.permissive = True
        dd.warnings.append("enabling permissive mode configuration space accesses!")

    def permissive_list(self) -> str:
        return "".join(f"{p.sbdf}\n" for p in self if p.dev_data.permissive)

    def set_allow_interrupt_control(self, sbdf: SBDF) -> None:
        """``allow_interrupt_control`` write: cleared at every release."""
        self.get(sbdf).dev_data.allow_interrupt_control = True

    def add_quirk(self, text: str) -> bool:
        """``quirks`` write; False when the dup check silently skipped it."""
        spec = parse_quirk(text)
        psdev = self._devices.get(spec.sbdf)
        if psdev is None:
            raise SysfsError("quirks", text, ENODEV, "device not seized by pciback")
        return add_field(psdev.dev_data, quirk_field(spec))

    def quirks_text(self) -> str:
        return format_quirks([(p.sbdf, p.dev_data) for p in self])
