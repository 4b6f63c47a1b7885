"""The strict (Xen vPCI domU) policy, checked with the PCI layer's own walkers
over the guest's view as an independent reader."""

from __future__ import annotations

from tests.pciback.conftest import GPU_ROM, NIC_BAR0, make_gpu, make_nic, make_vpd_function, seize
from xenpci.pci import regs
from xenpci.pci.capabilities import walk_capabilities, walk_extended_capabilities
from xenpci.pci.config import ConfigSpace
from xenpci.pciback.conf_space import DevData, config_read, config_write
from xenpci.pciback.conf_space.explain import UNHANDLED, explain, write_rules
from xenpci.pciback.pci_stub import PciStub


def guest_view(dd: DevData) -> ConfigSpace:
    """The whole space as the guest reads it, dword by dword."""
    size = dd.hw.config.size
    data = b"".join(
        (config_read(dd, off, 4)[1] & 0xFFFFFFFF).to_bytes(4, "little") for off in range(0, size, 4)
    )
    return ConfigSpace(data, size)


def test_strict_exposes_only_msi_and_msix(stub: PciStub) -> None:
    nic = make_nic()
    host_caps = [c.id for c in walk_capabilities(nic.config)]
    assert regs.PCI_CAP_ID_PM in host_caps and regs.PCI_CAP_ID_EXP in host_caps
    psdev = seize(stub, nic, policy="strict")
    view = guest_view(psdev.dev_data)
    assert [c.id for c in walk_capabilities(view)] == [regs.PCI_CAP_ID_MSIX]
    assert walk_extended_capabilities(view) == []
    # Identity registers are real; the linux default view lists every capability.
    assert view.vendor_id == nic.vendor_id and view.class_code == nic.class_code
    linux = seize(stub, make_nic("0000:03:00.1"))
    assert [c.id for c in walk_capabilities(guest_view(linux.dev_data))] == host_caps


def test_strict_msi_chain_and_no_caps(stub: PciStub) -> None:
    gpu = seize(stub, make_gpu(), policy="strict")
    view = guest_view(gpu.dev_data)
    assert [c.id for c in walk_capabilities(view)] == [regs.PCI_CAP_ID_MSI]
    assert view.read(0x30, 4) == 0  # the ROM is not exposed
    assert gpu.hw.config_read(0x30, 4) == GPU_ROM
    vpd = seize(stub, make_vpd_function(), policy="strict")
    view = guest_view(vpd.dev_data)
    assert not view.read(regs.PCI_STATUS, 2) & regs.PCI_STATUS_CAP_LIST
    assert view.read(regs.PCI_CAPABILITY_LIST, 1) == 0


def test_strict_unhandled_reads_ones_and_drops_writes(stub: PciStub) -> None:
    nic = make_nic()
    psdev = seize(stub, nic, policy="strict")
    dd = psdev.dev_data
    pm = 0x40
    assert config_read(dd, pm, 4) == (0, 0xFFFFFFFF)  # PM capability: hidden
    assert config_read(dd, 0x48 + 8, 2) == (0, 0xFFFF)  # Express DEVCTL
    stub.set_permissive(nic.sbdf)  # has no effect under the strict policy
    before = nic.config_read(0x48 + 8, 2)
    assert config_write(dd, 0x48 + 8, 2, 0xF) == 0
    assert nic.config_read(0x48 + 8, 2) == before
    # Handled registers behave as under Linux' rules.
    assert config_read(dd, 0x10, 4) == (0, NIC_BAR0)


def test_explain_names_rules(stub: PciStub) -> None:
    nic = make_nic()
    psdev = seize(stub, nic)
    dd = psdev.dev_data
    config_write(dd, 4, 2, regs.PCI_COMMAND_SERR | regs.PCI_COMMAND_MEMORY)
    config_write(dd, 0x10, 4, 0xFFFFFFFF)
    diffs = {d.rule: d for d in explain(dd)}
    assert diffs["header.command"].guest_value & regs.PCI_COMMAND_SERR
    assert not diffs["header.command"].host_value & regs.PCI_COMMAND_SERR
    assert diffs["header.bar0"].guest_value == (-0x20000) & 0xFFFFFFFF
    assert diffs["header.bar0"].host_value == NIC_BAR0
    assert "header.vendor_id" not in diffs
    rules = {r.rule: r for r in write_rules(dd)}
    assert "probe" in rules["header.bar0"].effect
    assert rules[UNHANDLED].effect.startswith("dropped")
    # Every difference reported is real: re-reading agrees.
    for d in explain(dd):
        assert config_read(dd, d.offset, d.size)[1] & ((1 << 8 * d.size) - 1) == d.guest_value
        assert nic.config_read(d.offset, d.size) == d.host_value


def test_explain_strict_reports_hidden_space(stub: PciStub) -> None:
    psdev = seize(stub, make_nic(), policy="strict")
    diffs = explain(psdev.dev_data)
    hidden = [d for d in diffs if d.rule == UNHANDLED]
    assert any(d.offset == 0x40 for d in hidden)  # the PM capability
    assert any(d.rule == "strict.capability_list" for d in diffs)


def test_strict_exposes_identity_registers_vpci_reads_as_ones(stub: PciStub) -> None:
    """What the strict docstring promises: vendor/device, class, header type, subsystem,
    interrupt line/pin, cache line, latency and BIST read from the device (line: dom0's
    irq), although Xen's vPCI gives a domU all-ones there."""
    from xenpci.pciback.conf_space import strict

    nic = make_nic()
    nic.config.poke(regs.PCI_CACHE_LINE_SIZE, 1, 0x10)
    nic.config.poke(regs.PCI_BIST, 1, 0x80)
    view = guest_view(seize(stub, nic, policy="strict").dev_data)
    for off, size in (
        (regs.PCI_VENDOR_ID, 4), (regs.PCI_CLASS_REVISION, 4), (regs.PCI_HEADER_TYPE, 1),
        (regs.PCI_SUBSYSTEM_VENDOR_ID, 4), (regs.PCI_INTERRUPT_PIN, 1),
        (regs.PCI_CACHE_LINE_SIZE, 1), (regs.PCI_LATENCY_TIMER, 1), (regs.PCI_BIST, 1),
    ):  # fmt: skip
        assert view.read(off, size) == nic.config_read(off, size) != (1 << 8 * size) - 1, off
    assert view.read(regs.PCI_INTERRUPT_LINE, 1) == nic.config_read(regs.PCI_INTERRUPT_LINE, 1)
    doc = " ".join((strict.__doc__ or "").split())
    for words in ("vendor/device ID", "class code", "header type", "subsystem",
                  "interrupt line and pin", "cache line size", "latency timer", "BIST",
                  "all-ones"):  # fmt: skip
        assert words in doc, words
