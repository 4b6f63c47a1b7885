"""pciback's request handling (Linux ``pciback_ops.c``), sans-IO.

:func:`handle_op` answers one ``struct xen_pci_op`` (or just its header, an
:class:`OpHeader`) that the caller has already copied out of the shared page;
:func:`serve_shared_page` is the copy-once / write-back /
clear-``_XEN_PCIF_active`` step around it (the XSA-155 rule: the shared page
is read exactly once per request and, after that, only ``err``, ``value``
and, for a successful ``enable_msix``, the vectors are written back). The
page is read and written with ``struct`` at the ctypes layout's offsets; a
ctypes ``xen_pci_op`` is built only for ``enable_msix``, the one op that
reads its entries. The event channel, the work queue and late EOI belong to
the XenBus backend that calls these.

The AER relay (backend to frontend, ``pci_stub.c`` ``common_process``) is
here too as three pure steps on the page: post, poll, time out.

Difference: ``enable_multi_msi`` is answered (first pirq in ``value``) only
when the device's options enable it; upstream Linux never implements it.
SR-IOV VFs are not modelled, so "the physical function's COMMAND" in the
``enable_msix`` check is the function's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple, Protocol

from xenpci.abi import pciif
from xenpci.abi.pciif import OP_OFFSET, OP_SIZE, xen_pci_op, xen_pci_sharedinfo
from xenpci.errors import XenpciError
from xenpci.pci import regs
from xenpci.pciback.conf_space import DevData, config_read, config_write
from xenpci.pciback.conf_space.dom0_pci import InterruptPlatform
from xenpci.pciback.errors import EALREADY, EINVAL, ENXIO
from xenpci.pciback.pci_stub import PcistubDevice
from xenpci.pciback.vpci import GuestAddress
from xenpci.trace import Kind, Trace

_ACTIVE: Final = pciif.XEN_PCIF_active

# enum pci_ers_result (include/linux/pci.h) and pci_channel_state.
PCI_ERS_RESULT_NONE: Final = 1
PCI_ERS_RESULT_CAN_RECOVER: Final = 2
PCI_ERS_RESULT_NEED_RESET: Final = 3
PCI_ERS_RESULT_DISCONNECT: Final = 4
PCI_ERS_RESULT_RECOVERED: Final = 5
PCI_ERS_RESULT_NO_AER_DRIVER: Final = 6
pci_channel_io_normal: Final = 1
pci_channel_io_frozen: Final = 2
pci_channel_io_perm_failure: Final = 3
AER_TIMEOUT_S: Final = 300


class OpHeader(NamedTuple):
    """The header of a ``struct xen_pci_op`` (everything but the MSI-X entries),
    as unpacked from the private copy of a request: what every op but
    ``enable_msix`` reads."""

    cmd: int
    err: int
    domain: int
    bus: int
    devfn: int
    offset: int
    size: int
    value: int


#: ``OpHeader._make`` without its Python frame: ``tuple.__new__`` straight from the
#: unpacked fields (8 of them, as ``OP_HEADER`` unpacks: a test checks the two agree).
_new_header: Callable[[type[OpHeader], tuple[int, ...]], OpHeader] = tuple.__new__


def _full_op(op: xen_pci_op | OpHeader) -> xen_pci_op:
    """``op`` as the whole structure (a header has all-zero MSI-X entries, as the
    on-stack op Linux's pcifront memcpy's for a header-only request)."""
    if isinstance(op, xen_pci_op):
        return op
    full = xen_pci_op()
    full.cmd, full.err, full.domain, full.bus = op.cmd, op.err, op.domain, op.bus
    full.devfn, full.offset, full.size, full.value = op.devfn, op.offset, op.size, op.value
    return full


class Backend(Protocol):
    """The bus mode (vpci or passthrough) as the op handler needs it."""

    def get(self, domain: int, bus: int, devfn: int) -> PcistubDevice | None: ...

    def find(self, psdev: PcistubDevice) -> GuestAddress | None: ...


@dataclass(frozen=True, slots=True)
class OpResult:
    """What pciback writes back: ``err``, ``value`` and the MSI-X vectors (or None)."""

    err: int
    value: int
    msix_vectors: tuple[int, ...] | None = None
    intx_changed: bool = False  # the fake INTx handler was switched (enable_intx flipped)

    def __post_init__(self) -> None:
        if not -(1 << 31) <= self.err < (1 << 31) or not 0 <= self.value < (1 << 32):
            raise ValueError(f"err {self.err} / value {self.value} do not fit the wire fields")


_NOT_FOUND: Final = OpResult(pciif.XEN_PCI_ERR_dev_not_found, 0)


def control_isr(dd: DevData, *, reset: bool = False) -> None:
    """``xen_pcibk_control_isr``: install/remove the fake INTx handler that keeps a
    shared host line acknowledged while the guest owns the device."""
    if dd.hw.config.header_type == regs.PCI_HEADER_TYPE_BRIDGE:
        return
    if reset:
        dd.enable_intx = False
        dd.ack_intr = False
    enable = dd.enable_intx
    if not enable and not dd.isr_on:
        return
    if enable:
        if dd.linux.irq == 0 or dd.linux.msi_enabled or dd.linux.msix_enabled:
            return
        dd.isr_on = dd.ack_intr = True
    else:
        dd.isr_on = dd.ack_intr = False


def guest_interrupt(dd: DevData, line_shared: bool) -> bool:
    """``xen_pcibk_guest_interrupt``: the fake handler on the host INTx line. It
    claims the interrupt while acking; every 1000 it checks whether the line is
    shared at all, and stops acking if not. Returns IRQ_HANDLED (True) or NONE."""
    if not (dd.isr_on and dd.ack_intr):
        return False
    dd.handled += 1
    if dd.handled % 1000 == 0 and not line_shared:
        dd.ack_intr = False
    return True


def irq_handlers_text(devices: list[PcistubDevice]) -> str:
    """The ``irq_handlers`` sysfs read: ``NAME:on|off:ack|not ack:HANDLED`` per device
    with a fake handler (Linux prints ``acking``/``not acking`` via ``%sing``)."""
    out = []
    for psdev in devices:
        dd = psdev.dev_data
        if not dd.isr_on and not dd.handled:
            continue
        out.append(
            f"{psdev.sbdf}:{'on' if dd.isr_on else 'off'}:"
            f"{'ack' if dd.ack_intr else 'not ack'}ing:{dd.handled}\n"
        )
    return "".join(out)


def _enable_msi(
    psdev: PcistubDevice, platform: InterruptPlatform, owner: int, nvec: int
) -> tuple[int, int]:
    dd = psdev.dev_data
    linux = dd.linux
    if linux.msi_enabled:
        status = EALREADY
    elif linux.msix_enabled:
        status = ENXIO
    else:
        status = linux.pci_enable_msi(platform, owner, nvec)
    if status:
        dd.warnings.append(f"{psdev.sbdf}: error enabling MSI for guest {owner}: err {status}")
        return pciif.XEN_PCI_ERR_op_failed, 0  # the errno itself is not sent
    dd.ack_intr = False
    return 0, linux.irq


def _disable_msi(psdev: PcistubDevice, platform: InterruptPlatform) -> tuple[int, int]:
    dd = psdev.dev_data
    if dd.linux.msi_enabled:
        dd.linux.pci_disable_msi(platform)
        dd.ack_intr = True
    return 0, dd.linux.irq


def _enable_msix(
    psdev: PcistubDevice, platform: InterruptPlatform, owner: int, op: xen_pci_op
) -> tuple[int, int, tuple[int, ...] | None]:
    dd = psdev.dev_data
    linux = dd.linux
    nr = op.value
    if nr > pciif.SH_INFO_MAX_VEC:
        return EINVAL, nr, None
    if linux.msix_enabled:
        return EALREADY, nr, None
    # CVE-2015-8553: no MSI-X while MSI is on or memory decode is off (XSA-157).
    _, cmd = dd.hw_read(regs.PCI_COMMAND, 2)
    if linux.msi_enabled or not cmd & regs.PCI_COMMAND_MEMORY:
        return ENXIO, nr, None
    entries = [op.msix_entries[i].entry for i in range(nr)]
    result = linux.pci_enable_msix_exact(platform, owner, entries)
    if result:
        dd.warnings.append(f"{psdev.sbdf}: error enabling MSI-X for guest {owner}: err {result}")
        dd.ack_intr = False
        return result, result & 0xFFFFFFFF, None
    dd.ack_intr = False
    vectors = tuple(p & 0xFFFF for p in linux.msix_pirqs)
    return 0, 0, vectors


def _disable_msix(psdev: PcistubDevice, platform: InterruptPlatform) -> tuple[int, int]:
    dd = psdev.dev_data
    if dd.linux.msix_enabled:
        dd.linux.pci_disable_msix(platform)
        dd.ack_intr = True
    return 0, dd.linux.irq


def _dispatch(
    op: xen_pci_op | OpHeader, psdev: PcistubDevice, platform: InterruptPlatform, owner: int
) -> tuple[int, int, tuple[int, ...] | None]:
    """The ``switch (op->cmd)`` of ``xen_pcibk_do_one_op``: (err, value, vectors)."""
    dd = psdev.dev_data
    value = op.value
    vectors: tuple[int, ...] | None = None
    cmd = op.cmd
    if cmd == pciif.XEN_PCI_OP_conf_read:
        err, value = config_read(dd, op.offset, op.size)
    elif cmd == pciif.XEN_PCI_OP_conf_write:
        err = config_write(dd, op.offset, op.size, op.value)
    elif cmd == pciif.XEN_PCI_OP_enable_msi:
        err, value = _enable_msi(psdev, platform, owner, 1)
    elif cmd == pciif.XEN_PCI_OP_disable_msi:
        err, value = _disable_msi(psdev, platform)
    elif cmd == pciif.XEN_PCI_OP_enable_msix:
        err, value, vectors = _enable_msix(psdev, platform, owner, _full_op(op))
    elif cmd == pciif.XEN_PCI_OP_disable_msix:
        err, value = _disable_msix(psdev, platform)
    elif cmd == pciif.XEN_PCI_OP_enable_multi_msi and dd.options.multi_msi:
        if not 1 <= op.value <= 32:
            err = pciif.XEN_PCI_ERR_op_failed
            value = 0
        else:
            err, value = _enable_msi(psdev, platform, owner, op.value)
    else:
        err = pciif.XEN_PCI_ERR_not_implemented
    return err, value, vectors


def handle_op(op: xen_pci_op | OpHeader, backend: Backend, platform: InterruptPlatform) -> OpResult:
    """``xen_pcibk_do_one_op`` on a private copy of the request."""
    psdev = backend.get(op.domain, op.bus, op.devfn)
    if psdev is None:
        return _not_found(op.value)
    return _do_one_op(op, psdev, platform)


def _not_found(value: int) -> OpResult:
    """The answer for a devfn with no device (``err`` set, ``value`` echoed)."""
    # A scan's empty devfn (most ops of a rescan): one shared frozen answer.
    if value == 0:
        return _NOT_FOUND
    return OpResult(pciif.XEN_PCI_ERR_dev_not_found, value)


def _do_one_op(
    op: xen_pci_op | OpHeader, psdev: PcistubDevice, platform: InterruptPlatform
) -> OpResult:
    """:func:`handle_op` once the device is found."""
    dd = psdev.dev_data
    owner = psdev.owner if psdev.owner is not None else 0
    test_intx = dd.enable_intx
    try:
        err, value, vectors = _dispatch(op, psdev, platform, owner)
    except XenpciError as e:
        # A device or platform fault is the op's failure, never the backend's end.
        dd.warnings.append(f"{psdev.sbdf}: op {op.cmd} failed: {e}")
        err, value, vectors = pciif.XEN_PCI_ERR_op_failed, op.value, None
    changed = False
    if err == 0 and dd.enable_intx != test_intx:
        control_isr(dd)
        changed = True
    return OpResult(err, value & 0xFFFFFFFF, vectors, changed)


def serve_shared_page(
    page: memoryview | bytearray,
    backend: Backend,
    platform: InterruptPlatform,
    trace: Trace | None = None,
    frontend_domid: int = 0,
) -> OpResult | None:
    """One request cycle on the granted page; None if ``_XEN_PCIF_active`` is clear
    (a spurious event: the caller's late EOI should say so). With a ``trace``, each
    answered request is recorded as a ``pci_op`` of the frontend's domain."""
    if not pciif.FLAGS.unpack_from(page, 0)[0] & _ACTIVE:
        return None
    # Copy once (XSA-155); from here on only the private copy is read. The header
    # is unpacked from the page in one ``struct`` call (one fetch of all its
    # fields). enable_msix (which reads the entries) takes one copy of the whole
    # op instead and reads nothing else: every field it uses, ``cmd`` included,
    # comes from that one copy.
    op: xen_pci_op | OpHeader = _new_header(OpHeader, pciif.OP_HEADER.unpack_from(page, OP_OFFSET))
    if op.cmd == pciif.XEN_PCI_OP_enable_msix:
        op = xen_pci_op.from_buffer_copy(bytes(page[OP_OFFSET : OP_OFFSET + OP_SIZE]))
    # handle_op, with the empty devfn's answer (most ops of a rescan) in line.
    psdev = backend.get(op.domain, op.bus, op.devfn)
    if psdev is not None:
        result = _do_one_op(op, psdev, platform)
    elif op.value == 0:
        result = _NOT_FOUND
    else:
        result = _not_found(op.value)
    pciif.OP_ERR.pack_into(page, pciif.OP_ERR_AT, result.err)
    pciif.OP_VALUE.pack_into(page, pciif.OP_VALUE_AT, result.value)
    if op.cmd == pciif.XEN_PCI_OP_enable_msix and result.err == 0 and result.msix_vectors:
        shared = xen_pci_sharedinfo.from_buffer(page).op
        for i, vec in enumerate(result.msix_vectors):
            shared.msix_entries[i].vector = vec
    pciif.FLAGS.pack_into(page, 0, pciif.FLAGS.unpack_from(page, 0)[0] & ~_ACTIVE & 0xFFFFFFFF)
    if trace is not None:
        trace.record(
            Kind.PCI_OP,
            frontend_domid,
            "dom0",
            cmd=pciif.XEN_PCI_OP_NAMES.get(op.cmd, str(op.cmd)),
            bdf=f"{op.domain:04x}:{op.bus:02x}:{(op.devfn >> 3) & 0x1F:02x}.{op.devfn & 7:x}",
            offset=op.offset,
            size=op.size,
            err=result.err,
        )
    return result


# --- AER relay (backend -> frontend) -------------------------------------------------
AerCmd = Literal[6, 7, 8, 9]
_DEFAULT_RESULT = {
    pciif.XEN_PCI_OP_aer_detected: PCI_ERS_RESULT_CAN_RECOVER,
    pciif.XEN_PCI_OP_aer_mmio: PCI_ERS_RESULT_RECOVERED,
    pciif.XEN_PCI_OP_aer_slotreset: PCI_ERS_RESULT_RECOVERED,
    pciif.XEN_PCI_OP_aer_resume: PCI_ERS_RESULT_RECOVERED,
}


def aer_post(page: memoryview | bytearray, cmd: int, state: int, guest: GuestAddress) -> bool:
    """Fill ``aer_op`` and set ``_XEN_PCIB_active``. False (nothing posted) when the
    frontend never announced ``_XEN_PCIB_AERHANDLER``: for ``aer_detected`` and
    ``aer_resume`` the caller then kills the guest (``aerState`` = ``aerfail``)."""
    if cmd not in _DEFAULT_RESULT:
        raise ValueError(f"not an AER command: {cmd}")
    info = xen_pci_sharedinfo.from_buffer(page)
    if not info.flags & pciif.XEN_PCIB_AERHANDLER:
        return False
    info.aer_op.cmd = cmd
    info.aer_op.err = state if cmd == pciif.XEN_PCI_OP_aer_detected else pci_channel_io_normal
    info.aer_op.domain = guest.domain
    info.aer_op.bus = guest.bus
    info.aer_op.devfn = guest.devfn
    info.flags |= pciif.XEN_PCIB_active
    return True


def aer_poll(page: memoryview | bytearray) -> int | None:
    """The frontend's answer once it cleared ``_XEN_PCIB_active``, else None."""
    info = xen_pci_sharedinfo.from_buffer(page)
    if info.flags & pciif.XEN_PCIB_active:
        return None
    return int(info.aer_op.err)


def aer_timeout(page: memoryview | bytearray, cmd: int) -> int:
    """After 300 s: clear the bit, record NONE, and return the step's default result."""
    info = xen_pci_sharedinfo.from_buffer(page)
    info.flags &= ~pciif.XEN_PCIB_active & 0xFFFFFFFF
    info.aer_op.err = PCI_ERS_RESULT_NONE
    return _DEFAULT_RESULT[cmd]


def aer_kills_guest(result: int) -> bool:
    """NONE or DISCONNECT from the guest ends it (``kill_domain_by_device``)."""
    return result in (PCI_ERS_RESULT_NONE, PCI_ERS_RESULT_DISCONNECT)
