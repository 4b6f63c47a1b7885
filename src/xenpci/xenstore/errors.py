"""Errors of the XenStore layer.

Across the wire every failure is one of the ``xsd_errors`` names of
``xs_wire.h``; :class:`XsError` carries that name so the request handler can
turn it into an ``XS_ERROR`` reply and the client can raise it back.
"""

from __future__ import annotations

import errno

from xenpci.abi.xs_wire import XSD_ERROR_NAMES
from xenpci.errors import XenpciError


class XenstoreError(XenpciError):
    """Base class of every XenStore error."""


class XsError(XenstoreError):
    """A request failed with an ``XS_ERROR`` code such as ``ENOENT``.

    ``code`` is always a name from the header's ``xsd_errors`` table: a name
    outside it (oxenstored's ``EQUOTA``) cannot be decoded by libxenstore.
    """

    def __init__(self, code: str, detail: str = "") -> None:
        if code not in XSD_ERROR_NAMES:
            raise ValueError(f"{code!r} is not an xsd_errors name")
        self.code = code
        self.errno = int(getattr(errno, code))
        self.detail = detail
        super().__init__(f"{code}: {detail}" if detail else code)


class ProtocolError(XenstoreError):
    """The peer broke the framing (``len`` > 4096): C xenstored drops the connection."""

    def __init__(self, detail: str, length: int | None = None) -> None:
        self.length = length
        super().__init__(detail)


class ConnectionClosed(XenstoreError):
    """The transport to xenstored is gone."""
