"""Type-0/1 header rules against PCI 3.0 register semantics and Linux' choices
(``conf_space.c``, ``conf_space_header.c``)."""

from __future__ import annotations

import pytest

from tests.pciback.conftest import (
    GPU_BAR0,
    GPU_BAR2,
    GPU_ROM,
    IRQ_LINE,
    LEGACY_IO,
    NIC_BAR0,
    NIC_BAR3,
    make_gpu,
    make_legacy,
    make_nic,
    seize,
)
from xenpci.abi import pciif
from xenpci.pci import regs
from xenpci.pci.bar import size_bar_by_probe
from xenpci.pciback.conf_space import config_read, config_write
from xenpci.pciback.conf_space.header import PCI_COMMAND_GUEST
from xenpci.pciback.pci_stub import PciStub


def rd(psdev, off, size):  # type: ignore[no-untyped-def]
    err, value = config_read(psdev.dev_data, off, size)
    assert err == 0
    return value


# --- BARs: the guest sees the real BAR and sizes it like hardware -----------------------
@pytest.mark.parametrize(
    ("maker", "index", "off"),
    [
        (make_nic, 0, 0x10),
        (make_nic, 3, 0x1C),
        (make_gpu, 0, 0x10),
        (make_gpu, 2, 0x18),
        (make_legacy, 0, 0x10),
        (make_gpu, 6, 0x30),
    ],
)
def test_bar_sizing_matches_hardware_and_never_writes_host(stub: PciStub, maker, index, off):  # type: ignore[no-untyped-def]
    hw = maker()
    truth = {b.index: b for b in hw.bars}[index]
    host_before = [hw.config_read(o, 4) for o in range(0x10, 0x34, 4)]
    psdev = seize(stub, hw)
    dd = psdev.dev_data

    def read(o: int, size: int) -> int:
        return config_read(dd, o, size)[1] & ((1 << (8 * size)) - 1)

    def write(o: int, size: int, v: int) -> None:
        assert config_write(dd, o, size, v) == 0

    # The same probe Linux' __pci_read_base runs, through pciback, must find the
    # real size and address (the PCI layer's own sizing helper is the oracle).
    assert size_bar_by_probe(read, write, index) == truth.size
    assert read(off, 4) & ~0xF == truth.address & 0xFFFFFFF0
    assert [hw.config_read(o, 4) for o in range(0x10, 0x34, 4)] == host_before


