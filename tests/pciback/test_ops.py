"""Request handling (``pciback_ops.c``) as sans-IO tests, attacks included."""

from __future__ import annotations

import ctypes

import pytest

from tests.pciback.conftest import FakePlatform, make_gpu, make_nic, seize
from xenpci.abi import pciif
from xenpci.abi.pciif import OP_OFFSET, xen_pci_op, xen_pci_sharedinfo
from xenpci.pci import regs
from xenpci.pciback.conf_space import DeviceOptions
from xenpci.pciback.errors import EALREADY, EINVAL, ENXIO
from xenpci.pciback.pci_stub import PciStub, PcistubDevice
from xenpci.pciback.pciback_ops import (
    PCI_ERS_RESULT_CAN_RECOVER,
    PCI_ERS_RESULT_DISCONNECT,
    PCI_ERS_RESULT_NONE,
    OpHeader,
    _new_header,
    aer_kills_guest,
    aer_poll,
    aer_post,
    aer_timeout,
    handle_op,
    serve_shared_page,
)
from xenpci.pciback.vpci import GuestAddress, VpciBackend


def op(cmd: int, devfn: int = 0, offset: int = 0, size: int = 4, value: int = 0,
       domain: int = 0, bus: int = 0) -> xen_pci_op:  # fmt: skip
    o = xen_pci_op()
    o.cmd, o.domain, o.bus, o.devfn = cmd, domain, bus, devfn
    o.offset, o.size, o.value = offset, size, value
    return o


@pytest.fixture
def vpci() -> VpciBackend:
    return VpciBackend()


@pytest.fixture
def nic(stub: PciStub, vpci: VpciBackend) -> PcistubDevice:
    psdev = seize(stub, make_nic(), domid=7)
    vpci.add(psdev, 0)
    return psdev


def test_conf_read_through_the_op(nic: PcistubDevice, vpci, platform) -> None:  # type: ignore[no-untyped-def]
    r = handle_op(op(pciif.XEN_PCI_OP_conf_read, size=4), vpci, platform)
    assert r.err == 0 and r.value == nic.hw.config_read(0, 4)


@pytest.mark.parametrize(
    ("o", "err"),
    [
        (op(pciif.XEN_PCI_OP_conf_read, offset=2, size=4), pciif.XEN_PCI_ERR_invalid_offset),
        (op(pciif.XEN_PCI_OP_conf_read, offset=0, size=3), pciif.XEN_PCI_ERR_invalid_offset),
        (op(pciif.XEN_PCI_OP_conf_read, offset=0, size=-4), pciif.XEN_PCI_ERR_invalid_offset),
        (op(pciif.XEN_PCI_OP_conf_write, offset=1, size=2), pciif.XEN_PCI_ERR_invalid_offset),
        (op(pciif.XEN_PCI_OP_conf_read, offset=0x1000, size=4), EINVAL),
        (op(pciif.XEN_PCI_OP_conf_read, offset=-(2**31), size=4), EINVAL),
        (op(99), pciif.XEN_PCI_ERR_not_implemented),
        (op(pciif.XEN_PCI_OP_aer_detected), pciif.XEN_PCI_ERR_not_implemented),
        (op(pciif.XEN_PCI_OP_enable_multi_msi, value=2), pciif.XEN_PCI_ERR_not_implemented),
        (op(pciif.XEN_PCI_OP_conf_read, devfn=0x08), pciif.XEN_PCI_ERR_dev_not_found),
        (op(pciif.XEN_PCI_OP_conf_read, bus=3), pciif.XEN_PCI_ERR_dev_not_found),
        (op(pciif.XEN_PCI_OP_conf_read, domain=1), pciif.XEN_PCI_ERR_dev_not_found),
        (op(pciif.XEN_PCI_OP_enable_msix, value=129), EINVAL),
        (op(pciif.XEN_PCI_OP_enable_msix, value=0xFFFFFFFF), EINVAL),
    ],
)
def test_hostile_requests(nic: PcistubDevice, vpci, platform, o, err) -> None:  # type: ignore[no-untyped-def]
    before = nic.hw.config.raw()
    r = handle_op(o, vpci, platform)
    assert r.err == err
    assert nic.hw.config.raw() == before
    assert platform.calls == []


