"""The toolstack's pause of a domain: ``XEN_DOMCTL_pausedomain`` / ``unpausedomain``.

Mirrors ``domain_pause_by_systemcontroller`` / ``domain_unpause_by_systemcontroller``
(``xen/common/domain.c``), reached through ``libxl_domain_pause`` /
``libxl_domain_unpause`` (``xl pause`` / ``xl unpause``): the controller's pause
count is at most 255 (``EOVERFLOW`` beyond), an unpause of a domain the
controller has not paused is ``EINVAL``, and while the count is non-zero the
domain's vCPU runs nothing; whatever was queued for it (event-channel upcalls,
hence XenStore watch events and pcifront's notifications) runs in order on the
last unpause, as on a real vCPU that was descheduled.

Deliberate difference: the hypervisor model (``xenpci.hv``) has no pause
domctl, so this lives beside the machine and pauses through what hv offers: a
job queued on the domain's vCPU that waits until the last unpause. ``pause``
returns once that job holds the vCPU (``vcpu_sleep_sync``: the vCPU is off
the CPU when the domctl returns). It belongs in ``hv/domain.py`` when hv grows
the domctl. Threads of the guest model that are not its vCPU (the XenStore
client's callback thread) are not stopped; they only act on what the vCPU
delivers, so they go quiet too.
"""

from __future__ import annotations

import threading

from xenpci.hv.domain import Domain
from xenpci.toolstack.errors import LibxlErrorCode, ToolstackError

#: ``domain_pause_by_systemcontroller``'s limit on the toolstack's pause count.
MAX_CONTROLLER_PAUSES = 255


class PauseError(ToolstackError):
    """The pause domctl failed; ``errno`` is Xen's (``EINVAL``, ``EOVERFLOW``, ``ESRCH``)."""

    def __init__(self, domid: int, op: str, errno: str, message: str) -> None:
        self.domid = domid
        self.op = op
        self.errno = errno
        # libxl_domain_(un)pause: any xc failure is ERROR_FAIL, with the errno in the log line
        super().__init__(f"Domain {domid}:{op}: {message} ({errno})", LibxlErrorCode.ERROR_FAIL)


class ControllerPause:
    """One domain's controller pause count, enforced by holding its vCPU."""

    def __init__(self, domain: Domain, *, start_paused: bool = False) -> None:
        self.domain = domain
        self._lock = threading.Lock()
        self._count = 0
        self._gate: threading.Event | None = None
        if start_paused:
            # Built paused (``xl create``): the kernel has not booted, so the vCPU has
            # nothing to run yet and needs no holding; the count is what matters.
            self._count = 1

    @property
    def count(self) -> int:
        return self._count

    @property
    def paused(self) -> bool:
        return self._count > 0

    def pause(self, timeout: float = 10.0) -> None:
        """One more controller pause; the first one takes the vCPU off the CPU."""
        domid = self.domain.domid
        if self.domain.vcpu.on_this_vcpu():
            # a vCPU cannot wait for itself to be descheduled
            raise PauseError(domid, "Pausing domain", "EINVAL", "a domain cannot pause itself")
        with self._lock:
            if self.domain.dying:
                raise PauseError(domid, "Pausing domain", "ESRCH", "the domain is dying")
            if self._count >= MAX_CONTROLLER_PAUSES:
                raise PauseError(
                    domid,
                    "Pausing domain",
                    "EOVERFLOW",
                    f"already paused {MAX_CONTROLLER_PAUSES} times",
                )
            self._count += 1
            if self._count > 1:
                return
            gate, holding = threading.Event(), threading.Event()
            self._gate = gate

            def hold() -> None:
                holding.set()
                gate.wait()

            try:
                self.domain.run(hold)
            except Exception:
                self._count, self._gate = 0, None
                raise PauseError(domid, "Pausing domain", "ESRCH", "the vCPU has stopped") from None
        # Outside the lock: the vCPU may be finishing an upcall that needs ours (never
        # does today) and an unpause must not wait behind a slow pause.
        if not holding.wait(timeout):
            raise PauseError(
                domid, "Pausing domain", "EBUSY", f"vCPU still busy after {timeout:g} s"
            )

    def unpause(self) -> bool:
        """One controller pause less; True when the vCPU runs again (the queued work runs)."""
        with self._lock:
            if self._count == 0:
                raise PauseError(
                    self.domain.domid, "Unpausing domain", "EINVAL", "the domain is not paused"
                )
            self._count -= 1
            if self._count:
                return False
            gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()
        return True

    def release(self) -> None:
        """Let the vCPU go whatever the count (the domain is being destroyed)."""
        with self._lock:
            self._count = 0
            gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()
