"""Stateful property test: any sequence of xl operations keeps the machine's invariants.

Rules: make a device assignable, create a guest, attach, detach, destroy. After every step:
a guest's iomem and ioport permissions are exactly the pages/ports of the BARs of the
devices in its backend; a device has at most one owner, and libxl's ``/libxl/pci`` record,
the backend's ``dev-N`` list and the IOMMU agree on it; the assignable list is what is
bound to pciback and owned by nobody.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from xenpci.pci.address import SBDF
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.errors import Refused
from xenpci.toolstack.host import HostDescription, boot_machine
from xenpci.toolstack.libxl import Libxl, bar_page_ranges
from xenpci.toolstack.xlcfg import DomainConfig, parse_pci_spec

pytestmark = pytest.mark.timeout(120)

DEVICES = [SBDF(0, 3, 0, 0), SBDF(0, 4, 0, 0), SBDF(0, 6, 0, 0), SBDF(0, 6, 0, 1), SBDF(0, 7, 0, 0)]


def _pages(ranges: list[tuple[int, int]]) -> set[int]:
    return {p for a, b in ranges for p in range(a, b + 1)}


class XlMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # deterministic: one thread, libxl's waits are deadlines on a virtual clock
        self.m = boot_machine(HostDescription(), deterministic=True)
        self.libxl = Libxl(self.m, self.m.xs)
        self.guests: list[int] = []
        self.n = 0

    def teardown(self) -> None:
        self.m.shutdown()

    @rule(dev=st.sampled_from(DEVICES))
    def assignable_add(self, dev: SBDF) -> None:
        self.libxl.assignable_add(dev)

    @precondition(lambda self: len(self.guests) < 3)
    @rule()
    def create(self) -> None:
        self.n += 1
        self.guests.append(self.libxl.domain_create(DomainConfig(f"g{self.n}", 16)))

    @precondition(lambda self: self.guests)
    @rule(data=st.data(), dev=st.sampled_from(DEVICES))
    def attach(self, data: st.DataObject, dev: SBDF) -> None:
        g = data.draw(st.sampled_from(self.guests))
        owner = lp.assigned_domid(self.m.xs, dev)
        bound = dev in self.m.pciback_bound()
        try:
            self.libxl.pci_attach(g, parse_pci_spec(str(dev)))
        except Refused as e:
            # each refusal must be the true one
            if e.reason == "already-assigned":
                assert owner is not None
            elif e.reason == "not-assignable":
                assert not bound
            elif e.reason == "split-functions":
                sib = [s for s in DEVICES if s != dev and s.bus == dev.bus]
                assert any(lp.assigned_domid(self.m.xs, s) not in (None, g) for s in sib)
            else:
                raise
        else:
            assert owner is None and bound
            lp.wait_for_backend_state(self.m.xs, g)

    @precondition(lambda self: self.guests)
    @rule(data=st.data())
    def detach(self, data: st.DataObject) -> None:
        g = data.draw(st.sampled_from(self.guests))
        attached = [e.sbdf for e in self.libxl.pci_list(g)]
        if not attached:
            return
        dev = data.draw(st.sampled_from(attached))
        self.libxl.pci_detach(g, parse_pci_spec(str(dev)))

    @precondition(lambda self: self.guests)
    @rule(data=st.data())
    def destroy(self, data: st.DataObject) -> None:
        g = data.draw(st.sampled_from(self.guests))
        self.libxl.domain_destroy(g)
        self.guests.remove(g)

    @invariant()
    def permissions_are_exactly_the_bars(self) -> None:
        for g in self.guests:
            mem: list[tuple[int, int]] = []
            io: list[tuple[int, int]] = []
            for e in self.libxl.pci_list(g):
                for kind, first, nr in bar_page_ranges(self.m.host_function(e.sbdf)):
                    (io if kind == "ioport" else mem).append((first, first + nr - 1))
            snap = self.m.hv.permissions.snapshot(g)
            assert _pages(snap["iomem"]) == _pages(mem)
            assert _pages(snap["ioports"]) == _pages(io)

    @invariant()
    def one_owner_everywhere(self) -> None:
        in_backend: dict[SBDF, int] = {}
        for g in self.guests:
            for e in self.libxl.pci_list(g):
                assert e.sbdf not in in_backend, f"{e.sbdf} in two backends"
                in_backend[e.sbdf] = g
        for dev in DEVICES:
            owner = lp.assigned_domid(self.m.xs, dev)
            assert owner == in_backend.get(dev)
            assert self.m.hv.iommu.owner(dev.sbdf_int) == (owner or 0)

    @invariant()
    def assignable_is_bound_and_unowned(self) -> None:
        want = {d for d in self.m.pciback_bound() if lp.assigned_domid(self.m.xs, d) is None}
        assert {d.sbdf for d in self.libxl.assignable_list()} == want


XlMachine.TestCase.settings = settings(
    max_examples=12,
    stateful_step_count=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestXlMachine = XlMachine.TestCase
