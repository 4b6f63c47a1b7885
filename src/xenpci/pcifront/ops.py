"""pcifront's request path: ``do_pci_op`` and the ops built on it.

Models ``do_pci_op``, ``pcifront_bus_read``/``pcifront_bus_write``,
``errno_to_pcibios_err`` and ``pci_frontend_{enable,disable}_msi{,x}`` of
Linux ``drivers/pci/xen-pcifront.c`` (fact sheet §2.2, §2.3).

The shared page is the granted frame (a live ``memoryview``); the op goes in,
``_XEN_PCIF_active`` is set, the backend is notified, and the frontend waits
for the bit to clear, at most ``timeout`` seconds (2 s in Linux), a deadline
on the machine's clock. On timeout it clears the bit itself and reports
``XEN_PCI_ERR_dev_not_found`` (-1), as Linux does.
The config ops' hot path (:meth:`PciOpChannel.request`) packs the op's header
into the page with ``struct`` (no ctypes object per op); ops with MSI-X
entries go through the ctypes ``xen_pci_op``.

With the deterministic executor (``executor=``) the wait runs the machine
until the bit clears or the deadline passes on the virtual clock: it polls
the shared page as Linux's ``xen_poll_irq_timeout`` loop does, so the guest's
own vCPU may issue ops (the guest kernel's scan runs there), and a lost
backend costs exactly 2.0 s of virtual time and no wall time.

Deliberate difference (threaded mode): instead of polling, the event-channel
handler (which runs on the guest's vCPU) sets a ``threading.Event`` that the
caller waits on, so an op must not be issued from the guest's vCPU thread
itself (it would wait for its own upcall): :class:`PciOpChannel` refuses that
with :class:`NotConnected` rather than deadlocking.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from xenpci.abi import pciif
from xenpci.abi.pciif import SH_INFO_MAX_VEC, xen_pci_op, xen_pci_sharedinfo
from xenpci.hv.clock import Clock, Deadline, MonotonicClock
from xenpci.hv.scheduler import Scheduler
from xenpci.pci.pcibios import (
    PCIBIOS_BAD_REGISTER_NUMBER,
    PCIBIOS_DEVICE_NOT_FOUND,
    PCIBIOS_FUNC_NOT_SUPPORTED,
    PCIBIOS_SET_FAILED,
    PCIBIOS_SUCCESSFUL,
)
from xenpci.pcifront.errors import BackendTimeout, NotConnected, PciOpError

ENODEV: Final = 19
EINVAL: Final = 22

#: Linux pcifront's default deadline for one op, in seconds.
DEFAULT_OP_TIMEOUT: Final = 2.0

MONOTONIC: Final = MonotonicClock()
#: pcifront writes the op header with ``pciif.OP_HEADER_U32`` and reads the answer
#: (``OP_ERR``, ``OP_VALUE``) straight on the page's memoryview: no ctypes object per op.
#: A test checks these offsets against the ctypes layout.
_ACTIVE: Final = pciif.XEN_PCIF_active
_M32: Final = 0xFFFFFFFF


def errno_to_pcibios_err(err: int) -> int:
    """``errno_to_pcibios_err``: wire error -> PCIBIOS code; raw errnos pass through."""
    if err == pciif.XEN_PCI_ERR_success:
        return PCIBIOS_SUCCESSFUL
    if err == pciif.XEN_PCI_ERR_dev_not_found:
        return PCIBIOS_DEVICE_NOT_FOUND
    if err in (pciif.XEN_PCI_ERR_invalid_offset, pciif.XEN_PCI_ERR_op_failed):
        return PCIBIOS_BAD_REGISTER_NUMBER
    if err == pciif.XEN_PCI_ERR_not_implemented:
        return PCIBIOS_FUNC_NOT_SUPPORTED
    if err == pciif.XEN_PCI_ERR_access_denied:
        return PCIBIOS_SET_FAILED
    return err


@dataclass(frozen=True, slots=True)
class OpResult:
    """What came back in the shared op (a private copy of it)."""

    err: int
    value: int
    #: ``msix_entries`` as (entry, vector) pairs, only the ones the caller sent.
    msix: tuple[tuple[int, int], ...] = ()

    @property
    def pcibios(self) -> int:
        return errno_to_pcibios_err(self.err)


class PciOpChannel:
    """One shared page and one event channel: strictly one op at a time.

    ``page`` is the frontend's live view of its granted frame; ``notify``
    sends on the event channel bound to the backend; ``on_vcpu`` tells whether
    the caller is on the guest's vCPU thread (where waiting would deadlock).
    Call :meth:`on_event` from the event-channel handler.
    """

    def __init__(
        self,
        page: memoryview,
        notify: Callable[[], None],
        *,
        timeout: float = DEFAULT_OP_TIMEOUT,
        on_vcpu: Callable[[], bool] = lambda: False,
        clock: Clock | None = None,
        executor: Scheduler | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("op timeout must be positive")
        #: The live shared page (read on every upcall: a plain attribute, no property frame).
        self.page = page
        #: The shared page as ``struct xen_pci_sharedinfo`` (a live view).
        self.info = xen_pci_sharedinfo.from_buffer(page)
        self._notify = notify
        self._on_vcpu = on_vcpu
        self._executor = executor
        self._clock: Clock = (
            executor.clock if executor is not None else clock if clock is not None else MONOTONIC
        )
        self.timeout = timeout
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._halted = False
        self.timeouts = 0
        self.ops = 0

    def on_event(self) -> None:
        """The event-channel upcall: the backend answered (or an AER request arrived).

        Deterministic mode polls the page instead (see :meth:`_wait_answer`)."""
        if self._executor is None:
            self._event.set()

    def halt(self) -> None:
        """The guest is being destroyed: fail the op in flight and every later one now.

        A destroyed (or paused-then-destroyed) guest's answers never arrive, since
        its upcalls do not run; without this a rescan in progress would wait out
        the op timeout once per devfn while the toolstack waits on the kernel.
        """
        self._halted = True
        self._event.set()

    def do_pci_op(self, op: xen_pci_op, name: str = "") -> xen_pci_op:
        """Post ``op``, wait for the answer, return a private copy of the shared op.

        Raises :class:`BackendTimeout` (after clearing the active bit) when the
        backend does not answer; callers that want Linux's -1 use :meth:`call`.
        """
        self._check_caller()
        with self._lock:
            if self._halted:
                raise NotConnected("the guest is being destroyed")
            info = self.info
            ctypes.memmove(
                ctypes.addressof(info) + pciif.OP_OFFSET, ctypes.addressof(op), pciif.OP_SIZE
            )
            self._event.clear()
            info.flags |= pciif.XEN_PCIF_active
            self.ops += 1
            self._notify()
            if not self._wait_answer():
                if self._halted:
                    raise NotConnected("the guest is being destroyed")
                raise BackendTimeout(name or pciif.XEN_PCI_OP_NAMES.get(op.cmd, "?"), self.timeout)
            reply = xen_pci_op()
            ctypes.memmove(
                ctypes.addressof(reply), ctypes.addressof(info) + pciif.OP_OFFSET, pciif.OP_SIZE
            )
            return reply

    def request(
        self, cmd: int, domain: int, bus: int, devfn: int, offset: int, size: int, value: int
    ) -> tuple[int, int]:
        """The hot path for config ops: (err, value), -1 on timeout like :meth:`call`.

        Linux memcpy's a whole on-stack ``xen_pci_op`` (its MSI-X entries
        zeroed); here only the header fields are written into the shared op.
        The backend reads the entries only for ``enable_msix``, which goes
        through :meth:`do_pci_op`, so it sees the same request.
        """
        if self._executor is None and self._on_vcpu():
            raise NotConnected("a pci op cannot wait on the vCPU that must run its upcall")
        with self._lock:
            if self._halted:
                return pciif.XEN_PCI_ERR_dev_not_found, value
            page = self.page
            # Each field truncated to its 32 bits, as the ctypes assignment (and C) does;
            # the signed ones (err, offset, size) have the same bytes either way.
            pciif.OP_HEADER_U32.pack_into(
                page,
                pciif.OP_OFFSET,
                cmd & _M32,
                0,
                domain & _M32,
                bus & _M32,
                devfn & _M32,
                offset & _M32,
                size & _M32,
                value & _M32,
            )
            pciif.FLAGS.pack_into(page, 0, pciif.FLAGS.unpack_from(page, 0)[0] | _ACTIVE)
            self.ops += 1
            if self._executor is None:
                self._event.clear()
                self._notify()
                if pciif.FLAGS.unpack_from(page, 0)[0] & _ACTIVE and not self._wait_answer():
                    return pciif.XEN_PCI_ERR_dev_not_found, value
            else:
                ex = self._executor
                # The deadline is taken before anything runs, as ``wait_until`` would.
                deadline = ex.clock.now() + self.timeout
                self._notify()
                # The answer's upcall is not needed (the page is polled): no Event here.
                # Fast path: the backend's upcall is queued behind at most the previous
                # answer's upcall to this guest, so two steps answer the op; else the
                # bounded wait goes on (the same steps, in the same order).
                # ``_answered`` is inlined for these two checks (one Python frame less
                # each); the bounded wait calls it.
                run_one, flags = ex.run_one, pciif.FLAGS
                answered = (
                    run_one()
                    and (
                        not flags.unpack_from(page, 0)[0] & _ACTIVE
                        or self._halted
                        or (
                            run_one()
                            and (not flags.unpack_from(page, 0)[0] & _ACTIVE or self._halted)
                        )
                    )
                ) or ex.run_until(self._answered, deadline=deadline)
                if self._halted:
                    return pciif.XEN_PCI_ERR_dev_not_found, value
                if not answered:
                    self._timed_out()
                    return pciif.XEN_PCI_ERR_dev_not_found, value
            return pciif.OP_ERR.unpack_from(page, pciif.OP_ERR_AT)[0], pciif.OP_VALUE.unpack_from(
                page, pciif.OP_VALUE_AT
            )[0]

    def _check_caller(self) -> None:
        if self._executor is None and self._on_vcpu():
            raise NotConnected("a pci op cannot wait on the vCPU that must run its upcall")

    def _answered(self) -> bool:
        return not pciif.FLAGS.unpack_from(self.page, 0)[0] & _ACTIVE or self._halted

    def _timed_out(self) -> None:
        """Linux's timeout path: clear the active bit ourselves and count it."""
        self.info.flags &= ~_ACTIVE
        self.timeouts += 1

    def _wait_answer(self) -> bool:
        """Wait for the backend to clear the active bit: False on timeout or halt.

        The deadline is absolute on the clock, as in Linux. On timeout the bit
        is cleared here, as ``do_pci_op`` does. A spurious upcall (or one for
        AER) just loops.
        """
        info, active = self.info, pciif.XEN_PCIF_active
        if self._executor is not None:
            # Deterministic: run the machine (the backend's upcall included) until
            # the bit clears or the deadline passes on the virtual clock. This
            # polls the shared page, as xen_poll_irq_timeout does, so the guest's
            # own vCPU may wait here: its upcall is not needed to see the answer.
            answered = self._executor.wait_until(self._answered, self.timeout)
        else:
            deadline = Deadline(self._clock, self.timeout)
            event = self._event
            while info.flags & active and not self._halted:
                left = deadline.remaining()
                if left <= 0:
                    break
                event.wait(left)
                event.clear()
            answered = self._answered()
        if self._halted:
            return False
        if not answered:
            self._timed_out()
            return False
        return True

    def call(self, op: xen_pci_op) -> OpResult:
        """:meth:`do_pci_op` with Linux's timeout behaviour: a lost backend reads as -1."""
        nvec = op.value if op.cmd == pciif.XEN_PCI_OP_enable_msix else 0
        try:
            reply = self.do_pci_op(op)
        except BackendTimeout:
            return OpResult(pciif.XEN_PCI_ERR_dev_not_found, op.value)
        msix = tuple(
            (reply.msix_entries[i].entry, reply.msix_entries[i].vector)
            for i in range(min(nvec, SH_INFO_MAX_VEC))
        )
        return OpResult(reply.err, reply.value, msix)