def test_devfn_high_bits_masked_by_vpci(nic: PcistubDevice, vpci, platform) -> None:  # type: ignore[no-untyped-def]
    r = handle_op(op(pciif.XEN_PCI_OP_conf_read, devfn=0x100), vpci, platform)
    assert r.err == 0 and r.value == nic.hw.config_read(0, 4)


def test_msi_enable_disable(stub: PciStub, vpci: VpciBackend, platform: FakePlatform) -> None:
    gpu = seize(stub, make_gpu(), domid=5)
    vpci.add(gpu, 0)
    r = handle_op(op(pciif.XEN_PCI_OP_enable_msi), vpci, platform)
    assert (r.err, r.value) == (0, 100)
    assert platform.calls == [("enable_msi", "0000:04:00.0", 5, 1)]
    msi = 0x48
    assert gpu.hw.config_read(msi + 2, 2) & regs.PCI_MSI_FLAGS_ENABLE
    assert gpu.hw.config_read(4, 2) & regs.PCI_COMMAND_INTX_DISABLE
    # Again: -EALREADY inside, collapsed to op_failed with value 0 on the wire.
    r = handle_op(op(pciif.XEN_PCI_OP_enable_msi), vpci, platform)
    assert (r.err, r.value) == (pciif.XEN_PCI_ERR_op_failed, 0)
    assert str(EALREADY) in gpu.dev_data.warnings[-1]
    r = handle_op(op(pciif.XEN_PCI_OP_disable_msi), vpci, platform)
    assert (r.err, r.value) == (0, 11)  # back to the INTx irq
    assert not gpu.hw.config_read(msi + 2, 2) & regs.PCI_MSI_FLAGS_ENABLE
    r = handle_op(op(pciif.XEN_PCI_OP_disable_msi), vpci, platform)  # harmless no-op
    assert (r.err, r.value) == (0, 11)


def test_msi_failure_is_op_failed(stub: PciStub, vpci: VpciBackend) -> None:
    gpu = seize(stub, make_gpu())
    vpci.add(gpu, 0)
    r = handle_op(op(pciif.XEN_PCI_OP_enable_msi), vpci, FakePlatform(refuse=-28))
    assert (r.err, r.value) == (pciif.XEN_PCI_ERR_op_failed, 0)
    nic_op = handle_op(op(pciif.XEN_PCI_OP_enable_msi), vpci, FakePlatform())
    assert nic_op.err == 0


def msix_op(entries: list[int]) -> xen_pci_op:
    o = op(pciif.XEN_PCI_OP_enable_msix, value=len(entries))
    for i, e in enumerate(entries):
        o.msix_entries[i].entry = e
    return o


def enable_memory(psdev: PcistubDevice) -> None:
    cmd = psdev.hw.config_read(4, 2)
    psdev.hw.config_write(4, 2, cmd | regs.PCI_COMMAND_MEMORY)


def test_msix_enable(nic: PcistubDevice, vpci, platform) -> None:  # type: ignore[no-untyped-def]
    enable_memory(nic)
    r = handle_op(msix_op([0, 2, 1]), vpci, platform)
    assert (r.err, r.value, r.msix_vectors) == (0, 0, (100, 101, 102))
    assert nic.hw.config_read(0x84 + 2, 2) & regs.PCI_MSIX_FLAGS_ENABLE
    assert platform.calls[-1] == ("enable_msix", "0000:03:00.0", 7, (0, 2, 1))
    r = handle_op(msix_op([0]), vpci, platform)
    assert (r.err, r.value) == (EALREADY, 1)  # early failure: value keeps n
    r = handle_op(op(pciif.XEN_PCI_OP_disable_msix), vpci, platform)
    assert (r.err, r.value) == (0, 11)


