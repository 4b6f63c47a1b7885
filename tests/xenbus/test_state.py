"""XenBus state machines: handshakes, hot-plug, teardown and vanishing ends.

The expected sequences come from the fact sheet's timelines (pciback.md
§1.11, §2.1, §3.5, §3.6), which paraphrase pciback/pcifront/libxl; the state
numbers are checked against ``xen/io/xenbus.h`` by the abi header test.
"""

from __future__ import annotations

import pytest

from xenpci.abi.xenbus import XenbusState as S
from xenpci.xenbus.state import (
    TRANSITIONS,
    Call,
    DriverCallback,
    InvalidStateValue,
    Role,
    StateError,
    WriteError,
    WriteState,
    XenbusDevice,
    mermaid,
    parse_state,
)

CB = DriverCallback


def pair() -> tuple[XenbusDevice, XenbusDevice]:
    return XenbusDevice(Role.BACKEND), XenbusDevice(Role.FRONTEND)


def connect(be: XenbusDevice, fe: XenbusDevice) -> None:
    """Initial connect, backend probed first (domain creation order)."""
    be.probe()
    fe.probe()
    be.otherend_changed(fe.state)
    fe.otherend_changed(be.state)
    be.otherend_changed(fe.state)


def test_initial_connect_backend_first_exact_sequences() -> None:
    be, fe = pair()
    acts = be.probe()
    assert acts == [
        WriteState(S.XenbusStateInitWait),
        Call(CB.SETUP),
        WriteState(S.XenbusStateInitialised),
    ]
    # attach waits for the frontend
    assert be.state is S.XenbusStateInitialised
    assert fe.probe() == [Call(CB.PUBLISH), WriteState(S.XenbusStateInitialised)]
    assert be.otherend_changed(S.XenbusStateInitialised) == [
        Call(CB.CONNECT),
        WriteState(S.XenbusStateConnected),
    ]
    assert fe.otherend_changed(S.XenbusStateConnected) == [
        Call(CB.CONNECT),
        WriteState(S.XenbusStateConnected),
    ]
    assert be.otherend_changed(S.XenbusStateConnected) == []
    assert be.history == [1, 2, 3, 4]
    assert fe.history == [1, 3, 4]


def test_initial_connect_frontend_first_attaches_from_setup() -> None:
    be, fe = pair()
    fe.probe()
    be.otherend_changed(S.XenbusStateInitialised)  # seen before probe: recorded only
    assert be.state is S.XenbusStateInitialising
    acts = be.probe()
    # "whichever of steps 2/3 completes last triggers" attach
    assert acts[-2:] == [Call(CB.CONNECT), WriteState(S.XenbusStateConnected)]
    assert be.history == [1, 2, 3, 4]


def test_hotplug_cycle_exact_sequence() -> None:
    be, fe = pair()
    connect(be, fe)
    # libxl writes backend state = 7 with the new dev-N
    assert be.switch_state(S.XenbusStateReconfiguring) == [WriteState(S.XenbusStateReconfiguring)]
    assert fe.otherend_changed(be.state) == [
        Call(CB.RECONFIGURE),
        WriteState(S.XenbusStateReconfiguring),
    ]
    assert be.otherend_changed(fe.state) == [
        Call(CB.RECONFIGURE),
        WriteState(S.XenbusStateReconfigured),
    ]
    assert fe.otherend_changed(be.state) == [Call(CB.CONNECT), WriteState(S.XenbusStateConnected)]
    assert be.otherend_changed(fe.state) == [WriteState(S.XenbusStateConnected)]
    assert be.history == [1, 2, 3, 4, 7, 8, 4]
    assert fe.history == [1, 3, 4, 7, 4]


def test_reconfigure_before_frontend_connected() -> None:
    """pcifront_detach_devices from Initialised goes straight to Reconfiguring."""
    be, fe = pair()
    be.probe()
    fe.probe()
    be.otherend_changed(fe.state)  # backend Connected
    be.switch_state(S.XenbusStateReconfiguring)  # hot-plug before fe saw Connected
    assert fe.otherend_changed(S.XenbusStateReconfiguring) == [
        WriteState(S.XenbusStateReconfiguring)
    ]
    be.otherend_changed(fe.state)
    fe.otherend_changed(be.state)
    be.otherend_changed(fe.state)
    assert fe.history == [1, 3, 7, 4]
    assert be.history == [1, 2, 3, 4, 7, 8, 4]


def test_teardown_frontend_closes() -> None:
    be, fe = pair()
    connect(be, fe)
    be.online = False  # libxl device destroy: online = 0, then frontend closes
    assert fe.switch_state(S.XenbusStateClosing) == [WriteState(S.XenbusStateClosing)]
    assert be.otherend_changed(S.XenbusStateClosing) == [
        Call(CB.DISCONNECT),
        WriteState(S.XenbusStateClosing),
    ]
    fe.switch_state(S.XenbusStateClosed)
    assert be.otherend_changed(S.XenbusStateClosed) == [
        WriteState(S.XenbusStateClosed),
        Call(CB.REMOVE),
    ]
    assert be.history == [1, 2, 3, 4, 5, 6, 0]


def test_frontend_closed_while_online_keeps_backend() -> None:
    be, fe = pair()
    connect(be, fe)
    assert be.otherend_changed(S.XenbusStateClosed) == [
        Call(CB.DISCONNECT),
        WriteState(S.XenbusStateClosed),
    ]
    assert be.state is S.XenbusStateClosed


