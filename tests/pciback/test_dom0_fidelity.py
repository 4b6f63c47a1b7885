"""Issue 13 §1.2-1.4: what dom0's PCI core does behind pciback's fields -- the
resource-based BARs and ROM, ``dev->irq`` in INTERRUPT_LINE, pcibios_set_master's
latency timer, pci_set_mwi's cache line size and pci_set_power_state's rules."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.interop import require_executable
from tests.pciback.conftest import make_nic, seize
from tests.pciback.test_lspci_interop import guest_function
from xenpci.pci import bar as B
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.pci.config import ConfigSpace, apply_standard_masks
from xenpci.pci.dump import format_dump, load_dump
from xenpci.pci.function import PciFunction
from xenpci.pciback.conf_space import config_read, config_write
from xenpci.pciback.pci_stub import PciStub

DUMPS = Path("/work/shared/data/lspci-dumps")
IDE = Path(__file__).parents[1] / "pci" / "data" / "legacy-ide"
PM = 0x40
ACCESS_DENIED = -3  # XEN_PCI_ERR_access_denied, what PCIBIOS_SET_FAILED maps to


def conventional(
    *, pm_d1d2: bool = True, latency: int = 0, cache_line: int = 0, irq: int | None = None,
    resources: dict[int, B.Resource] | None = None, rom: int = 0, cls_wmask: int = 0xFF,
) -> PciFunction:  # fmt: skip
    """A conventional (non-PCIe) function with a PM capability at 0x40."""
    cs = ConfigSpace(bytes(256), 256)
    cs.poke(0x00, 4, 0x1229_8086)
    cs.poke(regs.PCI_CLASS_REVISION, 4, 0x02000008)
    cs.poke(regs.PCI_STATUS, 2, regs.PCI_STATUS_CAP_LIST)
    cs.poke(regs.PCI_CAPABILITY_LIST, 1, PM)
    cs.poke(regs.PCI_LATENCY_TIMER, 1, latency)
    cs.poke(regs.PCI_CACHE_LINE_SIZE, 1, cache_line)
    cs.poke(regs.PCI_INTERRUPT_PIN, 1, 1)
    cs.poke(regs.PCI_INTERRUPT_LINE, 1, 0x0B)
    cs.poke(PM, 2, regs.PCI_CAP_ID_PM)
    cs.poke(PM + 2, 2, 0x0002 | ((regs.PCI_PM_CAP_D1 | regs.PCI_PM_CAP_D2) if pm_d1d2 else 0))
    cs.poke(regs.PCI_BASE_ADDRESS_0, 4, 0xFEB00000)
    cs.poke(regs.PCI_ROM_ADDRESS, 4, rom)
    sizes = {0: 0x1000}
    apply_standard_masks(cs, sizes)
    cs.set_wmask(regs.PCI_COMMAND, 2, cs.wmask(regs.PCI_COMMAND, 2) | regs.PCI_COMMAND_INVALIDATE)
    cs.set_wmask(PM + 4, 2, regs.PCI_PM_CTRL_STATE_MASK)
    cs.set_wmask(regs.PCI_CACHE_LINE_SIZE, 1, cls_wmask)
    return PciFunction(
        SBDF(0, 2, 0, 0), cs, source="test", bar_sizes=sizes, irq=irq, resources=resources
    )


# --- power state ---------------------------------------------------------------------
def test_d3hot_to_d1_is_access_denied_and_stays_d3hot(stub: PciStub) -> None:
    hw = conventional()
    dd = seize(stub, hw).dev_data
    assert config_write(dd, PM + 4, 2, 3) == 0
    assert config_write(dd, PM + 4, 2, 1) == ACCESS_DENIED  # D1 is supported, but not from D3
    assert hw.config_read(PM + 4, 2) & 3 == 3
    assert config_write(dd, PM + 4, 2, 2) == ACCESS_DENIED
    assert hw.config_read(PM + 4, 2) & 3 == 3


@pytest.mark.parametrize(
    ("path", "ok"),
    [((1,), True), ((1, 2), True), ((1, 3), True), ((2, 1), False), ((3, 0, 1), True)],
)
def test_power_transitions_only_deeper_or_to_d0(
    stub: PciStub, path: tuple[int, ...], ok: bool
) -> None:
    hw = conventional()
    dd = seize(stub, hw).dev_data
    results = [config_write(dd, PM + 4, 2, s) for s in path]
    assert results[:-1] == [0] * (len(path) - 1)
    assert (results[-1] == 0) == ok
    assert hw.config_read(PM + 4, 2) & 3 == (path[-1] if ok else path[-2])


# --- MASTER and MWI --------------------------------------------------------------------
@pytest.mark.parametrize(("before", "after"), [(0, 64), (15, 64), (16, 16), (0xF8, 0xF8)])
def test_master_programs_latency_timer_on_conventional_pci(
    stub: PciStub, before: int, after: int
) -> None:
    hw = conventional(latency=before)
    dd = seize(stub, hw).dev_data
    assert config_write(dd, regs.PCI_COMMAND, 2, regs.PCI_COMMAND_MASTER) == 0
    assert hw.config_read(regs.PCI_LATENCY_TIMER, 1) == after
    assert config_read(dd, regs.PCI_LATENCY_TIMER, 1)[1] == after


def test_master_leaves_pcie_latency_alone(stub: PciStub) -> None:
    hw = make_nic()  # has an Express capability
    assert hw.config_read(regs.PCI_LATENCY_TIMER, 1) == 0
    dd = seize(stub, hw).dev_data
    assert config_write(dd, regs.PCI_COMMAND, 2, regs.PCI_COMMAND_MASTER) == 0
    assert hw.config_read(regs.PCI_LATENCY_TIMER, 1) == 0


@pytest.mark.parametrize(("before", "after"), [(0, 16), (8, 16), (16, 16), (32, 32), (24, 16)])
def test_mwi_programs_cache_line_size(stub: PciStub, before: int, after: int) -> None:
    """pci_set_cacheline_size: keep a multiple of 16 dwords (64 bytes), else write 16."""
    hw = conventional(cache_line=before)
    dd = seize(stub, hw).dev_data
    assert config_write(dd, regs.PCI_COMMAND, 2, regs.PCI_COMMAND_INVALIDATE) == 0
    assert hw.config_read(regs.PCI_CACHE_LINE_SIZE, 1) == after
    assert hw.config_read(regs.PCI_COMMAND, 2) & regs.PCI_COMMAND_INVALIDATE


def test_mwi_refused_when_cache_line_does_not_stick(stub: PciStub) -> None:
    hw = conventional(cache_line=0, cls_wmask=0)  # hard-wired 0
    dd = seize(stub, hw).dev_data
    assert config_write(dd, regs.PCI_COMMAND, 2, regs.PCI_COMMAND_INVALIDATE) == 0
    assert not hw.config_read(regs.PCI_COMMAND, 2) & regs.PCI_COMMAND_INVALIDATE
    assert any("memory-write-invalidate" in w for w in dd.warnings)


# --- INTERRUPT_LINE ------------------------------------------------------------------------
@pytest.mark.parametrize(("irq", "line"), [(None, 0x0B), (43, 43), (275, 275 & 0xFF), (255, 255)])
def test_interrupt_line_is_dev_irq(stub: PciStub, irq: int | None, line: int) -> None:
    hw = conventional(irq=irq)
    dd = seize(stub, hw).dev_data
    assert config_read(dd, regs.PCI_INTERRUPT_LINE, 1)[1] == line


# --- BARs and ROM from resources ----------------------------------------------------------
def test_disabled_rom_shows_the_resource_not_the_register(stub: PciStub) -> None:
    res = {
        0: B.Resource(0, 0xFEB00000, 0x1000, B.IORESOURCE_MEM),
        6: B.Resource(6, 0x50020000, 0x20000, B.IORESOURCE_MEM | B.IORESOURCE_READONLY),
    }
    hw = conventional(rom=0xFFFE0000, resources=res)
    dd = seize(stub, hw).dev_data
    assert config_read(dd, regs.PCI_ROM_ADDRESS, 4)[1] == 0x50020000
    assert config_write(dd, regs.PCI_ROM_ADDRESS, 4, 0xFFFFF800) == 0
    assert config_read(dd, regs.PCI_ROM_ADDRESS, 4)[1] == 0xFFFE0000  # -128K
    assert hw.config_read(regs.PCI_ROM_ADDRESS, 4) == 0xFFFE0000  # hardware untouched


def test_enhanced_allocation_bar_registers_read_zero(stub: PciStub) -> None:
    ea = B.IORESOURCE_MEM | B.IORESOURCE_MEM_64 | B.IORESOURCE_PREFETCH | B.IORESOURCE_PCI_EA_BEI
    res = {0: B.Resource(0, 0x40_0120_0000, 2 << 20, ea | 0xC)}
    hw = conventional(resources=res)
    hw.config.poke(regs.PCI_BASE_ADDRESS_0, 4, 0)
    dd = seize(stub, hw).dev_data
    assert config_read(dd, regs.PCI_BASE_ADDRESS_0, 4)[1] == 0x0120_000C
    assert config_read(dd, regs.PCI_BASE_ADDRESS_1, 4)[1] == 0x40
    config_write(dd, regs.PCI_BASE_ADDRESS_0, 4, 0xFFFFFFFF)
    assert config_read(dd, regs.PCI_BASE_ADDRESS_0, 4)[1] == 0xFFE0000C


def test_legacy_ide_bars_as_linux_shows_them(stub: PciStub) -> None:
    """LEGACY_IO_RESOURCE has no register type bits: bar_init gives start | 0."""
    ide = load_dump(IDE)[0]
    dd = seize(stub, ide).dev_data
    want = {0: (0x1F0, 0xFFFFFFF8), 1: (0x3F6, 0xFFFFFFFF), 2: (0x170, 0xFFFFFFF8)}
    for index, (val, probe) in want.items():
        off = regs.PCI_BASE_ADDRESS_0 + 4 * index
        assert config_read(dd, off, 4)[1] == val
        config_write(dd, off, 4, 0xFFFFFFFF)
        assert config_read(dd, off, 4)[1] == probe
    assert config_read(dd, regs.PCI_BASE_ADDRESS_4, 4)[1] == 0xC041


@pytest.mark.interop
def test_guest_regions_are_dom0_resources_for_every_shared_dump(tmp_path: Path) -> None:
    """Real lspci reads the guest's view of every seizable function of the shared dumps:
    each sized region is at the address the host's own lspci printed (Linux's resource
    start), and INTERRUPT_LINE shows the routed IRQ."""
    lspci = require_executable("lspci")
    region = (
        r"(?:Region (\d+): (?:\[virtual\] )?(?:I/O ports|Memory) at|Expansion ROM at) ([0-9a-f]+)"
    )

    host_re = re.compile(r"^\t(?:\[virtual\] )?" + region + r".*\[size=", re.M)
    guest_re = re.compile(r"^\t" + region, re.M)
    checked = 0
    for path in sorted(p for p in DUMPS.iterdir() if p.name != "README.md"):
        texts = path.read_text(encoding="latin-1").split("\n\n")
        for fn, text in zip(load_dump(path), [t for t in texts if t.strip()], strict=True):
            if fn.config.known_size < 64 or fn.config.header_type not in (0, 1):
                continue
            stub = PciStub()
            dd = stub.seize(fn).dev_data
            guest = guest_function(dd)
            out = tmp_path / "g.txt"
            out.write_text(format_dump([guest]))
            seen = subprocess.run(
                [lspci, "-F", str(out), "-vv"], capture_output=True, text=True, check=True
            ).stdout
            want = {(m[0] or "rom", int(m[1], 16)) for m in host_re.findall(text)}
            got = {(m[0] or "rom", int(m[1], 16)) for m in guest_re.findall(seen)}
            assert want <= got, (path.name, fn.sbdf, want, got)
            checked += len(want)
            if fn.irq is not None:
                assert guest.config.read(regs.PCI_INTERRUPT_LINE, 1) == fn.irq & 0xFF
    assert checked >= 15


@pytest.mark.parametrize("irq", [None, 43])
def test_libxl_maps_the_irq_the_guest_sees(stub: PciStub, irq: int | None) -> None:
    """libxl reads sysfs irq to map the guest's pirq; pciback shows the same dev->irq."""
    from xenpci.toolstack.libxl import legacy_irq

    hw = conventional(irq=irq)
    dd = seize(stub, hw).dev_data
    assert legacy_irq(hw) == config_read(dd, regs.PCI_INTERRUPT_LINE, 1)[1] == (irq or 0x0B)