@pytest.mark.parametrize(
    ("entries", "err"),
    [([], EINVAL), ([0, 0], EINVAL), ([4096], EINVAL)],
)
def test_msix_core_checks(nic: PcistubDevice, vpci, platform, entries, err) -> None:  # type: ignore[no-untyped-def]
    enable_memory(nic)
    r = handle_op(msix_op(entries), vpci, platform)
    assert r.err == err and r.value == err & 0xFFFFFFFF
    assert platform.calls == []


def test_msix_needs_memory_decode(nic: PcistubDevice, vpci, platform) -> None:  # type: ignore[no-untyped-def]
    """CVE-2015-8553: no MSI-X while memory decode is off (the guest cleared it?
    it cannot; but the host may have it off)."""
    nic.hw.config.poke(4, 2, nic.hw.config_read(4, 2) & ~regs.PCI_COMMAND_MEMORY)
    r = handle_op(msix_op([0]), vpci, platform)
    assert (r.err, r.value) == (ENXIO, 1)


def test_multi_msi_only_when_enabled(stub: PciStub, vpci: VpciBackend, platform) -> None:  # type: ignore[no-untyped-def]
    from xenpci.devices.builder import ConfigBuilder
    from xenpci.pci.address import SBDF
    from xenpci.pci.function import PciFunction

    b = ConfigBuilder(0x8086, 0x1234, 0x010802, interrupt_pin=1)
    b.bar(0, "mem32", 0x4000)
    msi = b.add_msi(4)
    built = b.build()
    hw = PciFunction(SBDF(0, 10, 0, 0), built.config, source="test", bar_sizes=built.bar_sizes)
    psdev = stub.seize(hw, DeviceOptions(multi_msi=True))
    stub.get_pci_dev(hw.sbdf, 3)
    vpci.add(psdev, 0)
    r = handle_op(op(pciif.XEN_PCI_OP_enable_multi_msi, value=4), vpci, platform)
    assert (r.err, r.value) == (0, 100)
    assert (hw.config_read(msi + 2, 2) & regs.PCI_MSI_FLAGS_QSIZE) >> 4 == 2  # 4 vectors
    r = handle_op(op(pciif.XEN_PCI_OP_disable_msi), vpci, platform)
    assert r.err == 0
    r = handle_op(op(pciif.XEN_PCI_OP_enable_multi_msi, value=8), vpci, platform)
    assert (r.err, r.value) == (pciif.XEN_PCI_ERR_op_failed, 0)  # more than the cap offers


# --- the shared page ------------------------------------------------------------------------
def page_with(o: xen_pci_op, flags: int = pciif.XEN_PCIF_active) -> bytearray:
    page = bytearray(4096)
    info = xen_pci_sharedinfo.from_buffer(page)
    info.flags = flags
    ctypes.memmove(ctypes.addressof(info.op), ctypes.addressof(o), ctypes.sizeof(o))
    return page


def test_serve_writes_back_and_clears_active(nic: PcistubDevice, vpci, platform) -> None:  # type: ignore[no-untyped-def]
    page = page_with(op(pciif.XEN_PCI_OP_conf_read, size=2), pciif.XEN_PCIF_active | 2)
    before = bytes(page)
    res = serve_shared_page(page, vpci, platform)
    assert res is not None and res.err == 0
    info = xen_pci_sharedinfo.from_buffer(page)
    assert info.flags == 2  # AERHANDLER untouched, active cleared
    assert info.op.value == nic.hw.config_read(0, 2)
    changed = [i for i in range(4096) if page[i] != before[i]]
    value_field = range(OP_OFFSET + 28, OP_OFFSET + 32)
    assert all(i == 0 or i in value_field for i in changed)


def test_serve_ignores_spurious_event(nic: PcistubDevice, vpci, platform) -> None:  # type: ignore[no-untyped-def]
    page = page_with(op(pciif.XEN_PCI_OP_conf_write, offset=0x0C, size=1, value=0x10), 0)
    assert serve_shared_page(page, vpci, platform) is None
    assert nic.hw.config_read(0x0C, 1) == 0