def test_backend_closing_disconnects_frontend() -> None:
    be, fe = pair()
    connect(be, fe)
    acts = be.fatal("setup failed")
    assert acts == [WriteError("setup failed"), WriteState(S.XenbusStateClosing)]
    assert fe.otherend_changed(S.XenbusStateClosing) == [
        Call(CB.DISCONNECT),
        WriteState(S.XenbusStateClosed),
    ]
    assert fe.history == [1, 3, 4, 6]
    # backend Closed afterwards: already Closed, nothing
    assert fe.otherend_changed(S.XenbusStateClosed) == []


def test_frontend_reconfiguring_ignores_backend_closing_as_linux_does() -> None:
    """pcifront_try_disconnect skips any prev_state >= Closing, so also 7."""
    be, fe = pair()
    connect(be, fe)
    be.switch_state(S.XenbusStateReconfiguring)
    fe.otherend_changed(be.state)
    assert fe.otherend_changed(S.XenbusStateClosing) == []
    assert fe.state is S.XenbusStateReconfiguring
    # the backend then vanishing does close it
    assert fe.otherend_vanished() == [Call(CB.DISCONNECT), WriteState(S.XenbusStateClosed)]
    assert fe.history == [1, 3, 4, 7, 6, 0]


@pytest.mark.parametrize("role", list(Role))
def test_otherend_vanishes_mid_handshake(role: Role) -> None:
    dev = XenbusDevice(role)
    dev.probe()
    acts = dev.otherend_changed(S.XenbusStateUnknown)
    assert WriteState(S.XenbusStateClosed) in acts
    assert (Call(CB.REMOVE) in acts) is (role is Role.BACKEND)
    assert Call(CB.DISCONNECT) not in acts  # never attached
    assert dev.state is S.XenbusStateUnknown
    with pytest.raises(StateError) as ei:
        dev.otherend_changed(S.XenbusStateConnected)
    assert ei.value.current is S.XenbusStateUnknown
    assert dev.history[-1] is S.XenbusStateUnknown


@pytest.mark.parametrize("role", list(Role))
def test_every_illegal_switch_raises_and_changes_nothing(role: Role) -> None:
    for src in TRANSITIONS[role]:
        for dst in S:
            if dst is src or dst in TRANSITIONS[role][src]:
                continue
            dev = XenbusDevice(role, state=src)
            with pytest.raises(StateError) as ei:
                dev.switch_state(dst)
            assert ei.value.current is src and ei.value.requested is dst
            assert src.name in str(ei.value) and dst.name in str(ei.value)
            assert dev.state is src and dev.history == [src]


def test_require_guard_names_states() -> None:
    dev = XenbusDevice(Role.FRONTEND)
    dev.probe()
    with pytest.raises(StateError, match=r"probe.*requires XenbusStateInitialising"):
        dev.probe()
    assert dev.history == [1, 3]


def test_switch_to_same_state_is_a_noop() -> None:
    dev = XenbusDevice(Role.BACKEND)
    assert dev.switch_state(S.XenbusStateInitialising) == []
    assert dev.history == [1]


def test_unknown_is_never_a_switch_target_nor_a_start() -> None:
    for role in Role:
        assert all(S.XenbusStateUnknown not in t for t in TRANSITIONS[role].values())
        with pytest.raises(StateError):
            XenbusDevice(role, state=S.XenbusStateUnknown)


@pytest.mark.parametrize(
    ("raw", "want"),
    [(b"4", S.XenbusStateConnected), (b"8\x00", S.XenbusStateReconfigured), ("1\n", 1)],
)
def test_parse_state(raw: bytes | str, want: int) -> None:
    assert parse_state(raw) == want


@pytest.mark.parametrize("raw", [b"", b"9", b"-1", b"4x", b"0x4", b"\xff", b"99999999999"])
def test_parse_state_hostile(raw: bytes) -> None:
    with pytest.raises(InvalidStateValue) as ei:
        parse_state(raw)
    assert ei.value.raw == raw


@pytest.mark.parametrize("role", list(Role))
def test_mermaid_has_every_edge(role: Role) -> None:
    text = mermaid(role)
    assert text.startswith("stateDiagram-v2\n")
    edges = {
        tuple(line.strip().split(" --> "))
        for line in text.splitlines()
        if " --> " in line and "[*]" not in line
    }
    want = {(a.name, b.name) for a, bs in TRANSITIONS[role].items() for b in bs}
    assert edges == want


def test_driver_failed_forgets_unwritten_states() -> None:
    be = XenbusDevice(Role.BACKEND)
    acts = be.probe()  # InitWait, SETUP, Initialised
    assert acts[1] == Call(CB.SETUP)
    # the caller wrote InitWait, then SETUP failed
    assert be.driver_failed(S.XenbusStateInitWait, "no device") == [
        WriteError("no device"),
        WriteState(S.XenbusStateClosing),
    ]
    assert be.history == [1, 2, 5]


def test_driver_failed_never_rewrites_earlier_inputs() -> None:
    be, fe = pair()
    connect(be, fe)
    be.switch_state(S.XenbusStateReconfiguring)
    be.otherend_changed(S.XenbusStateReconfiguring)  # RECONFIGURE, Reconfigured
    be.driver_failed(S.XenbusStateReconfiguring, "export failed")
    assert be.history == [1, 2, 3, 4, 7, 5]