def test_bar_read_is_synthetic_start_or_size_mask(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    assert rd(psdev, 0x10, 4) == NIC_BAR0
    assert config_write(psdev.dev_data, 0x10, 4, 0xFFFFFFFF) == 0
    assert rd(psdev, 0x10, 4) == (-0x20000) & 0xFFFFFFFF  # 128 KiB BAR
    assert config_write(psdev.dev_data, 0x10, 4, NIC_BAR0) == 0
    assert rd(psdev, 0x10, 4) == NIC_BAR0
    assert rd(psdev, 0x1C, 4) == NIC_BAR3


def test_io_bar_probe_ignores_low_two_bits(stub: PciStub) -> None:
    psdev = seize(stub, make_legacy())
    assert rd(psdev, 0x10, 4) == LEGACY_IO | 1
    config_write(psdev.dev_data, 0x10, 4, 0xFFFFFFFC)  # low bits clear: still a probe
    assert rd(psdev, 0x10, 4) == ((-8) & 0xFFFFFFFF) | 1


def test_64bit_bar_upper_half(stub: PciStub) -> None:
    psdev = seize(stub, make_gpu())
    assert rd(psdev, 0x18, 4) == (GPU_BAR2 & 0xFFFFFFFF) | 0xC
    assert rd(psdev, 0x1C, 4) == GPU_BAR2 >> 32
    config_write(psdev.dev_data, 0x1C, 4, 0xFFFFFFFF)
    assert rd(psdev, 0x1C, 4) == 0xFFFFFFFF  # 256 MiB: upper dword of -size is all ones


def test_guest_relocation_attempt_is_ignored(stub: PciStub) -> None:
    """Pointing BAR0 at another device's memory succeeds on the wire and changes nothing."""
    hw = make_nic()
    other = make_gpu()
    psdev = seize(stub, hw)
    assert config_write(psdev.dev_data, 0x10, 4, GPU_BAR0) == 0
    assert hw.config_read(0x10, 4) == NIC_BAR0
    assert rd(psdev, 0x10, 4) == NIC_BAR0
    assert other.config_read(0x10, 4) == GPU_BAR0


def test_bar_restore_only_to_original_value(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    hw.config_write(0x10, 4, 0xF0000000)  # the host BAR drifted (e.g. a reset)
    config_write(psdev.dev_data, 0x10, 4, 0xE0000000)
    assert hw.config_read(0x10, 4) == 0xF0000000
    config_write(psdev.dev_data, 0x10, 4, NIC_BAR0)  # writing the original restores it
    assert hw.config_read(0x10, 4) == NIC_BAR0


def test_byte_writes_to_a_bar_are_not_a_probe(stub: PciStub) -> None:
    psdev = seize(stub, make_nic())
    for i in range(4):
        config_write(psdev.dev_data, 0x10 + i, 1, 0xFF)
    assert rd(psdev, 0x10, 4) == NIC_BAR0


def test_rom_probe_mask_and_enable_bit(stub: PciStub) -> None:
    hw = make_gpu()
    psdev = seize(stub, hw)
    assert rd(psdev, 0x30, 4) == GPU_ROM  # disabled ROM: bit 0 clear
    config_write(psdev.dev_data, 0x30, 4, 0xFFFFF800)  # the ROM probe value (enable clear)
    assert rd(psdev, 0x30, 4) == (-0x10000) & 0xFFFFFFFF
    config_write(psdev.dev_data, 0x30, 4, GPU_ROM | 1)  # try to enable the ROM
    assert rd(psdev, 0x30, 4) == GPU_ROM
    assert hw.config_read(0x30, 4) & regs.PCI_ROM_ADDRESS_ENABLE == 0


def test_one_byte_read_at_bar_returns_whole_dword(stub: PciStub) -> None:
    """Linux never trims a field to the request size: the guest's core truncates."""
    psdev = seize(stub, make_nic())
    assert rd(psdev, 0x10, 1) == NIC_BAR0
    assert rd(psdev, 0x12, 2) == NIC_BAR0 >> 16  # bytes below the request are shifted out


def test_one_byte_read_at_command_returns_16_bits(stub: PciStub) -> None:
    psdev = seize(stub, make_nic())
    config_write(psdev.dev_data, 4, 2, regs.PCI_COMMAND_MEMORY | regs.PCI_COMMAND_SERR)
    value = rd(psdev, 4, 1)
    assert value & 0xFF00 == regs.PCI_COMMAND_SERR & 0xFF00 and value > 0xFF


# --- COMMAND (post-XSA-120) --------------------------------------------------------
CMD = regs
COMMAND_CASES = [
    # (guest writes, permissive, hw bits that must be set after, hw bits that must be clear)
    ("memory enables the device", CMD.PCI_COMMAND_MEMORY, False, CMD.PCI_COMMAND_MEMORY, 0),
    (
        "master via pci_set_master",
        CMD.PCI_COMMAND_MEMORY | CMD.PCI_COMMAND_MASTER,
        False,
        CMD.PCI_COMMAND_MASTER,
        0,
    ),
    (
        "serr never reaches hw",
        CMD.PCI_COMMAND_MEMORY | CMD.PCI_COMMAND_SERR,
        False,
        0,
        CMD.PCI_COMMAND_SERR,
    ),
    (
        "parity never reaches hw even permissive",
        CMD.PCI_COMMAND_PARITY | 2,
        True,
        0,
        CMD.PCI_COMMAND_PARITY,
    ),
    (
        "intx_disable needs allow_interrupt_control",
        CMD.PCI_COMMAND_INTX_DISABLE | 2,
        True,
        0,
        CMD.PCI_COMMAND_INTX_DISABLE,
    ),
]


@pytest.mark.parametrize(("why", "value", "permissive", "hw_set", "hw_clear"), COMMAND_CASES)
def test_command_virtualisation(stub: PciStub, why, value, permissive, hw_set, hw_clear):  # type: ignore[no-untyped-def]
    hw = make_nic()
    psdev = seize(stub, hw)
    psdev.dev_data.permissive = permissive
    assert config_write(psdev.dev_data, 4, 2, value) == 0
    cmd = hw.config_read(4, 2)
    assert cmd & hw_set == hw_set, why
    assert cmd & hw_clear == 0, why
    # The guest reads back its own value for the non-GUEST bits.
    assert rd(psdev, 4, 2) & ~PCI_COMMAND_GUEST == value & ~PCI_COMMAND_GUEST


def test_clearing_memory_does_not_disable_decode(stub: PciStub) -> None:
    """XSA-120: the guest cannot turn off host decode; pci_disable_device only
    drops bus mastering."""
    hw = make_nic()
    psdev = seize(stub, hw)
    config_write(psdev.dev_data, 4, 2, CMD.PCI_COMMAND_MEMORY | CMD.PCI_COMMAND_MASTER)
    assert psdev.dev_data.enable_intx
    config_write(psdev.dev_data, 4, 2, 0)
    assert hw.config_read(4, 2) & CMD.PCI_COMMAND_MEMORY
    assert not hw.config_read(4, 2) & CMD.PCI_COMMAND_MASTER
    assert rd(psdev, 4, 2) & CMD.PCI_COMMAND_MEMORY == 0  # the guest sees what it wrote
    assert not psdev.dev_data.enable_intx


def test_intx_disable_with_allow_interrupt_control(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    stub.set_allow_interrupt_control(hw.sbdf)
    config_write(psdev.dev_data, 4, 2, CMD.PCI_COMMAND_INTX_DISABLE)
    assert hw.config_read(4, 2) & CMD.PCI_COMMAND_INTX_DISABLE
    config_write(psdev.dev_data, 4, 2, 0)
    assert not hw.config_read(4, 2) & CMD.PCI_COMMAND_INTX_DISABLE


def test_command_write_drops_status_half(stub: PciStub) -> None:
    """A 4-byte write at 0x04 hits COMMAND only: STATUS' w1c bits are not cleared,
    even in permissive mode (the write was 'handled')."""
    hw = make_nic()
    psdev = seize(stub, hw)
    psdev.dev_data.permissive = True
    hw.config.poke(regs.PCI_STATUS, 2, regs.PCI_STATUS_SIG_SYSTEM_ERROR)
    config_write(psdev.dev_data, 4, 4, (regs.PCI_STATUS_SIG_SYSTEM_ERROR << 16) | 2)
    assert hw.config_read(regs.PCI_STATUS, 2) & regs.PCI_STATUS_SIG_SYSTEM_ERROR
    # A 2-byte write at 0x06 hits no field: permissive lets it through (w1c).
    config_write(psdev.dev_data, 6, 2, regs.PCI_STATUS_SIG_SYSTEM_ERROR)
    assert not hw.config_read(regs.PCI_STATUS, 2) & regs.PCI_STATUS_SIG_SYSTEM_ERROR


def test_command_virtual_value_survives_reassignment(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    config_write(psdev.dev_data, 4, 2, CMD.PCI_COMMAND_SERR | CMD.PCI_COMMAND_MEMORY)
    stub.put_pci_dev(hw.sbdf)
    stub.get_pci_dev(hw.sbdf, 2)
    assert rd(psdev, 4, 2) & CMD.PCI_COMMAND_SERR


# --- the other header fields --------------------------------------------------------
def test_interrupt_line_shows_dom0_irq_and_ignores_writes(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    assert rd(psdev, regs.PCI_INTERRUPT_LINE, 1) & 0xFF == IRQ_LINE
    psdev.dev_data.permissive = True
    config_write(psdev.dev_data, regs.PCI_INTERRUPT_LINE, 1, 5)
    assert hw.config_read(regs.PCI_INTERRUPT_LINE, 1) == IRQ_LINE


def test_vendor_id_write_ignored_even_permissive(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    psdev.dev_data.permissive = True
    assert config_write(psdev.dev_data, 0, 2, 0xDEAD) == 0
    assert rd(psdev, 0, 2) & 0xFFFF == hw.config_read(0, 2)


def test_cache_line_size_passes_latency_does_not(stub: PciStub) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    config_write(psdev.dev_data, regs.PCI_CACHE_LINE_SIZE, 1, 0x10)
    config_write(psdev.dev_data, regs.PCI_LATENCY_TIMER, 1, 0x40)
    assert hw.config_read(regs.PCI_CACHE_LINE_SIZE, 1) == 0x10
    assert hw.config_read(regs.PCI_LATENCY_TIMER, 1) == 0


@pytest.mark.parametrize(
    ("current", "write", "reaches_hw"),
    [(0x80, 0xC0, True), (0x80, 0x40, True), (0x80, 0x81, False), (0x00, 0x40, True)],
)
def test_bist_only_start(stub: PciStub, current: int, write: int, reaches_hw: bool) -> None:
    hw = make_nic()
    psdev = seize(stub, hw)
    hw.config.poke(regs.PCI_BIST, 1, current)
    hw.config.set_wmask(regs.PCI_BIST, 1, 0xFF)  # let us observe what reaches hardware
    assert config_write(psdev.dev_data, regs.PCI_BIST, 1, write) == 0
    assert (hw.config_read(regs.PCI_BIST, 1) == write) is reaches_hw


def test_bridge_header_fields(stub: PciStub) -> None:
    from xenpci.devices import catalog

    bridge, _ = catalog.make("bridge", "0000:07:00.0")
    psdev = seize(stub, bridge)
    names = [e.field.name for e in psdev.dev_data.config_fields]
    assert "header.bar0" in names and "header.bar1" in names and "header.bar2" not in names
    rom = [e for e in psdev.dev_data.config_fields if e.field.name == "header.rom"]
    assert rom[0].start == regs.PCI_ROM_ADDRESS1
    # Bus numbers are not fields: non-permissive writes are dropped.
    sec = bridge.config_read(regs.PCI_SECONDARY_BUS, 1)
    config_write(psdev.dev_data, regs.PCI_SECONDARY_BUS, 1, sec + 1)
    assert bridge.config_read(regs.PCI_SECONDARY_BUS, 1) == sec


def test_bad_requests_get_invalid_offset(stub: PciStub) -> None:
    psdev = seize(stub, make_nic())
    dd = psdev.dev_data
    for off, size in [(1, 2), (2, 4), (0, 3), (0, 0), (0, 8), (0x11, 4)]:
        assert config_read(dd, off, size) == (pciif.XEN_PCI_ERR_invalid_offset, 0)
        assert config_write(dd, off, size, 0) == pciif.XEN_PCI_ERR_invalid_offset


def test_bar_of_unknown_size_is_unset(stub: PciStub) -> None:
    """A dump without [size=]: pciback cannot answer a probe, so the BAR reads 0."""
    from xenpci.pci.address import SBDF
    from xenpci.pci.config import ConfigSpace
    from xenpci.pci.function import PciFunction

    cs = ConfigSpace(bytes(64), 256)
    cs.poke(0, 4, 0x10008086)
    cs.poke(0x10, 4, 0xFB000000)
    hw = PciFunction(SBDF(0, 2, 0, 0), cs, source="test")
    psdev = seize(stub, hw)
    assert rd(psdev, 0x10, 4) == 0
    assert any("BAR 0: size unknown" in w for w in psdev.dev_data.warnings)
