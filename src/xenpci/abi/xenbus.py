"""XenBus device states of ``xen/include/public/io/xenbus.h``.

Each end of a split driver publishes one of these in its ``state`` node; the
pair of states is the handshake. Transitions are in :mod:`xenpci.xenbus`.
"""

from __future__ import annotations

import enum
from typing import Final


class XenbusState(enum.IntEnum):
    """``enum xenbus_state`` with the C member names."""

    XenbusStateUnknown = 0
    """Never written by a driver; what a missing or unreadable node reads as."""
    XenbusStateInitialising = 1
    """The driver is setting up."""
    XenbusStateInitWait = 2
    """Backend: waiting for the frontend's details (or for hotplug scripts)."""
    XenbusStateInitialised = 3
    """Frontend: ring and event channel published, waiting for the backend."""
    XenbusStateConnected = 4
    """Both ends may talk."""
    XenbusStateClosing = 5
    """An end is going away: the other should stop using the connection."""
    XenbusStateClosed = 6
    """No connection; the device may be removed."""
    XenbusStateReconfiguring = 7
    """Backend: devices are being added or removed on a live connection (pci)."""
    XenbusStateReconfigured = 8
    """Frontend: it has rescanned after a reconfiguration."""


XenbusStateUnknown: Final = XenbusState.XenbusStateUnknown
XenbusStateInitialising: Final = XenbusState.XenbusStateInitialising
XenbusStateInitWait: Final = XenbusState.XenbusStateInitWait
XenbusStateInitialised: Final = XenbusState.XenbusStateInitialised
XenbusStateConnected: Final = XenbusState.XenbusStateConnected
XenbusStateClosing: Final = XenbusState.XenbusStateClosing
XenbusStateClosed: Final = XenbusState.XenbusStateClosed
XenbusStateReconfiguring: Final = XenbusState.XenbusStateReconfiguring
XenbusStateReconfigured: Final = XenbusState.XenbusStateReconfigured