def make_op(
    cmd: int,
    domain: int,
    bus: int,
    devfn: int,
    *,
    offset: int = 0,
    size: int = 0,
    value: int = 0,
    info: int = 0,
) -> xen_pci_op:
    """A fresh ``xen_pci_op`` (ctypes truncates like C assignments would)."""
    op = xen_pci_op()
    op.cmd, op.domain, op.bus, op.devfn = cmd, domain, bus, devfn
    op.offset, op.size, op.value, op.info = offset, size, value, info
    return op


def conf_read(
    chan: PciOpChannel, domain: int, bus: int, devfn: int, offset: int, size: int
) -> tuple[int, int]:
    """``pcifront_bus_read``: returns (PCIBIOS code, value).

    A raw ``-ENODEV`` from the backend is turned into success with value 0, as
    Linux does; on any other error the value is 0 and the PCI core shows ~0.
    """
    err, value = chan.request(pciif.XEN_PCI_OP_conf_read, domain, bus, devfn, offset, size, 0)
    if err == -ENODEV:
        return PCIBIOS_SUCCESSFUL, 0
    if err == pciif.XEN_PCI_ERR_dev_not_found:
        # Every empty devfn of a scan: ``errno_to_pcibios_err``'s answer, without the call.
        return PCIBIOS_DEVICE_NOT_FOUND, 0
    if err != 0:
        return errno_to_pcibios_err(err), 0
    # pciback never truncates (a 1-byte read at 0x10 returns the whole BAR);
    # the PCI core keeps the access size.
    mask = (1 << (8 * size)) - 1 if size in (1, 2, 4) else 0
    return PCIBIOS_SUCCESSFUL, value & mask


