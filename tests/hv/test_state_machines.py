"""Stateful properties: grants never leak a frame; events never reach a dead or rebound port.

Hypothesis drives arbitrary sequences of calls by arbitrary domains against a
small model of what *should* be allowed; after every step the invariants are
checked against the hypervisor's own bookkeeping and against the memory
itself (a revoked view must raise, a live one must show the granter's bytes).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from xenpci.hv import (
    PAGE_SIZE,
    Domain,
    EvtchnError,
    GrantError,
    GrantMapping,
    HvError,
    Hypervisor,
    NoSuchDomain,
    PortState,
)

SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NAMES = st.sampled_from(["a", "b", "c"])
DOMS = st.integers(0, 4)  # 0-3: a live domain (modulo); 4: a domid nobody has
PAGES = 4


@dataclass
class Grant:
    granter: Domain
    grantee: int
    gfn: int
    readonly: bool


@dataclass
class Mapping:
    grantee: Domain
    granter: Domain
    gref: int
    mapping: GrantMapping
    gfn: int


class GrantMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.hv = Hypervisor(ram_frames=1024, dom0_memory_kib=4 * PAGES)
        self.live: list[Domain] = [self.hv.dom0]
        self.live += [self.hv.create_domain(n, 4 * PAGES) for n in ("ga", "gb")]
        self.grants: dict[tuple[int, int], Grant] = {}  # keyed by (id(granter), gref)
        self.maps: list[Mapping] = []
        self.dead_views: list[memoryview] = []
        self.counter = 0

    def teardown(self) -> None:
        self.hv.shutdown()

    def pick(self, i: int) -> Domain | None:
        return self.live[i % len(self.live)] if i < 4 else None

    def domid(self, i: int) -> int:
        d = self.pick(i)
        return d.domid if d is not None else 200 + i

    @precondition(lambda self: len(self.live) < 4)
    @rule()
    def create(self) -> None:
        self.counter += 1
        self.live.append(self.hv.create_domain(f"g{self.counter}", 4 * PAGES))

    @rule(i=st.integers(0, 4))
    def destroy(self, i: int) -> None:
        guests = self.live[1:]
        if i == 4 or not guests:
            with pytest.raises(NoSuchDomain):
                self.hv.destroy_domain(200 + i)
            return
        dom = guests[i % len(guests)]
        self.hv.destroy_domain(dom.domid)
        self.live.remove(dom)
        for m in [m for m in self.maps if m.grantee is dom]:
            self.maps.remove(m)
            self.dead_views.append(m.mapping.view)
        for key in [k for k, g in self.grants.items() if g.granter is dom]:
            del self.grants[key]
        # Mappings *of* the dead domain's grants stay valid until unmapped.
        if any(m.granter is dom for m in self.maps):
            event("a granter died with its frames mapped")

    @rule(g=DOMS, t=DOMS, gfn=st.integers(0, PAGES), ro=st.booleans())
    def grant(self, g: int, t: int, gfn: int, ro: bool) -> None:
        granter = self.pick(g)
        if granter is None:
            return
        target = self.domid(t)
        ok = gfn < PAGES and target != granter.domid and self.pick(t) is not None
        try:
            gref = granter.hypercalls.gnttab_grant_foreign_access(target, gfn, ro)
        except HvError:
            assert not ok
            return
        assert ok
        self.grants[id(granter), gref] = Grant(granter, target, gfn, ro)

    @rule(m=DOMS, g=DOMS, gref=st.integers(6, 12), ro=st.booleans())
    def map(self, m: int, g: int, gref: int, ro: bool) -> None:
        mapper, granter = self.pick(m), self.pick(g)
        if mapper is None:
            return
        gid = granter.domid if granter is not None else 200 + g
        expect = self.grants.get((id(granter), gref)) if granter is not None else None
        ok = expect is not None and expect.grantee == mapper.domid and (ro or not expect.readonly)
        try:
            mapping = mapper.hypercalls.gnttab_map_grant_ref(gid, gref, ro)
        except GrantError:
            assert not ok
            return
        assert ok and granter is not None and expect is not None
        assert mapping.view.readonly == ro
        self.maps.append(Mapping(mapper, granter, gref, mapping, expect.gfn))

    @rule(i=st.integers(0, 20), ro=st.booleans())
    def map_a_live_grant(self, i: int, ro: bool) -> None:
        """Steer towards the interesting states: the named grantee maps a real grant."""
        if not self.grants:
            return
        (_, gref), g = list(self.grants.items())[i % len(self.grants)]
        grantee = next((d for d in self.live if d.domid == g.grantee), None)
        if grantee is not None and g.granter in self.live:
            self.map(self.live.index(grantee), self.live.index(g.granter), gref, ro)
            event("mapped a live grant")

    @rule(i=st.integers(0, 20), data=st.binary(min_size=1, max_size=8))
    def write_through_mapping(self, i: int, data: bytes) -> None:
        if not self.maps:
            return
        m = self.maps[i % len(self.maps)]
        if m.mapping.readonly:
            with pytest.raises(TypeError):
                m.mapping.view[0 : len(data)] = data
            return
        m.mapping.view[0 : len(data)] = data
        if not m.granter.dying:
            gfn = m.gfn
            assert m.granter.hypercalls.read(gfn * PAGE_SIZE, len(data)) == data

    @rule(i=st.integers(0, 20), handle_shift=st.integers(0, 2), who=DOMS)
    def unmap(self, i: int, handle_shift: int, who: int) -> None:
        dom = self.pick(who)
        if dom is None:
            return
        mine = [m for m in self.maps if m.grantee is dom]
        handle = (mine[i % len(mine)].mapping.handle if mine else 0) + handle_shift * 1000
        target = next((m for m in mine if m.mapping.handle == handle), None)
        try:
            dom.hypercalls.gnttab_unmap_grant_ref(handle)
        except GrantError:
            assert target is None
            return
        assert target is not None
        self.maps.remove(target)
        self.dead_views.append(target.mapping.view)

    @rule(g=DOMS, gref=st.integers(6, 12))
    def end_access(self, g: int, gref: int) -> None:
        granter = self.pick(g)
        if granter is None:
            return
        key = (id(granter), gref)
        mapped = any(m.granter is granter and m.gref == gref for m in self.maps)
        try:
            granter.hypercalls.gnttab_end_foreign_access(gref)
        except GrantError as e:
            assert key not in self.grants or mapped
            if mapped:
                assert e.errno == "EBUSY"
            return
        assert key in self.grants and not mapped
        del self.grants[key]

    @invariant()
    def no_frame_reachable_without_ownership_or_live_mapping(self) -> None:
        for d in self.live:
            mine = [m for m in self.maps if m.grantee is d]
            expected = {m.granter.p2m.mfns[m.gfn] for m in mine}
            # The hypervisor's own view of what d can reach equals the model's.
            assert self.hv.grants.mapped_mfns(d.domid) == expected
            for m in mine:
                mfn = m.granter.p2m.mfns[m.gfn]
                # The frame is the granter's: no other live domain (even one reusing
                # a dead granter's domid) has been handed it.
                holders = [o for o in self.live if mfn in o.p2m.mfns]
                assert holders == ([m.granter] if m.granter in self.live else [])
                assert self.hv.machine.owner(mfn) == m.granter.domid
                assert bytes(m.mapping.view) == bytes(self.hv.machine.frame(mfn))
        for view in self.dead_views:
            with pytest.raises(ValueError):
                bytes(view)


@dataclass
class Channel:
    """One interdomain binding as the model sees it: (domain, port) at each end."""

    cid: int
    a: Domain
    pa: int
    b: Domain | None
    pb: int | None


class EvtchnMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.hv = Hypervisor(ram_frames=512, dom0_memory_kib=16)
        self.live: list[Domain] = [self.hv.dom0]
        self.channels: list[Channel] = []
        self.bound: dict[tuple[int, int], int] = {}  # (id(dom), port) -> channel id
        self.masked: set[tuple[int, int]] = set()
        self.delivered: list[tuple[int, int, int]] = []
        self.bad: list[str] = []
        self.lock = threading.Lock()
        self.next_cid = 0
        self.counter = 0

    def teardown(self) -> None:
        self.hv.shutdown()
        assert not self.bad, self.bad

    def drain(self) -> None:
        for d in self.live:
            d.call(lambda: None)

    def handler_for(self, dom: Domain, port: int, cid: int) -> object:
        def handler(p: int) -> None:
            with self.lock:
                if self.bound.get((id(dom), p)) != cid:
                    self.bad.append(f"event for channel {cid} reached d{dom.domid} port {p}")
                self.delivered.append((id(dom), p, cid))

        return handler

    @precondition(lambda self: len(self.live) < 4)
    @rule()
    def create(self) -> None:
        self.counter += 1
        self.live.append(self.hv.create_domain(f"e{self.counter}", 16))

    @rule(i=st.integers(1, 3))
    def destroy(self, i: int) -> None:
        if i >= len(self.live):
            return
        dom = self.live.pop(i)
        self.hv.destroy_domain(dom.domid)
        gone = [c for c in self.channels if dom in (c.a, c.b)]
        with self.lock:
            for c in gone:
                # The peer's end falls back to UNBOUND: no longer bound in the model.
                self.bound.pop((id(c.a), c.pa), None)
                self.bound.pop((id(c.b), c.pb or 0), None)
        self.channels = [c for c in self.channels if c not in gone]

    @rule(a=DOMS, b=DOMS)
    def connect(self, a: int, b: int) -> None:
        if a >= len(self.live) or b >= len(self.live):
            return
        da, db = self.live[a], self.live[b]
        pa = da.hypercalls.evtchn_alloc_unbound(db.domid)
        pb = db.hypercalls.evtchn_bind_interdomain(da.domid, pa)
        cid, self.next_cid = self.next_cid, self.next_cid + 1
        with self.lock:
            self.bound[id(da), pa] = cid
            self.bound[id(db), pb] = cid
        self.masked.discard((id(da), pa))
        self.masked.discard((id(db), pb))
        da.hypercalls.evtchn_set_handler(pa, self.handler_for(da, pa, cid))  # type: ignore[arg-type]
        db.hypercalls.evtchn_set_handler(pb, self.handler_for(db, pb, cid))  # type: ignore[arg-type]
        self.channels.append(Channel(cid, da, pa, db, pb))

    def ends(self, i: int) -> tuple[Channel, Domain, int, Domain, int] | None:
        if not self.channels:
            return None
        c = self.channels[i % len(self.channels)]
        assert c.b is not None and c.pb is not None
        return (c, c.a, c.pa, c.b, c.pb) if i % 2 == 0 else (c, c.b, c.pb, c.a, c.pa)

    @rule(i=st.integers(0, 30))
    def send(self, i: int) -> None:
        e = self.ends(i)
        if e is None:
            return
        c, src, ps, dst, pd = e
        before = len(self.delivered)
        src.hypercalls.evtchn_send(ps)
        self.drain()
        if (id(dst), pd) in self.masked:
            assert dst.hypercalls.evtchn_pending(pd)
            assert len(self.delivered) == before
        else:
            assert self.delivered[before:] == [(id(dst), pd, c.cid)]

    @rule(i=st.integers(0, 30))
    def close(self, i: int) -> None:
        e = self.ends(i)
        if e is None:
            return
        c, src, ps, dst, pd = e
        src.hypercalls.evtchn_close(ps)
        self.channels.remove(c)
        with self.lock:
            del self.bound[id(src), ps]
            del self.bound[id(dst), pd]
        assert dst.hypercalls.evtchn_status(pd).state is PortState.UNBOUND
        with pytest.raises(EvtchnError):
            dst.hypercalls.evtchn_send(pd)
        dst.hypercalls.evtchn_close(pd)
        with pytest.raises(EvtchnError):
            src.hypercalls.evtchn_send(ps)

    @rule(i=st.integers(0, 30), rebind=st.booleans())
    def close_with_an_upcall_in_flight(self, i: int, rebind: bool) -> None:
        """The receiver's vCPU is busy while a send lands and the port is closed
        (and maybe reused): the queued upcall must not reach the closed or new port."""
        e = self.ends(i)
        if e is None:
            return
        c, src, ps, dst, pd = e
        gate = threading.Event()
        dst.run(gate.wait, 10)
        src.hypercalls.evtchn_send(ps)
        self.close_channel(c, src, ps, dst, pd, closer=dst)
        if rebind:
            # The freed port number comes straight back, bound to a fresh channel.
            self.connect(self.live.index(src), self.live.index(dst))
        gate.set()
        self.drain()

    def close_channel(
        self, c: Channel, src: Domain, ps: int, dst: Domain, pd: int, closer: Domain
    ) -> None:
        with self.lock:
            del self.bound[id(src), ps]
            del self.bound[id(dst), pd]
        self.channels.remove(c)
        closer.hypercalls.evtchn_close(pd if closer is dst else ps)
        other, port = (src, ps) if closer is dst else (dst, pd)
        other.hypercalls.evtchn_close(port)

    @rule(i=st.integers(0, 30), on=st.booleans())
    def mask(self, i: int, on: bool) -> None:
        e = self.ends(i)
        if e is None:
            return
        c, _src, _ps, dst, pd = e
        before = len(self.delivered)
        pending = dst.hypercalls.evtchn_pending(pd)
        if on:
            dst.hypercalls.evtchn_mask(pd)
            self.masked.add((id(dst), pd))
        else:
            dst.hypercalls.evtchn_unmask(pd)
            self.masked.discard((id(dst), pd))
            self.drain()
            expect = [(id(dst), pd, c.cid)] if pending else []
            assert self.delivered[before:] == expect

    @rule(d=DOMS, port=st.sampled_from([0, 1, 2, 3, 4096, -1]))
    def send_to_junk(self, d: int, port: int) -> None:
        if d >= len(self.live):
            return
        dom = self.live[d]
        if (id(dom), port) in self.bound:
            return
        with pytest.raises(EvtchnError):
            dom.hypercalls.evtchn_send(port)

    @invariant()
    def ports_match_the_model(self) -> None:
        assert not self.bad, self.bad
        for d in self.live:
            for p in self.hv.evtchn.ports(d.domid):
                st_ = d.hypercalls.evtchn_status(p)
                if (id(d), p) in self.bound:
                    assert st_.state is PortState.INTERDOMAIN


TestGrants = GrantMachine.TestCase
TestGrants.settings = SETTINGS
TestEvtchn = EvtchnMachine.TestCase
TestEvtchn.settings = SETTINGS
