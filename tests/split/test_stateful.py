"""Hypothesis state machine over live hot-plug: attach, detach, hostile writes.

Invariants after every step (the truths of fact sheet §1.10, §1.11, §3.5/3.6):
each guest's PCI core lists exactly the devices libxl put in its backend
(``dev-N``), each seized device has at most one owner and it is the guest
whose backend lists it, both XenBus ends are Connected (4/4) whenever a
backend exists, and no guest write ever changes a host BAR.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from xenpci.abi.xenbus import XenbusState as S
from xenpci.devices import catalog
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pcifront.ops import DEFAULT_OP_TIMEOUT
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.machine import Machine

MODELS = ("nic", "nvme", "legacy", "subpage")


class HotPlug(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = Machine(op_timeout=DEFAULT_OP_TIMEOUT, deterministic=True)
        self.fns = [catalog.make(name, SBDF(0, 3 + i, 0, 0))[0] for i, name in enumerate(MODELS)]
        self.m.add_host_devices(self.fns)
        for fn in self.fns:
            self.m.pciback_bind(fn.sbdf)
        self.bars = {fn.sbdf: fn.config.raw()[0x10:0x28] for fn in self.fns}
        self.guests = [self.m.start_guest(f"g{i}", 32 * 1024) for i in range(2)]
        self.attached: dict[SBDF, int] = {}
        self.connects = {d: 0 for d in self.guests}

    def teardown(self) -> None:
        self.m.shutdown()

    def _front(self, domid: int):  # type: ignore[no-untyped-def]
        return self.m.guest(domid).pcifront

    @rule(dev=st.integers(0, len(MODELS) - 1), guest=st.integers(0, 1))
    def attach(self, dev: int, guest: int) -> None:
        fn, domid = self.fns[dev], self.guests[guest]
        if fn.sbdf in self.attached:
            return
        has_backend = any(d == domid for d in self.attached.values())
        lp.device_pci_add_xenstore(
            self.m.xs, domid, f"g{guest}", lp.PciBackendDevice(fn.sbdf), starting=False
        )
        lp.wait_for_backend_state(self.m.xs, domid, S.XenbusStateConnected)
        kernel = self.m.guest(domid)
        front = kernel.wait_for_pcifront()
        # a fresh backend means a fresh frontend connect; else a rescan (one more connect)
        self.connects[domid] = 1 if not has_backend else self.connects[domid] + 1
        assert front.wait_connected(self.connects[domid])
        self.attached[fn.sbdf] = domid

    @precondition(lambda self: bool(self.attached))
    @rule(pick=st.integers(0, 100))
    def detach(self, pick: int) -> None:
        sbdf = sorted(self.attached)[pick % len(self.attached)]
        domid = self.attached.pop(sbdf)
        lp.device_pci_remove_xenstore(self.m.xs, domid, sbdf)
        if any(d == domid for d in self.attached.values()):
            self.connects[domid] += 1
            assert self._front(domid).wait_connected(self.connects[domid])
        else:
            assert self.m.guest(domid).wait(lambda k: k.pcifront is None)
            assert self.m.pciback.wait(lambda d: domid not in d.devices)

    @precondition(lambda self: bool(self.attached))
    @rule(
        pick=st.integers(0, 100),
        offset=st.integers(0, 0x3F),
        size=st.sampled_from([1, 2, 4]),
        value=st.integers(0, 0xFFFFFFFF),
    )
    def guest_write(self, pick: int, offset: int, size: int, value: int) -> None:
        sbdf = sorted(self.attached)[pick % len(self.attached)]
        kernel = self.m.guest(self.attached[sbdf])
        psdev = self.m.stub.get(sbdf)
        back = self.m.pciback.devices[self.attached[sbdf]]
        addr = back.bus.find(psdev)
        assert addr is not None
        dev = kernel.pci.find(addr.sbdf)
        assert dev is not None
        offset -= offset % size
        dev.write_config(offset, size, value & ((1 << (8 * size)) - 1))

    @invariant()
    def guests_see_exactly_their_devices(self) -> None:
        for domid in self.guests:
            entries = (
                {e.sbdf for e in lp.device_pci_list(self.m.xs, domid)}
                if any(d == domid for d in self.attached.values())
                else set()
            )
            mine = {s for s, d in self.attached.items() if d == domid}
            assert entries == mine
            kernel = self.m.guest(domid)
            seen = {(d.vendor, d.device) for d in kernel.pci.devices()}
            want = {
                (self.m.host_function(s).vendor_id, self.m.host_function(s).device_id) for s in mine
            }
            assert seen == want
            if mine:
                be = lp.read_dir(self.m.xs, lp.backend_path(domid))
                fe = lp.read_dir(self.m.xs, lp.frontend_path(domid))
                assert (be["state"], fe["state"]) == ("4", "4")

    @invariant()
    def one_owner_each(self) -> None:
        for fn in self.fns:
            assert self.m.stub.get(fn.sbdf).owner == self.attached.get(fn.sbdf)

    @invariant()
    def host_bars_never_move(self) -> None:
        for fn in self.fns:
            assert fn.config.raw()[0x10:0x28] == self.bars[fn.sbdf]
            assert fn.config.read(regs.PCI_VENDOR_ID, 2) == fn.vendor_id


TestHotPlug = HotPlug.TestCase
TestHotPlug.settings = settings(
    max_examples=6,
    stateful_step_count=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
pytestmark = pytest.mark.timeout(120)