def conf_write(
    chan: PciOpChannel, domain: int, bus: int, devfn: int, offset: int, size: int, value: int
) -> int:
    """``pcifront_bus_write``: returns the PCIBIOS code."""
    err, _ = chan.request(
        pciif.XEN_PCI_OP_conf_write, domain, bus, devfn, offset, size, value & 0xFFFFFFFF
    )
    return errno_to_pcibios_err(err)


def enable_msi(chan: PciOpChannel, domain: int, bus: int, devfn: int) -> int:
    """``pci_frontend_enable_msi``: the pirq of the one MSI vector.

    Any failure, and a zero pirq, is ``-EINVAL`` in Linux: raised as
    :class:`PciOpError` carrying the wire code.
    """
    res = chan.call(make_op(pciif.XEN_PCI_OP_enable_msi, domain, bus, devfn))
    if res.err != 0:
        raise PciOpError("enable_msi", res.err, res.pcibios)
    if res.value == 0:
        raise PciOpError("enable_msi", -EINVAL, -EINVAL, "backend returned pirq 0")
    return res.value


def disable_msi(chan: PciOpChannel, domain: int, bus: int, devfn: int) -> int:
    """``pci_frontend_disable_msi``: the error code (Linux only logs it)."""
    return chan.call(make_op(pciif.XEN_PCI_OP_disable_msi, domain, bus, devfn)).err


