"""Hypothesis stateful test: random event orders on a backend/frontend pair.

Watches are modelled as they behave in XenStore: a write queues a
notification for the other end, delivered later in any interleaving, and the
delivered handler reads the *current* value of the node (not the value at
the time of the write). The legal pairs below are written from the
handshake timelines of the fact sheet (pciback.md §1.11, §2.1, §3.5), not
from the transition dict under test.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from xenpci.abi.xenbus import XenbusState as S
from xenpci.xenbus.state import (
    TRANSITIONS,
    Action,
    Role,
    StateError,
    WriteState,
    XenbusDevice,
)

TEARDOWN = {S.XenbusStateClosing, S.XenbusStateClosed, S.XenbusStateUnknown}

#: For each live backend state before teardown, the frontend states it can meet.
FRONTEND_WITH_BACKEND: dict[S, set[S]] = {
    # before attach the frontend is at most Initialised
    S.XenbusStateInitialising: {S.XenbusStateInitialising, S.XenbusStateInitialised},
    S.XenbusStateInitWait: {S.XenbusStateInitialising, S.XenbusStateInitialised},
    S.XenbusStateInitialised: {S.XenbusStateInitialising, S.XenbusStateInitialised},
    # attach needed frontend Initialised; the frontend then follows to Connected
    S.XenbusStateConnected: {S.XenbusStateInitialised, S.XenbusStateConnected},
    # libxl asked for a reconfigure; the frontend has not answered yet, or has
    S.XenbusStateReconfiguring: {
        S.XenbusStateInitialised,
        S.XenbusStateConnected,
        S.XenbusStateReconfiguring,
    },
    # the backend answered the frontend's Reconfiguring; it rescans next
    S.XenbusStateReconfigured: {S.XenbusStateReconfiguring, S.XenbusStateConnected},
}


def legal_pair(be: S, fe: S) -> bool:
    if be in TEARDOWN or fe in TEARDOWN:
        return True  # teardown may begin anywhere; the other end lags behind
    return fe in FRONTEND_WITH_BACKEND[be]


class XenbusPair(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.be = XenbusDevice(Role.BACKEND)
        self.fe = XenbusDevice(Role.FRONTEND)
        self.pending = {Role.BACKEND: 0, Role.FRONTEND: 0}

    def dev(self, role: Role) -> XenbusDevice:
        return self.be if role is Role.BACKEND else self.fe

    def other(self, role: Role) -> Role:
        return Role.FRONTEND if role is Role.BACKEND else Role.BACKEND

    def apply(self, role: Role, acts: list[Action]) -> None:
        for a in acts:
            if isinstance(a, WriteState):
                self.pending[self.other(role)] += 1

    @precondition(lambda self: self.be.state is S.XenbusStateInitialising)
    @rule()
    def probe_backend(self) -> None:
        self.apply(Role.BACKEND, self.be.probe())

    @precondition(lambda self: self.fe.state is S.XenbusStateInitialising)
    @rule()
    def probe_frontend(self) -> None:
        self.apply(Role.FRONTEND, self.fe.probe())

    @rule()
    def deliver_to_backend(self) -> None:
        self.deliver(Role.BACKEND)

    @rule()
    def deliver_to_frontend(self) -> None:
        self.deliver(Role.FRONTEND)

    def deliver(self, role: Role) -> None:
        if self.pending[role] == 0:
            return
        self.pending[role] -= 1
        me, them = self.dev(role), self.dev(self.other(role))
        if me.state is S.XenbusStateUnknown:
            return
        self.apply(role, me.otherend_changed(them.state))

    @precondition(lambda self: self.be.state is S.XenbusStateConnected)
    @rule()
    def libxl_hotplug(self) -> None:
        self.apply(Role.BACKEND, self.be.switch_state(S.XenbusStateReconfiguring))

    @rule(
        kind=st.sampled_from(["close", "fatal", "vanish"]),
        role=st.sampled_from(list(Role)),
    )
    def begin_teardown(self, kind: str, role: Role) -> None:
        # one rule for all teardown kinds, so that random runs also get deep
        # into hot-plug cycles before something closes
        d = self.dev(role)
        if d.state is S.XenbusStateUnknown:
            return
        if kind == "close":
            if d.state not in TEARDOWN:
                self.apply(role, d.switch_state(S.XenbusStateClosing))
        elif kind == "fatal":
            self.apply(role, d.fatal("boom"))
        else:
            self.apply(role, d.otherend_vanished())

    @rule(role=st.sampled_from(list(Role)), wanted=st.sampled_from(list(S)))
    def illegal_switch(self, role: Role, wanted: S) -> None:
        d = self.dev(role)
        legal = TRANSITIONS[role].get(d.state, frozenset())
        if d.state is not S.XenbusStateUnknown and (wanted is d.state or wanted in legal):
            return
        before = (d.state, d.otherend, list(d.history))
        with pytest.raises(StateError) as ei:
            d.switch_state(wanted)
        assert ei.value.current is d.state
        assert (d.state, d.otherend, d.history) == before

    @invariant()
    def pair_is_legal(self) -> None:
        assert legal_pair(self.be.state, self.fe.state), (self.be.history, self.fe.history)

    @invariant()
    def history_ends_at_state(self) -> None:
        for d in (self.be, self.fe):
            assert d.history[-1] is d.state
            # every step of the history was an edge, or a removal
            for a, b in zip(d.history, d.history[1:], strict=False):
                assert b in TRANSITIONS[d.role].get(a, frozenset()) or b is S.XenbusStateUnknown


XenbusPair.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestXenbusPair = XenbusPair.TestCase
