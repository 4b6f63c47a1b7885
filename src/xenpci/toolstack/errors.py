"""Errors of the toolstack layer, carrying libxl's own error codes.

Mirrors ``libxl_error`` of ``tools/libs/light/libxl_types.idl`` (``ERROR_FAIL``
-3, ``ERROR_INVAL`` -6, ...): xl exits non-zero and prints a message; we keep
the code on the exception so the control protocol can carry it verbatim.
Deliberate difference: libxl reports most failures as a bare ``ERROR_FAIL`` and
a log line; each refusal here is its own class with the data that caused it.
"""

from __future__ import annotations

import enum

from xenpci.errors import XenpciError


class LibxlErrorCode(enum.IntEnum):
    """The subset of ``libxl_error`` the PCI paths return."""

    ERROR_NONSPECIFIC = -1
    ERROR_FAIL = -3
    ERROR_NI = -4
    ERROR_INVAL = -6
    ERROR_TIMEDOUT = -9
    ERROR_DOMAIN_NOTFOUND = -21
    ERROR_NOTFOUND = -23


class ToolstackError(XenpciError):
    """Base of every toolstack error; ``code`` is the libxl error code.

    ``exit_code`` is the status ``xl`` exits with when this error ends a command:
    ``EXIT_FAILURE`` (1) for what libxl refuses, 2 for a malformed spec or BDF on
    the command line (``xl_pci.c``), as the parser's own errors say.
    """

    code: LibxlErrorCode = LibxlErrorCode.ERROR_FAIL
    exit_code: int = 1

    def __init__(
        self, message: str, code: LibxlErrorCode | None = None, *, exit_code: int | None = None
    ) -> None:
        if code is not None:
            self.code = code
        if exit_code is not None:
            self.exit_code = exit_code
        self.message = message
        super().__init__(message)


class BackendStateTimeout(ToolstackError):
    """The backend did not reach the wanted XenBus state in time (``libxl__wait_for_backend``)."""

    def __init__(self, path: str, wanted: int, last: int | None, timeout: float) -> None:
        self.path = path
        self.wanted = wanted
        self.last = last
        self.timeout = timeout
        seen = "absent" if last is None else str(last)
        super().__init__(
            f"backend {path} not ready: wanted state {wanted}, still {seen} after {timeout:g} s",
            LibxlErrorCode.ERROR_FAIL,
        )


class BackendMissing(ToolstackError):
    """The backend's ``state`` node vanished while we waited (``Backend ... does not exist``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"backend {path} does not exist", LibxlErrorCode.ERROR_FAIL)


class DomainGone(ToolstackError):
    """The guest died (``@releaseDomain``) while the toolstack waited on its devices."""

    def __init__(self, domid: int) -> None:
        self.domid = domid
        super().__init__(f"domain {domid} went away", LibxlErrorCode.ERROR_FAIL)


class PauseError(ToolstackError):
    """``libxl_domain_(un)pause`` failed: the pause domctl's errno (``EINVAL``,
    ``EOVERFLOW``, ``EBUSY``, ``ESRCH``) is in ``errno``; libxl returns ``ERROR_FAIL``."""

    def __init__(self, domid: int, op: str, errno: str, message: str) -> None:
        self.domid = domid
        self.op = op
        self.errno = errno
        super().__init__(f"Domain {domid}:{op}: {message}", LibxlErrorCode.ERROR_FAIL)


class DeviceNotAttached(ToolstackError):
    """Detach of a BDF with no ``dev-N`` in the domain's backend."""

    def __init__(self, domid: int, bdf: str) -> None:
        self.domid = domid
        self.bdf = bdf
        super().__init__(
            f"PCI device {bdf} is not attached to domain {domid}", LibxlErrorCode.ERROR_INVAL
        )


class Refused(ToolstackError):
    """An attach/assign refusal; ``reason`` is a short stable tag tests and scripts match on."""

    def __init__(
        self, reason: str, message: str, code: LibxlErrorCode = LibxlErrorCode.ERROR_FAIL
    ) -> None:
        self.reason = reason
        super().__init__(message, code)


class XlError(ToolstackError):
    """An error xl itself reports, on its own stderr line (``find_domain``'s
    "invalid domain identifier", "Not destroying domain 0"), not a libxl log line."""