def test_double_fetch_is_harmless(nic: PcistubDevice, vpci) -> None:  # type: ignore[no-untyped-def]
    """XSA-155: the guest rewrites the shared op while the backend works on it
    (here: during the hypervisor call). What is handled, and the vectors written
    back, follow the copy taken at the start."""
    enable_memory(nic)
    page = page_with(msix_op([0, 1]))
    info = xen_pci_sharedinfo.from_buffer(page)

    class Racing(FakePlatform):
        def enable_msix(self, dev, owner, entries):  # type: ignore[no-untyped-def]
            info.op.cmd = pciif.XEN_PCI_OP_conf_write
            info.op.value = 128  # the count grows behind our back
            for i in range(128):
                info.op.msix_entries[i].entry = 7
            return super().enable_msix(dev, owner, entries)

    plat = Racing()
    res = serve_shared_page(page, vpci, plat)
    assert res is not None and res.err == 0
    assert plat.calls == [("enable_msix", "0000:03:00.0", 7, (0, 1))]
    assert [info.op.msix_entries[i].vector for i in range(3)] == [100, 101, 0]
    assert info.op.value == 0 and info.op.err == 0


# --- AER relay -----------------------------------------------------------------------------------
def test_aer_handshake() -> None:
    page = bytearray(4096)
    guest = GuestAddress(0, 0, 0x08)
    assert aer_post(page, pciif.XEN_PCI_OP_aer_detected, 2, guest) is False  # no handler flag
    info = xen_pci_sharedinfo.from_buffer(page)
    info.flags = pciif.XEN_PCIB_AERHANDLER
    assert aer_post(page, pciif.XEN_PCI_OP_aer_detected, 2, guest) is True
    assert info.flags & pciif.XEN_PCIB_active
    assert (info.aer_op.cmd, info.aer_op.err, info.aer_op.devfn) == (6, 2, 0x08)
    assert aer_poll(page) is None
    info.aer_op.err = PCI_ERS_RESULT_DISCONNECT  # the frontend answers
    info.flags &= ~pciif.XEN_PCIB_active
    assert aer_poll(page) == PCI_ERS_RESULT_DISCONNECT
    assert aer_kills_guest(PCI_ERS_RESULT_DISCONNECT)
    aer_post(page, pciif.XEN_PCI_OP_aer_detected, 2, guest)
    assert aer_timeout(page, pciif.XEN_PCI_OP_aer_detected) == PCI_ERS_RESULT_CAN_RECOVER
    assert info.aer_op.err == PCI_ERS_RESULT_NONE and not info.flags & pciif.XEN_PCIB_active
    with pytest.raises(ValueError):
        aer_post(page, pciif.XEN_PCI_OP_conf_read, 1, guest)


def test_fake_intx_handler_follows_guest_decode(nic: PcistubDevice, vpci, platform) -> None:  # type: ignore[no-untyped-def]
    """Enabling decode through COMMAND installs the fake INTx handler (the host
    line may be shared); clearing it removes the handler; MSI stops the acking."""
    dd = nic.dev_data
    r = handle_op(op(pciif.XEN_PCI_OP_conf_write, offset=4, size=2, value=2), vpci, platform)
    assert r.err == 0 and r.intx_changed and dd.isr_on and dd.ack_intr
    r = handle_op(op(pciif.XEN_PCI_OP_conf_write, offset=4, size=2, value=6), vpci, platform)
    assert not r.intx_changed and dd.isr_on
    r = handle_op(op(pciif.XEN_PCI_OP_conf_write, offset=4, size=2, value=0), vpci, platform)
    assert r.intx_changed and not dd.isr_on and not dd.ack_intr


def test_served_ops_are_traced(nic: PcistubDevice, vpci, platform) -> None:  # type: ignore[no-untyped-def]
    from xenpci.trace import Trace

    trace = Trace()
    page = page_with(op(pciif.XEN_PCI_OP_conf_read, offset=2, size=4))
    serve_shared_page(page, vpci, platform, trace, frontend_domid=7)
    assert trace.count("pci_op", 7) == 1
    (ev,) = [e for e in trace.events if e.kind == "pci_op"]
    assert ev.path == "dom0" and ev.args["err"] == pciif.XEN_PCI_ERR_invalid_offset
    assert ev.args["cmd"] == "conf_read"


