"""The XenBus connection state machine of a split-driver device, sans-IO.

Models ``drivers/xen/xenbus/xenbus_client.c`` (``xenbus_switch_state``,
``xenbus_dev_fatal``), the otherend watch of ``xenbus_probe.c``
(``xenbus_otherend_changed``) and the two PCI drivers that react to it:
``xen-pciback/xenbus.c`` (``xen_pcibk_frontend_changed``,
``xen_pcibk_be_watch``) and ``xen-pcifront.c`` (``pcifront_backend_changed``).
The states are ``enum xenbus_state`` of ``xen/io/xenbus.h``.

Like h11, nothing here touches XenStore: inputs are method calls ("the other
end's state node now reads X", "the other end vanished", a local switch
request) and outputs are :class:`Action` values (write our ``state`` node, call
back into the driver). :mod:`xenpci.xenbus.watch` is the thin shell that
connects this to a XenStore client.

Deliberate differences from Linux:

* ``xenbus_switch_state`` accepts any state; here a switch must be an edge of
  :data:`TRANSITIONS` (per role) or it raises :class:`StateError` and changes
  nothing. Linux's unconditional "switch to Connected" on frontend Connected
  (harmless there) is therefore done only from Reconfigured.
* The driver work (mapping the ring, exporting devices) is a callback the
  caller performs, listed before the state write it leads to; the core
  assumes it succeeds and the caller reports a failure with
  :meth:`XenbusDevice.driver_failed` (the unwritten states are forgotten,
  then ``xenbus_dev_fatal``: error node, Closing) or :meth:`XenbusDevice.fatal`.
* A device that has been removed (other end vanished, or the backend
  unregistered) reads as ``XenbusStateUnknown`` -- as ``xenbus_read_driver_state``
  reports for a missing node -- and refuses every further input.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Concatenate, Final, ParamSpec, TypeVar

from xenpci.abi.xenbus import XenbusState
from xenpci.errors import XenpciError

S = XenbusState


class Role(enum.Enum):
    """Which half of the split driver a :class:`XenbusDevice` is."""

    #: The dom0 half (pciback), node ``/local/domain/0/backend/pci/<domid>/0``.
    BACKEND = "backend"
    #: The guest half (pcifront), node ``/local/domain/<domid>/device/pci/0``.
    FRONTEND = "frontend"


class XenbusError(XenpciError):
    """Base of the XenBus layer's errors."""


class StateError(XenbusError):
    """A request that the current state does not allow; the state is unchanged."""

    def __init__(
        self, role: Role, current: XenbusState, requested: XenbusState | str, why: str = ""
    ) -> None:
        self.role = role
        self.current = current
        self.requested = requested
        req = requested.name if isinstance(requested, XenbusState) else requested
        msg = f"{role.value}: cannot go from {current.name} to {req}"
        super().__init__(msg + (f" ({why})" if why else ""))


