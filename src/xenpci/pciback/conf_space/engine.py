"""The virtual config space engine of Linux ``xen-pciback`` (``conf_space.c``).

Each seized device has an ordered list of field entries (a static
:class:`ConfigField` row placed at a base offset, plus per-device data). A
guest read starts from the hardware value and merges every overlapping
field's value over it; a guest write goes to every overlapping field, and
only a write that touches no field at all falls back to hardware, and only
in permissive mode. The non-obvious parts are kept on purpose (see
``xen_pcibk_config_read``/``_write``):

* a field value is merged *without* truncation to the request size, so a
  1-byte read at 0x10 returns the whole 32-bit virtual BAR;
* a write touching any field is "handled": its other bytes are lost even in
  permissive mode;
* a dropped write returns success (one warning per device);
* the error of the *last* field written wins;
* the duplicate check compares start offsets only, overlaps are allowed.

Difference: the "strict" policy (Xen vPCI's domU rules) is a flag here:
bytes no field covers read all-ones instead of hardware (also beyond the
space: no -EINVAL is reported), and writes to them are always dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from xenpci.abi.pciif import XEN_PCI_ERR_invalid_offset
from xenpci.pci.pcibios import (
    PCIBIOS_BAD_REGISTER_NUMBER,
    PCIBIOS_DEVICE_NOT_FOUND,
    PCIBIOS_FUNC_NOT_SUPPORTED,
    PCIBIOS_SET_FAILED,
    PCIBIOS_SUCCESSFUL,
)
from xenpci.pciback.conf_space.dom0_pci import (
    Dom0PciDev,
    HostFunction,
    InterruptPlatform,
    hw_read,
    hw_write,
)
from xenpci.pciback.errors import FieldError

_PCIBIOS_TO_WIRE = {
    PCIBIOS_SUCCESSFUL: 0,
    PCIBIOS_DEVICE_NOT_FOUND: -1,  # XEN_PCI_ERR_dev_not_found
    PCIBIOS_BAD_REGISTER_NUMBER: -2,  # XEN_PCI_ERR_invalid_offset
    PCIBIOS_FUNC_NOT_SUPPORTED: -4,  # XEN_PCI_ERR_not_implemented
    PCIBIOS_SET_FAILED: -3,  # XEN_PCI_ERR_access_denied
}


def xen_pcibios_err_to_errno(err: int) -> int:
    """Map PCIBIOS codes onto the wire; anything else (negative errnos, XEN_PCI_ERR_*)
    passes unchanged, exactly as Linux does."""
    return _PCIBIOS_TO_WIRE.get(err, err)


Policy = Literal["linux", "strict"]

# read(dd, effective_offset, data) -> (err, value); write(dd, offset, value, data) -> err
ReadHandler = Callable[["DevData", int, object], tuple[int, int]]
WriteHandler = Callable[["DevData", int, int, object], int]
InitHandler = Callable[["DevData", int], object]
ResetHandler = Callable[["DevData", int, object], None]


@dataclass(frozen=True, slots=True)
class ConfigField:
    """One row of a field table (``struct config_field``).

    ``name`` is the stable rule name ("header.command", "msix.flags") used by
    :mod:`xenpci.pciback.conf_space.explain`; ``on_write`` says in words what a
    guest write does. ``mask`` is stored and shown, never enforced (as Linux).
    """

    name: str
    offset: int
    size: int
    read: ReadHandler | None = None
    write: WriteHandler | None = None
    init: InitHandler | None = None
    reset: ResetHandler | None = None
    release: ResetHandler | None = None
    clean: bool = False  # Linux' ``clean`` callback: a dynamic (sysfs quirk) field
    mask: int = 0
    on_write: str = "ignored (no write handler)"

    def __post_init__(self) -> None:
        if self.size not in (1, 2, 4):
            raise FieldError(self.name, f"size {self.size} not in 1, 2, 4")
        if not 0 <= self.offset < 0x1000:
            raise FieldError(self.name, f"offset 0x{self.offset:x} outside config space")
        if not self.name or "." not in self.name:
            raise FieldError(self.name, "a rule name is 'group.register'")


@dataclass(slots=True)
class FieldEntry:
    """``struct config_field_entry``: a field placed for one device, with its data."""

    field: ConfigField
    base_offset: int
    data: object = None
    # Placed once: computed here rather than per access (the hot path reads them).
    start: int = dataclasses.field(init=False)
    end: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.start = self.base_offset + self.field.offset
        self.end = self.start + self.field.size


@dataclass(slots=True)
class ModuleParams:
    """Module parameters of ``xen_pciback`` (``permissive`` is runtime-writable)."""

    permissive: bool = False
    passthrough: bool = False  # read-only after load: chooses the bus mode


@dataclass(frozen=True, slots=True)
class DeviceOptions:
    """Per-device options the toolstack passes (xl.cfg ``pci=[...]`` options)."""

    policy: Policy = "linux"
    multi_msi: bool = False  # answer XEN_PCI_OP_enable_multi_msi (Linux does not)

    def __post_init__(self) -> None:
        if self.policy not in ("linux", "strict"):
            raise FieldError("options.policy", f"unknown policy {self.policy!r}")

    @classmethod
    def parse(cls, opts: Mapping[str, str]) -> DeviceOptions:
        """From ``key=value`` device options (``policy=strict``, ``multi_msi=1``);
        an unknown key or value is a :class:`FieldError` naming it."""
        policy = opts.get("policy", "linux")
        if policy not in ("linux", "strict"):
            raise FieldError("options.policy", f"unknown policy {policy!r}")
        flag = opts.get("multi_msi", "0")
        if flag not in ("0", "1"):
            raise FieldError("options.multi_msi", f"expected 0 or 1, got {flag!r}")
        unknown = set(opts) - {"policy", "multi_msi"}
        if unknown:
            raise FieldError("options", f"unknown option(s) {', '.join(sorted(unknown))}")
        return cls(policy="strict" if policy == "strict" else "linux", multi_msi=flag == "1")


@dataclass(slots=True)
class DevData:
    """``struct xen_pcibk_dev_data`` plus the host function and dom0's view of it."""

    hw: HostFunction
    linux: Dom0PciDev
    params: ModuleParams
    options: DeviceOptions = DeviceOptions()
    permissive: bool = False
    allow_interrupt_control: bool = False
    warned_on_write: bool = False
    enable_intx: bool = False
    isr_on: bool = False
    ack_intr: bool = False
    handled: int = 0  # interrupts the fake INTx handler acknowledged
    # The guest the device is assigned to (``psdev->pdev`` set) and the platform
    # that carries its COMMAND.MEMORY changes to the hypervisor (set by pci_stub).
    owner: int | None = None
    platform: InterruptPlatform | None = None
    decode_off: bool = False  # the owner's BAR mappings were last turned off
    config_fields: list[FieldEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Lookup cache over ``config_fields`` (see :func:`fields_at`); rebuilt whenever the
    # list is replaced or grows/shrinks, which is how the engine changes it.
    _index: dict[int, tuple[FieldEntry, ...]] = field(default_factory=dict, repr=False)
    _indexed: tuple[list[FieldEntry] | None, int] = field(default=(None, -1), repr=False)

    @property
    def is_permissive(self) -> bool:
        """Per-device OR global permissive (never in the strict policy)."""
        if self.options.policy == "strict":
            return False
        return self.permissive or self.params.permissive

    def hw_read(self, offset: int, size: int) -> tuple[int, int]:
        return hw_read(self.hw, offset, size)

    def hw_write(self, offset: int, size: int, value: int) -> int:
        return hw_write(self.hw, offset, size, value)


def get_mask(size: int) -> int:
    return (1 << (8 * size)) - 1


def merge_value(val: int, new_val: int, new_val_mask: int, offset: int) -> int:
    """Linux ``merge_value``: place ``new_val`` at byte ``offset`` of a u32 (negative
    shifts right). Nothing trims bytes beyond the request: only the u32 does."""
    if offset >= 0:
        new_val_mask = (new_val_mask << (offset * 8)) & 0xFFFFFFFF
        new_val = (new_val << (offset * 8)) & 0xFFFFFFFF
    else:
        new_val_mask >>= offset * -8
        new_val >>= offset * -8
    return ((val & ~new_val_mask) | (new_val & new_val_mask)) & 0xFFFFFFFF


def valid_request(offset: int, size: int) -> bool:
    """Size 1, 2 or 4 and naturally aligned; C's ``%`` lets negative multiples pass."""
    return size in (1, 2, 4) and offset % size == 0


def _overlaps(entry: FieldEntry, offset: int, size: int) -> bool:
    return offset + size > entry.start and entry.end > offset


def fields_at(dd: DevData, offset: int) -> tuple[FieldEntry, ...]:
    """The entries touching the dword holding ``offset``, in list (Linux) order.

    A valid request (size 1/2/4, naturally aligned) never leaves its dword, so
    these are the only entries it can overlap; callers still apply the exact
    overlap test. Linux scans the whole list per access; the index only skips
    entries that cannot match, so order, overlaps and "last error wins" are
    unchanged.
    """
    fields = dd.config_fields
    indexed, length = dd._indexed
    if indexed is not fields or length != len(fields):
        # Holding the list itself (not its id) means a new list is always noticed.
        dd._index = {}
        dd._indexed = (fields, len(fields))
    dword = offset >> 2
    hit = dd._index.get(dword)
    if hit is None:
        lo = dword << 2
        hit = tuple(e for e in fields if _overlaps(e, lo, 4))
        dd._index[dword] = hit
    return hit


def _field_read(dd: DevData, entry: FieldEntry) -> tuple[int, int]:
    if entry.field.read is None:
        return 0, 0  # a field without a read handler contributes zeros
    err, value = entry.field.read(dd, entry.start, entry.data)
    return err, value & get_mask(entry.field.size)


def add_field(dd: DevData, fld: ConfigField, base_offset: int = 0) -> bool:
    """``xen_pcibk_config_add_field_offset``: False (skipped) when an entry already
    starts at the same effective offset; overlaps with other starts are accepted."""
    start = base_offset + fld.offset
    if any(e.start == start for e in dd.config_fields):
        return False
    data = fld.init(dd, start) if fld.init is not None else None
    dd.config_fields.append(FieldEntry(fld, base_offset, data))
    return True


def config_read(dd: DevData, offset: int, size: int) -> tuple[int, int]:
    """``xen_pcibk_config_read``: ``(wire err, value)``."""
    if not valid_request(offset, size):
        return XEN_PCI_ERR_invalid_offset, 0
    if dd.options.policy == "strict":
        # vPCI: "Guest domains are not allowed to read real hardware".
        err, value = 0, get_mask(size)
    else:
        err, value = dd.hw_read(offset, size)
    for entry in fields_at(dd, offset):
        if _overlaps(entry, offset, size):
            err, tmp = _field_read(dd, entry)
            if err:
                break
            value = merge_value(value, tmp, get_mask(entry.field.size), entry.start - offset)
    return xen_pcibios_err_to_errno(err), value


def config_write(dd: DevData, offset: int, size: int, value: int) -> int:
    """``xen_pcibk_config_write``: the wire err (0 also when the write was dropped)."""
    if not valid_request(offset, size):
        return XEN_PCI_ERR_invalid_offset
    value &= get_mask(size)
    err = 0
    handled = False
    for entry in fields_at(dd, offset):
        if _overlaps(entry, offset, size):
            err, tmp = _field_read(dd, entry)
            if err:
                break
            tmp = merge_value(tmp, value, get_mask(size), offset - entry.start)
            if entry.field.write is not None:
                err = entry.field.write(
                    dd, entry.start, tmp & get_mask(entry.field.size), entry.data
                )
            else:
                err = 0
            handled = True
    if not handled and not err:
        if dd.is_permissive:
            err = dd.hw_write(offset, size, value)
        elif not dd.warned_on_write:
            dd.warned_on_write = True
            dd.warnings.append(
                f"Driver tried to write to a read-only configuration space field at offset "
                f"0x{offset:x}, size {size}. This may be harmless, but if you have problems "
                f"with your device: 1) see permissive attribute in sysfs; 2) report problems "
                f"to the xen-devel mailing list along with details of your device obtained "
                f"from lspci."
            )
    return xen_pcibios_err_to_errno(err)


def config_reset_dev(dd: DevData) -> None:
    """``xen_pcibk_config_reset_dev``: call each field's reset hook."""
    for entry in dd.config_fields:
        if entry.field.reset is not None:
            entry.field.reset(dd, entry.start, entry.data)


def config_free_dyn_fields(dd: DevData) -> None:
    """``xen_pcibk_config_free_dyn_fields``: drop the sysfs quirk fields."""
    dd.config_fields = [e for e in dd.config_fields if not e.field.clean]


def config_free_dev(dd: DevData) -> None:
    """``xen_pcibk_config_free_dev``: release and remove every field."""
    for entry in dd.config_fields:
        if entry.field.release is not None:
            entry.field.release(dd, entry.start, entry.data)
    dd.config_fields = []