def test_fake_handler_stops_acking_unshared_line(nic: PcistubDevice, vpci, platform) -> None:  # type: ignore[no-untyped-def]
    from xenpci.pciback.pciback_ops import guest_interrupt, irq_handlers_text

    dd = nic.dev_data
    assert not guest_interrupt(dd, line_shared=False)  # no handler installed yet
    handle_op(op(pciif.XEN_PCI_OP_conf_write, offset=4, size=2, value=2), vpci, platform)
    assert irq_handlers_text([nic]) == "0000:03:00.0:on:acking:0\n"
    assert all(guest_interrupt(dd, line_shared=False) for _ in range(1000))
    assert not dd.ack_intr and not guest_interrupt(dd, line_shared=False)
    assert irq_handlers_text([nic]) == "0000:03:00.0:on:not acking:1000\n"


def test_device_options_parse() -> None:
    from xenpci.pciback.errors import FieldError

    assert DeviceOptions.parse({"policy": "strict", "multi_msi": "1"}) == DeviceOptions(
        "strict", True
    )
    assert DeviceOptions.parse({}) == DeviceOptions()
    for bad in ({"policy": "vpci"}, {"multi_msi": "yes"}, {"permissive": "1"}):
        with pytest.raises(FieldError):
            DeviceOptions.parse(bad)


def test_raising_platform_cannot_crash_the_handler(nic: PcistubDevice, vpci) -> None:  # type: ignore[no-untyped-def]
    """A platform that raises (the hypervisor said no) yields the errno, not an exception."""
    from xenpci.hv.errors import InvalidArgument

    class Raising(FakePlatform):
        def enable_msix(self, dev, owner, entries):  # type: ignore[no-untyped-def]
            raise InvalidArgument("no free pirq", errno="ENOSPC", op="map_pirq")

        def enable_msi(self, dev, owner, nvec):  # type: ignore[no-untyped-def]
            raise InvalidArgument("boom", op="map_pirq")

    enable_memory(nic)
    r = handle_op(msix_op([0]), vpci, Raising())
    assert (r.err, r.value) == (-28, (-28) & 0xFFFFFFFF)
    assert not nic.dev_data.linux.msix_enabled


def test_faulting_device_is_an_op_failure(stub: PciStub, vpci: VpciBackend, platform) -> None:  # type: ignore[no-untyped-def]
    """A device model that faults on a config write fails that op (-5); the next
    op is served normally."""
    from xenpci.devices.errors import DeviceError

    hw = make_nic()
    psdev = seize(stub, hw)
    vpci.add(psdev, 0)
    real = hw.config_write

    def faulty(offset: int, size: int, value: int) -> None:
        if offset == regs.PCI_CACHE_LINE_SIZE:
            raise DeviceError("wedged")
        real(offset, size, value)

    hw.config_write = faulty  # type: ignore[method-assign]
    r = handle_op(op(pciif.XEN_PCI_OP_conf_write, offset=0x0C, size=1, value=8), vpci, platform)
    assert r.err == pciif.XEN_PCI_ERR_op_failed
    r = handle_op(op(pciif.XEN_PCI_OP_conf_read), vpci, platform)
    assert r.err == 0 and r.value == hw.config_read(0, 4)


def test_the_op_header_tuple_matches_the_struct_and_the_ctypes_layout() -> None:
    """``serve_shared_page`` builds an ``OpHeader`` straight from ``OP_HEADER``'s
    unpacked fields: same count, same order as ``struct xen_pci_op``'s header."""
    assert len(OpHeader._fields) == len(pciif.OP_HEADER.unpack(bytes(pciif.OP_HEADER.size)))
    assert (
        list(OpHeader._fields) == [name for name, _ in xen_pci_op._fields_][: len(OpHeader._fields)]
    )
    op = xen_pci_op(cmd=1, err=-2, domain=3, bus=4, devfn=5, offset=-6, size=7, value=8)
    raw = bytes(op)
    assert _new_header(OpHeader, pciif.OP_HEADER.unpack_from(raw)) == (1, -2, 3, 4, 5, -6, 7, 8)
