"""Hypothesis: no sequence of guest config writes moves a host BAR or sets host
COMMAND bits outside what pciback lets through."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.pciback.conftest import FakePlatform, make_gpu, make_nic
from xenpci.pci import regs
from xenpci.pciback.conf_space import DeviceOptions, ModuleParams, config_read, config_write
from xenpci.pciback.conf_space.header import PCI_COMMAND_GUEST
from xenpci.pciback.pci_stub import PciStub

BAR_OFFSETS = (0x10, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x30)


@st.composite
def writes(draw: st.DrawFn) -> tuple[int, int, int]:
    size = draw(st.sampled_from((1, 2, 4)))
    # Mostly the header and capabilities, sometimes anywhere in the extended space.
    limit = draw(st.sampled_from((0x40, 0x100, 0x1000)))
    offset = draw(st.integers(0, limit // size - 1)) * size
    value = draw(st.integers(0, (1 << (8 * size)) - 1))
    return offset, size, value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    device=st.sampled_from(("nic", "gpu")),
    policy=st.sampled_from(("linux", "strict")),
    aic=st.booleans(),
    permissive=st.booleans(),
    seq=st.lists(writes(), max_size=40),
)
def test_guest_writes_never_move_bars_or_forbidden_command_bits(
    device: str, policy: str, aic: bool, permissive: bool, seq: list[tuple[int, int, int]]
) -> None:
    hw = make_nic() if device == "nic" else make_gpu()
    stub = PciStub(ModuleParams(), FakePlatform())
    psdev = stub.seize(hw, DeviceOptions(policy=policy))  # type: ignore[arg-type]
    stub.get_pci_dev(hw.sbdf, 1)
    dd = psdev.dev_data
    dd.allow_interrupt_control = aic
    bars = {off: hw.config_read(off, 4) for off in BAR_OFFSETS}
    resets = len(hw.resets)
    forbidden = regs.PCI_COMMAND_PARITY | regs.PCI_COMMAND_SERR | 0xF800
    if not aic:
        forbidden |= regs.PCI_COMMAND_INTX_DISABLE
    for offset, size, value in seq:
        if permissive and (offset, size) in ((4, 2), (4, 4), (4, 1), (5, 1)):
            # Permissive mode only changes what COMMAND writes may do; elsewhere it
            # lets the guest reset the device (FLR), which is permissive's known risk.
            dd.permissive = True
        err = config_write(dd, offset, size, value)
        dd.permissive = False
        assert isinstance(err, int)
        assert {off: hw.config_read(off, 4) for off in BAR_OFFSETS} == bars
        cmd = hw.config_read(regs.PCI_COMMAND, 2)
        assert cmd & forbidden == 0, hex(cmd)
        if len(hw.resets) == resets:  # D3hot->D0 soft reset is the only way decode drops
            assert cmd & regs.PCI_COMMAND_MEMORY
        else:
            resets = len(hw.resets)
        # A read never fails for an aligned in-range request.
        assert config_read(dd, offset, size)[0] == 0


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(0, 0xFFFF), max_size=20))
def test_permissive_command_reaches_hw_only_in_guest_bits(values: list[int]) -> None:
    hw = make_nic()
    stub = PciStub(ModuleParams(permissive=True), FakePlatform())
    psdev = stub.seize(hw)
    before = hw.config_read(regs.PCI_COMMAND, 2)
    for v in values:
        config_write(psdev.dev_data, regs.PCI_COMMAND, 2, v)
        cmd = hw.config_read(regs.PCI_COMMAND, 2)
        outside = ~PCI_COMMAND_GUEST & ~(regs.PCI_COMMAND_IO | regs.PCI_COMMAND_MEMORY) & 0xFFFF
        assert cmd & outside == before & outside
