"""Errors of the hypervisor layer, each carrying Xen's own code.

Real hypercalls return ``-errno`` (``xen/include/public/errno.h``) and the
grant-table operations return a ``GNTST_*`` status in the op itself
(``xen/include/public/grant_table.h``). Here every failure is an exception that
names the errno (``EPERM``, ``EINVAL`` ...), the operation and the calling
domain, and grant failures also carry their ``GNTST_*`` status. A failing call
changes no state: every check runs before the first mutation.
"""

from __future__ import annotations

from typing import Any

from xenpci.abi import grant_table as gt
from xenpci.errors import XenpciError


class HvError(XenpciError):
    """A hypercall or device-side operation failed.

    ``errno`` is the symbolic Xen errno (e.g. ``"EPERM"``), ``op`` the
    operation name, ``domid`` the caller (``None`` for device-side paths) and
    ``data`` the offending arguments.
    """

    default_errno = "EINVAL"

    def __init__(
        self,
        message: str,
        *,
        errno: str | None = None,
        op: str = "",
        domid: int | None = None,
        **data: Any,
    ) -> None:
        self.errno = errno or self.default_errno
        self.op = op
        self.domid = domid
        self.data = data
        where = f"{op}: " if op else ""
        who = f" (caller d{domid})" if domid is not None else ""
        super().__init__(f"{self.errno}: {where}{message}{who}")


class InvalidArgument(HvError):
    """A malformed argument (out of range, misaligned, wrapping): ``EINVAL``."""

    default_errno = "EINVAL"


class PermissionDenied(HvError):
    """The caller may not do this (privileged call from a guest, no capability): ``EPERM``."""

    default_errno = "EPERM"


class NoSuchDomain(HvError):
    """The domid names no live domain: ``ESRCH``."""

    default_errno = "ESRCH"


class DomainExists(HvError):
    """``domctl_createdomain`` with a domid already in use: ``EEXIST``."""

    default_errno = "EEXIST"


class OutOfMemory(HvError):
    """No machine frame or no free frame of the domain's own memory: ``ENOMEM``."""

    default_errno = "ENOMEM"


class GrantError(HvError):
    """A grant-table operation failed; ``status`` is the ``GNTST_*`` code."""

    default_errno = "EINVAL"

    def __init__(
        self,
        message: str,
        *,
        status: int = gt.GNTST_general_error,
        errno: str | None = None,
        op: str = "",
        domid: int | None = None,
        **data: Any,
    ) -> None:
        self.status = status
        super().__init__(message, errno=errno, op=op, domid=domid, **data)


class EvtchnError(HvError):
    """An event-channel operation failed (bad port, wrong state)."""

    default_errno = "EINVAL"


class DmaFault(HvError):
    """A device's DMA hit an address outside its IOMMU context; nothing was transferred.

    ``sbdf`` and ``bus_addr`` name the access, as the IOMMU fault record does.
    """

    default_errno = "EFAULT"


class MmioDenied(HvError):
    """A domain touched MMIO or I/O ports it has no capability for: ``EPERM``."""

    default_errno = "EPERM"


class DeviceError(HvError):
    """Assign/deassign of a PCI device failed (``EBUSY``, ``ENODEV``, ``EOPNOTSUPP``)."""

    default_errno = "ENODEV"


class DomainDead(HvError):
    """Work was queued on a domain whose vCPU has stopped: ``ESRCH``."""

    default_errno = "ESRCH"


class Deadlock(HvError):
    """Waiting (deterministic mode) for work that can never run: ``EDEADLK``."""

    default_errno = "EDEADLK"
