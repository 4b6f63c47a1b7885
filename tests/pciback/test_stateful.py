"""Stateful property test: assignments, guest config writes, MSI/MSI-X ops and
releases in any order. Invariants after every step: host BARs never move, a
device has at most one owner, and a released device has bus mastering and
MSI/MSI-X off with its vectors given back."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.pciback.conftest import FakePlatform, make_gpu, make_nic
from tests.pciback.test_ops import msix_op, op
from xenpci.abi import pciif
from xenpci.pci import regs
from xenpci.pciback.pci_stub import PciStub
from xenpci.pciback.pciback_ops import handle_op
from xenpci.pciback.vpci import VpciBackend

BARS = (0x10, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x30)


class TrackingPlatform(FakePlatform):
    def __init__(self) -> None:
        super().__init__()
        self.live: dict[tuple[str, str], int] = {}

    def enable_msi(self, dev, owner, nvec):  # type: ignore[no-untyped-def]
        got = super().enable_msi(dev, owner, nvec)
        self.live[(str(dev.sbdf), "msi")] = owner
        return got

    def disable_msi(self, dev):  # type: ignore[no-untyped-def]
        self.live.pop((str(dev.sbdf), "msi"), None)

    def enable_msix(self, dev, owner, entries):  # type: ignore[no-untyped-def]
        got = super().enable_msix(dev, owner, entries)
        self.live[(str(dev.sbdf), "msix")] = owner
        return got

    def disable_msix(self, dev):  # type: ignore[no-untyped-def]
        self.live.pop((str(dev.sbdf), "msix"), None)


class Passthrough(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.platform = TrackingPlatform()
        self.stub = PciStub(platform=self.platform)
        self.hws = [make_nic(), make_gpu()]
        for hw in self.hws:
            self.stub.seize(hw)
        self.bars = {hw.sbdf: [hw.config_read(o, 4) for o in BARS] for hw in self.hws}
        self.bus: dict[int, VpciBackend] = {}  # domid -> its backend

    def psdev(self, i: int):  # type: ignore[no-untyped-def]
        return self.stub.get(self.hws[i].sbdf)

    @rule(i=st.integers(0, 1), domid=st.integers(1, 3))
    def assign(self, i: int, domid: int) -> None:
        psdev = self.psdev(i)
        if psdev.owner is not None:
            return
        self.stub.get_pci_dev(psdev.sbdf, domid)
        self.bus.setdefault(domid, VpciBackend()).add(psdev, 0)

    @rule(i=st.integers(0, 1))
    def release(self, i: int) -> None:
        psdev = self.psdev(i)
        if psdev.owner is None:
            return
        self.bus[psdev.owner].release(psdev)
        self.stub.put_pci_dev(psdev.sbdf)
        hw = psdev.hw
        assert not hw.config_read(4, 2) & regs.PCI_COMMAND_MASTER
        assert not psdev.dev_data.linux.msi_enabled and not psdev.dev_data.linux.msix_enabled
        assert not any(k[0] == str(hw.sbdf) for k in self.platform.live)

    @precondition(lambda self: bool(self.bus))
    @rule(
        domid=st.integers(1, 3),
        slot=st.integers(0, 2),
        size=st.sampled_from((1, 2, 4)),
        word=st.integers(0, 63),
        value=st.integers(0, 0xFFFFFFFF),
    )
    def guest_write(self, domid: int, slot: int, size: int, word: int, value: int) -> None:
        backend = self.bus.get(domid)
        if backend is None:
            return
        o = op(pciif.XEN_PCI_OP_conf_write, devfn=slot << 3, offset=word * 4, size=size,
               value=value & ((1 << 8 * size) - 1))  # fmt: skip
        handle_op(o, backend, self.platform)

    @rule(domid=st.integers(1, 3), slot=st.integers(0, 2), which=st.integers(0, 3))
    def interrupts(self, domid: int, slot: int, which: int) -> None:
        backend = self.bus.get(domid)
        if backend is None:
            return
        o = [
            op(pciif.XEN_PCI_OP_enable_msi, devfn=slot << 3),
            op(pciif.XEN_PCI_OP_disable_msi, devfn=slot << 3),
            msix_op([0, 1]),
            op(pciif.XEN_PCI_OP_disable_msix, devfn=slot << 3),
        ][which]
        if which == 2:
            o.devfn = slot << 3
        r = handle_op(o, backend, self.platform)
        if r.err == 0 and which in (0, 2):
            psdev = backend.get(0, 0, slot << 3)
            assert psdev is not None
            assert self.platform.calls[-1][2] == psdev.owner == domid  # vectors go to the owner

    @invariant()
    def bars_never_move(self) -> None:
        for hw in self.hws:
            assert [hw.config_read(o, 4) for o in BARS] == self.bars[hw.sbdf]

    @invariant()
    def one_owner(self) -> None:
        for hw in self.hws:
            psdev = self.stub.get(hw.sbdf)
            holders = [d for d, b in self.bus.items() if psdev in b.devices()]
            assert holders == ([psdev.owner] if psdev.owner is not None else [])


Passthrough.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_passthrough_state_machine = Passthrough.TestCase