def enable_msix(
    chan: PciOpChannel, domain: int, bus: int, devfn: int, entries: Sequence[int]
) -> list[int]:
    """``pci_frontend_enable_msix``: one pirq per MSI-X table entry in ``entries``.

    More than ``SH_INFO_MAX_VEC`` entries is refused locally (-EINVAL) without
    an op, as Linux does. A zero vector for an entry is refused too.
    """
    nvec = len(entries)
    if nvec > SH_INFO_MAX_VEC:
        raise PciOpError("enable_msix", -EINVAL, -EINVAL, f"{nvec} vectors > {SH_INFO_MAX_VEC}")
    op = make_op(pciif.XEN_PCI_OP_enable_msix, domain, bus, devfn, value=nvec)
    for i, entry in enumerate(entries):
        op.msix_entries[i].entry = entry
        op.msix_entries[i].vector = 0xFFFF  # "useless" in Linux: the backend fills it
    res = chan.call(op)
    if res.err != 0:
        raise PciOpError("enable_msix", res.err, res.pcibios)
    if res.value != 0:
        raise PciOpError("enable_msix", res.value, res.value, "backend refused the vectors")
    pirqs = [vector for _entry, vector in res.msix]
    if any(v == 0 for v in pirqs):
        raise PciOpError("enable_msix", -EINVAL, -EINVAL, "backend returned vector 0")
    return pirqs


def disable_msix(chan: PciOpChannel, domain: int, bus: int, devfn: int) -> int:
    """``pci_frontend_disable_msix``: the error code (Linux only logs it)."""
    return chan.call(make_op(pciif.XEN_PCI_OP_disable_msix, domain, bus, devfn)).err
