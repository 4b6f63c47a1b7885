"""PciFunction: the conformance suite over every source, reset methods, hooks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.config import ConfigSpace, apply_standard_masks
from xenpci.pci.conformance import ConformanceError, check_pci_function
from xenpci.pci.dump import load_dump
from xenpci.pci.errors import ResetError
from xenpci.pci.function import PciFunction
from xenpci.pci.sysfs import SYSFS_PCI_DEVICES, load_sysfs

from .conftest import DUMP_FILES, DUMPS_DIR, lspci_blocks


@pytest.mark.parametrize("path", DUMP_FILES, ids=lambda p: p.name)
def test_every_dump_function_conforms(path: Path) -> None:
    for fn in load_dump(path):
        check_pci_function(fn)


def test_host_sysfs_functions_conform() -> None:
    if not SYSFS_PCI_DEVICES.is_dir():
        pytest.skip("no /sys/bus/pci on this machine")
    for fn in load_sysfs():
        check_pci_function(fn)


def test_fake_sysfs_functions_conform(fake_sysfs: Callable[..., Path]) -> None:
    cfg = load_dump(DUMPS_DIR / "cap-pcie-2")[0].config.known()
    root = fake_sysfs("0000:01:00.0", cfg, reset_method="flr")
    fake_sysfs("0000:01:00.1", cfg[:64])
    for fn in load_sysfs(root):
        check_pci_function(fn)


def _bare(**kw: object) -> PciFunction:
    cs = ConfigSpace(bytes(256))
    cs.poke(regs.PCI_VENDOR_ID, 4, 0x10D38086)
    cs.poke(regs.PCI_BASE_ADDRESS_0, 4, 0xE000_0000)
    apply_standard_masks(cs, {0: 1 << 20})
    return PciFunction(SBDF(0, 1, 0, 0), cs, source="test:bare", bar_sizes={0: 1 << 20}, **kw)  # type: ignore[arg-type]


def test_conformance_catches_a_lying_source() -> None:
    fn = _bare()
    fn._bar_sizes[0] = 1 << 21  # the source claims 2 MiB; the register decodes 1 MiB
    with pytest.raises(ConformanceError, match="sizes to 1048576"):
        check_pci_function(fn)


class _SideEffects(PciFunction):
    """A model that counts config writes and resets (how D's models hook in)."""

    writes = 0
    resets: list[str]

    def config_write(self, offset: int, size: int, value: int) -> None:
        self.writes += 1
        super().config_write(offset, size, value)

    def on_reset(self, method: str) -> None:
        self.resets.append(method)


def test_subclass_hooks_and_reset_restores_defaults() -> None:
    fn = _SideEffects(SBDF(0, 1, 0, 0), _bare().config, source="model:test", reset_methods=["flr"])
    fn.resets = []
    fn.config_write(regs.PCI_COMMAND, 2, regs.PCI_COMMAND_MEMORY)
    fn.config_write(regs.PCI_BASE_ADDRESS_0, 4, 0xD000_0000)
    assert fn.bars[0].address == 0xD000_0000
    fn.reset("flr")
    assert fn.config_read(regs.PCI_COMMAND, 2) == 0
    assert fn.bars[0].address == 0xE000_0000
    assert fn.resets == ["flr"] and fn.writes == 2
    with pytest.raises(ResetError) as exc:
        fn.reset("bus")
    assert exc.value.supported == ["flr"]


def test_reset_methods_from_capabilities() -> None:
    """Linux's probes: PCIe DEVCAP.FLR, AF TP+FLR, PM without No_Soft_Reset."""
    # 82576 (cap-pcie-2): lspci says "DevCap: ... FLReset+" and PM "NoSoftRst-"
    assert load_dump(DUMPS_DIR / "cap-pcie-2")[0].reset_methods() == ["flr", "pm"]


@pytest.mark.interop
@pytest.mark.parametrize("path", DUMP_FILES, ids=lambda p: p.name)
def test_reset_methods_agree_with_lspci_flags(path: Path) -> None:
    """flr iff lspci shows "FLReset+", af_flr iff "AFCap: TP+ FLR+", pm iff "NoSoftRst-"."""
    for fn, lines in zip(load_dump(path), lspci_blocks(path, "-vvv"), strict=True):
        text = "\n".join(lines)
        methods = fn.reset_methods()
        assert ("flr" in methods) == ("FLReset+" in text), fn.sbdf
        assert ("af_flr" in methods) == ("AFCap: TP+ FLR+" in text), fn.sbdf
        assert ("pm" in methods) == ("NoSoftRst-" in text), fn.sbdf


def test_bad_bars_become_a_note() -> None:
    cs = ConfigSpace(bytes(256))
    cs.poke(regs.PCI_VENDOR_ID, 2, 0x8086)
    cs.poke(regs.PCI_BASE_ADDRESS_5, 4, regs.PCI_BASE_ADDRESS_MEM_TYPE_64)
    fn = PciFunction(SBDF(0, 0, 0, 0), cs, source="test:bad")
    assert fn.bars == ()
    assert any("last slot" in n for n in fn.notes)