class InvalidStateValue(XenbusError):
    """A ``state`` node whose text is not an ``enum xenbus_state`` value."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        super().__init__(f"state node holds {raw!r}, not a XenbusState number")


def _edges(spec: Mapping[XenbusState, Iterable[XenbusState]]) -> dict[XenbusState, frozenset[S]]:
    # Teardown may begin from any live state: xenbus_dev_fatal and the
    # toolstack's device destroy both switch to Closing wherever the device is.
    out: dict[XenbusState, frozenset[S]] = {}
    teardown = {S.XenbusStateClosing, S.XenbusStateClosed}
    for state, targets in spec.items():
        extra = set() if state in teardown else teardown
        out[state] = frozenset(targets) | frozenset(extra)
    return out


#: Legal own-state switches, per role: the only edges ``switch_state`` takes.
#: ``XenbusStateUnknown`` is absent as a source and a target: a device starts
#: in Initialising (the toolstack writes ``state = 1``) and reaches Unknown only
#: by being removed.
TRANSITIONS: Final[dict[Role, dict[XenbusState, frozenset[XenbusState]]]] = {
    Role.BACKEND: _edges(
        {
            # xen_pcibk_xenbus_probe
            S.XenbusStateInitialising: {S.XenbusStateInitWait},
            # xen_pcibk_setup_backend
            S.XenbusStateInitWait: {S.XenbusStateInitialised},
            # xen_pcibk_attach (ring mapped, event channel bound)
            S.XenbusStateInitialised: {S.XenbusStateConnected},
            # libxl hot-plug/unplug writes the backend's state = 7 itself
            S.XenbusStateConnected: {S.XenbusStateReconfiguring},
            # xen_pcibk_reconfigure(Reconfiguring)
            S.XenbusStateReconfiguring: {S.XenbusStateReconfigured},
            # frontend back to Connected ends the cycle
            S.XenbusStateReconfigured: {S.XenbusStateConnected},
            S.XenbusStateClosing: {S.XenbusStateClosed},
            S.XenbusStateClosed: set(),
        }
    ),
    Role.FRONTEND: _edges(
        {
            # pcifront_publish_info
            S.XenbusStateInitialising: {S.XenbusStateInitialised},
            # pcifront_try_connect; pcifront_detach_devices when it missed Connected
            S.XenbusStateInitialised: {S.XenbusStateConnected, S.XenbusStateReconfiguring},
            # pcifront_detach_devices
            S.XenbusStateConnected: {S.XenbusStateReconfiguring},
            # pcifront_attach_devices
            S.XenbusStateReconfiguring: {S.XenbusStateConnected},
            S.XenbusStateClosing: {S.XenbusStateClosed},
            S.XenbusStateClosed: set(),
        }
    ),
}

#: States in which a device exists and accepts input.
LIVE_STATES: Final = frozenset(s for s in XenbusState if s is not S.XenbusStateUnknown)


class DriverCallback(enum.Enum):
    """Work the core asks the driver to do; the names say which Linux function."""

    #: frontend: grant the page, allocate the event channel, write
    #: ``pci-op-ref``/``event-channel``/``magic`` (``pcifront_publish_info``).
    PUBLISH = "publish"
    #: backend: export every ``dev-i`` (``xen_pcibk_setup_backend``).
    SETUP = "setup"
    #: backend: map the ring and bind the event channel (``xen_pcibk_attach``);
    #: frontend: scan the published roots (``pcifront_connect``).
    CONNECT = "connect"
    #: backend: export ``state-i = 1`` devices, release ``state-i = 5`` ones
    #: (``xen_pcibk_reconfigure``); frontend: remove the devices whose
    #: ``state-i`` is 5 (``pcifront_detach_devices``).
    RECONFIGURE = "reconfigure"
    #: unbind the event channel, unmap the ring, drop the guest's devices.
    DISCONNECT = "disconnect"
    #: backend: ``device_unregister`` -> release and reset every device.
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class WriteState:
    """Write ``state`` of our own node (``xenbus_switch_state``)."""

    state: XenbusState


@dataclass(frozen=True, slots=True)
class WriteError:
    """Write the error node and log (``xenbus_dev_fatal``)."""

    message: str

    def __post_init__(self) -> None:
        if not self.message:
            raise ValueError("an error node needs a message")


@dataclass(frozen=True, slots=True)
class Call:
    """Ask the driver to do a piece of work."""

    callback: DriverCallback


Action = WriteState | WriteError | Call

_Self = TypeVar("_Self", bound="XenbusDevice")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def require(
    *states: XenbusState,
) -> Callable[[Callable[Concatenate[_Self, _P], _R]], Callable[Concatenate[_Self, _P], _R]]:
    """Guard a :class:`XenbusDevice` method: it runs only in one of ``states``.

    Like qemu.qmp's ``@require(Runstate.IDLE)``: otherwise it raises
    :class:`StateError` naming the current and the required states.
    """
    allowed = frozenset(states)

    def deco(
        fn: Callable[Concatenate[_Self, _P], _R],
    ) -> Callable[Concatenate[_Self, _P], _R]:
        @functools.wraps(fn)
        def wrapper(self: _Self, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            if self.state not in allowed:
                names = "|".join(sorted(s.name for s in allowed))
                raise StateError(self.role, self.state, fn.__name__, f"requires {names}")
            if self._depth == 0:
                # an outermost input: remember where its states begin, for
                # driver_failed()
                self._mark = len(self.history)
            self._depth += 1
            try:
                return fn(self, *args, **kwargs)
            finally:
                self._depth -= 1

        return wrapper

    return deco


@dataclass(slots=True)
class XenbusDevice:
    """One end of a XenBus connection: its own state and what it saw of the other.

    ``history`` is every state the device has been in, in order, starting with
    the initial one, so tests can assert the whole handshake.
    """

    role: Role
    state: XenbusState = S.XenbusStateInitialising
    otherend: XenbusState = S.XenbusStateUnknown
    #: The backend's ``online`` node: while 1, frontend Closed does not
    #: unregister the backend device (the toolstack may reconnect it).
    online: bool = True
    history: list[XenbusState] = field(default_factory=list)
    _attached: bool = False
    _mark: int = 0
    _depth: int = 0

    def __post_init__(self) -> None:
        if self.state is S.XenbusStateUnknown:
            raise StateError(self.role, self.state, self.state, "a device starts live")
        self.history = [self.state]

    # -- local requests ---------------------------------------------------

    @require(*LIVE_STATES)
    def switch_state(self, new: XenbusState) -> list[Action]:
        """Move to ``new`` if :data:`TRANSITIONS` allows it; no-op if already there."""
        if new is self.state:
            # xenbus_switch_state: "if (state == dev->state) return 0"
            return []
        if new not in TRANSITIONS[self.role].get(self.state, frozenset()):
            raise StateError(self.role, self.state, new)
        self.state = new
        self.history.append(new)
        return [WriteState(new)]

    @require(S.XenbusStateInitialising)
    def probe(self) -> list[Action]:
        """The driver bound to the device (``*_xenbus_probe``)."""
        if self.role is Role.FRONTEND:
            return [Call(DriverCallback.PUBLISH), *self.switch_state(S.XenbusStateInitialised)]
        # xen_pcibk_xenbus_probe switches to InitWait and runs the backend
        # watch handler once at once, which sets the backend up.
        acts = self.switch_state(S.XenbusStateInitWait)
        return acts + self.own_node_changed()

    @require(*LIVE_STATES)
    def fatal(self, message: str) -> list[Action]:
        """A driver step failed: ``xenbus_dev_fatal`` (error node, then Closing)."""
        acts: list[Action] = [WriteError(message)]
        if self.state not in (S.XenbusStateClosing, S.XenbusStateClosed):
            acts += self.switch_state(S.XenbusStateClosing)
        return acts

    def driver_failed(self, last_written: XenbusState, message: str) -> list[Action]:
        """A :class:`Call` of the last input failed after ``last_written`` was written.

        The states that input moved to but the caller never wrote are
        forgotten (in Linux the driver fails before switching), then it is
        ``xenbus_dev_fatal``: error node and Closing.
        """
        # not @require'd: that would move the mark this method rolls back to
        if self.state is S.XenbusStateUnknown:
            raise StateError(self.role, self.state, "driver_failed", "device removed")
        while len(self.history) > max(self._mark, 1) and self.history[-1] is not last_written:
            self.history.pop()
        self.state = self.history[-1]
        return self.fatal(message)

    @require(*LIVE_STATES)
    def own_node_changed(self) -> list[Action]:
        """Something under the backend's own node changed (``xen_pcibk_be_watch``)."""
        if self.role is not Role.BACKEND:
            return []
        if self.state is S.XenbusStateInitWait:
            acts: list[Action] = [Call(DriverCallback.SETUP)]
            acts += self.switch_state(S.XenbusStateInitialised)
            return acts + self._backend_attach()
        if self.state is S.XenbusStateInitialised:
            # xen_pcibk_reconfigure(pdev, Initialised): devices added before
            # the frontend connected; no state change.
            return [Call(DriverCallback.RECONFIGURE)]
        return []

    # -- the other end ----------------------------------------------------

    @require(*LIVE_STATES)
    def otherend_changed(self, new: XenbusState) -> list[Action]:
        """The other end's ``state`` node now reads ``new``."""
        if new is S.XenbusStateUnknown:
            return self.otherend_vanished()
        self.otherend = new
        if self.role is Role.BACKEND:
            return self._frontend_changed(new)
        return self._backend_changed(new)

    @require(*LIVE_STATES)
    def otherend_vanished(self) -> list[Action]:
        """The other end's node is gone or its domain was released."""
        self.otherend = S.XenbusStateUnknown
        acts = self._close(S.XenbusStateClosed)
        if self.role is Role.BACKEND:
            acts.append(Call(DriverCallback.REMOVE))
        self._remove()
        return acts

    # -- driver reactions -------------------------------------------------

    def _frontend_changed(self, fe: XenbusState) -> list[Action]:
        # xen_pcibk_frontend_changed
        if fe is S.XenbusStateInitialised:
            return self._backend_attach()
        if fe is S.XenbusStateReconfiguring:
            if self.state is S.XenbusStateReconfiguring:
                return [
                    Call(DriverCallback.RECONFIGURE),
                    *self.switch_state(S.XenbusStateReconfigured),
                ]
            return []
        if fe is S.XenbusStateConnected:
            if self.state is S.XenbusStateReconfigured:
                return self.switch_state(S.XenbusStateConnected)
            return []
        if fe is S.XenbusStateClosing:
            return self._close(S.XenbusStateClosing)
        if fe is S.XenbusStateClosed:
            acts = self._close(S.XenbusStateClosed)
            if not self.online:
                acts.append(Call(DriverCallback.REMOVE))
                self._remove()
            return acts
        return []

    def _backend_attach(self) -> list[Action]:
        # xen_pcibk_attach: both ends must be Initialised.
        if self.state is S.XenbusStateInitialised and self.otherend is S.XenbusStateInitialised:
            self._attached = True
            return [Call(DriverCallback.CONNECT), *self.switch_state(S.XenbusStateConnected)]
        return []

    def _backend_changed(self, be: XenbusState) -> list[Action]:
        # pcifront_backend_changed
        if be is S.XenbusStateConnected:
            if self.state is S.XenbusStateInitialised:
                self._attached = True
                return [Call(DriverCallback.CONNECT), *self.switch_state(S.XenbusStateConnected)]
            return []
        if be in (S.XenbusStateClosing, S.XenbusStateClosed):
            if be is S.XenbusStateClosed and self.state is S.XenbusStateClosed:
                return []
            # pcifront_try_disconnect: "if (prev_state >= XenbusStateClosing)
            # goto out" -- in Linux this also skips Reconfiguring (7) and
            # Reconfigured (8), which compare greater than Closing. Kept.
            if self.state >= S.XenbusStateClosing:
                return []
            return self._close(S.XenbusStateClosed)
        if be is S.XenbusStateReconfiguring:
            # pcifront_detach_devices
            if self.state is S.XenbusStateInitialised:
                self._attached = True
                return self.switch_state(S.XenbusStateReconfiguring)
            if self.state is not S.XenbusStateConnected:
                return []
            return [
                Call(DriverCallback.RECONFIGURE),
                *self.switch_state(S.XenbusStateReconfiguring),
            ]
        if be is S.XenbusStateReconfigured:
            # pcifront_attach_devices
            if self.state is S.XenbusStateReconfiguring:
                return [Call(DriverCallback.CONNECT), *self.switch_state(S.XenbusStateConnected)]
            return []
        return []

    def _close(self, target: XenbusState) -> list[Action]:
        acts: list[Action] = []
        if self._attached:
            self._attached = False
            acts.append(Call(DriverCallback.DISCONNECT))
        if self.state is not S.XenbusStateClosed and self.state is not target:
            acts += self.switch_state(target)
        return acts

    def _remove(self) -> None:
        self.state = S.XenbusStateUnknown
        self.history.append(S.XenbusStateUnknown)


def parse_state(raw: bytes | str) -> XenbusState:
    """Decode a ``state`` node as ``xenbus_read_driver_state`` does (``%d``)."""
    data = raw.encode() if isinstance(raw, str) else raw
    text = data.decode("ascii", "replace").strip("\x00").strip()
    if not text.isdigit() or len(text) > 3:
        raise InvalidStateValue(data)
    value = int(text)
    try:
        return XenbusState(value)
    except ValueError:
        raise InvalidStateValue(data) from None


def mermaid(role: Role) -> str:
    """The transition dict of ``role`` as Mermaid ``stateDiagram-v2`` text."""
    lines = ["stateDiagram-v2", f"    %% XenBus {role.value} (generated from TRANSITIONS)"]
    lines.append(f"    [*] --> {S.XenbusStateInitialising.name}")
    for src, targets in TRANSITIONS[role].items():
        for dst in sorted(targets):
            lines.append(f"    {src.name} --> {dst.name}")
    lines.append(f"    {S.XenbusStateClosed.name} --> [*]: removed")
    return "\n".join(lines) + "\n"
