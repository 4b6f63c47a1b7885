"""Pure pieces of the split driver: pcifront's op channel and the guest PCI core.

Truth: Linux's ``errno_to_pcibios_err`` table and 2 s timeout rule (fact sheet
§2.2), the PCI spec's all-ones BAR sizing against a config space whose write
masks encode the BAR sizes (P's ``apply_standard_masks``).
"""

from __future__ import annotations

import ctypes
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import OS_EDGE_TIMEOUT
from xenpci.abi import pciif
from xenpci.guest.pci_core import GuestPciBus
from xenpci.hv.scheduler import Scheduler
from xenpci.pci import pcibios, regs
from xenpci.pci.address import SBDF
from xenpci.pci.config import ConfigSpace, apply_standard_masks
from xenpci.pciback.vpci import GuestAddress, format_root, format_vdev
from xenpci.pciback.xenbus import XenbusBackendError, parse_dev
from xenpci.pcifront import ops
from xenpci.pcifront.errors import BackendTimeout, NotConnected, PcifrontError, PciOpError
from xenpci.pcifront.xenbus import parse_root, parse_vdev

pytestmark = pytest.mark.timeout(20)

#: Only the threaded round trip waits on a real thread; this bounds a broken backend.


@pytest.mark.parametrize(
    ("err", "pcibios"),
    [
        (0, 0x00),
        (pciif.XEN_PCI_ERR_dev_not_found, 0x86),
        (pciif.XEN_PCI_ERR_invalid_offset, 0x87),
        (pciif.XEN_PCI_ERR_op_failed, 0x87),
        (pciif.XEN_PCI_ERR_not_implemented, 0x81),
        (pciif.XEN_PCI_ERR_access_denied, 0x88),
        (-22, -22),  # raw errnos pass through unchanged
        (-114, -114),
    ],
)
def test_errno_to_pcibios(err: int, pcibios: int) -> None:
    assert ops.errno_to_pcibios_err(err) == pcibios


def _page() -> tuple[bytearray, memoryview]:
    buf = bytearray(4096)
    return buf, memoryview(buf)


def test_silent_backend_times_out_at_exactly_two_seconds_of_virtual_time() -> None:
    buf, page = _page()
    sent: list[int] = []
    ex = Scheduler()
    chan = ops.PciOpChannel(page, lambda: sent.append(1), executor=ex)
    err, value = ops.conf_read(chan, 0, 0, 0, 0, 4)
    # Linux's 2 s deadline, measured on the machine's clock: the executor had
    # nothing to run, so time jumped straight to the deadline.
    assert ex.clock.now() == ops.DEFAULT_OP_TIMEOUT == 2.0
    assert err == pcibios.PCIBIOS_DEVICE_NOT_FOUND and value == 0
    info = pciif.xen_pci_sharedinfo.from_buffer(buf)
    assert info.flags & pciif.XEN_PCIF_active == 0
    assert sent == [1] and chan.timeouts == 1
    with pytest.raises(BackendTimeout):
        chan.do_pci_op(ops.make_op(pciif.XEN_PCI_OP_conf_read, 0, 0, 0, size=4))
    assert ex.clock.now() == 4.0 and chan.timeouts == 2


def test_an_answer_one_tick_before_the_deadline_counts_one_after_does_not() -> None:
    buf, page = _page()
    info = pciif.xen_pci_sharedinfo.from_buffer(buf)
    ex = Scheduler()

    def answer_after(delay: float) -> None:
        def done() -> None:
            info.op.value = 0xAB
            info.flags &= ~pciif.XEN_PCIF_active

        ex.call_later(delay, done)

    delay = [1.999]
    chan = ops.PciOpChannel(page, lambda: answer_after(delay[0]), executor=ex)
    assert ops.conf_read(chan, 0, 0, 0, 0, 1) == (0, 0xAB)
    assert ex.clock.now() == 1.999 and chan.timeouts == 0
    delay[0] = 2.001
    assert ops.conf_read(chan, 0, 0, 0, 0, 1) == (pcibios.PCIBIOS_DEVICE_NOT_FOUND, 0)
    assert ex.clock.now() == 3.999 and chan.timeouts == 1
    ex.advance(1.0)  # the late answer lands on a page that no longer waits for it
    assert info.flags & pciif.XEN_PCIF_active == 0


def _serve(info: pciif.xen_pci_sharedinfo, answer: dict[str, int]) -> None:
    """A toy backend's handler: answer the op in the page with ``answer`` (value/err)."""
    if not info.flags & pciif.XEN_PCIF_active:
        return
    info.op.err = answer.get("err", 0)
    info.op.value = answer.get("value", info.op.offset)
    for i in range(min(info.op.value, 128) if info.op.cmd == 4 else 0):
        info.op.msix_entries[i].vector = 100 + i
    if info.op.cmd == 4:
        info.op.value = 0
    info.flags &= ~pciif.XEN_PCIF_active


def _round_trips(chan: ops.PciOpChannel, answer: dict[str, int]) -> None:
    assert ops.conf_read(chan, 0, 0, 8, 0x10, 1) == (0, 0x78)
    assert ops.conf_read(chan, 0, 0, 8, 0x10, 4) == (0, 0x12345678)
    answer["err"] = pciif.XEN_PCI_ERR_access_denied
    assert ops.conf_write(chan, 0, 0, 8, 0x4, 2, 7) == pcibios.PCIBIOS_SET_FAILED
    answer["err"] = -19  # raw -ENODEV reads as success with value 0 (Linux)
    assert ops.conf_read(chan, 0, 0, 8, 0x0, 4) == (0, 0)
    answer["err"] = 0
    assert ops.enable_msix(chan, 0, 0, 8, [0, 1, 2]) == [100, 101, 102]


def test_round_trip_truncates_to_access_size_and_maps_errors() -> None:
    buf = bytearray(4096)
    info = pciif.xen_pci_sharedinfo.from_buffer(buf)
    answer = {"value": 0x12345678}
    ex = Scheduler()
    backend = ex.lane("backend")
    chan = ops.PciOpChannel(
        memoryview(buf), lambda: backend.post(lambda: _serve(info, answer)), executor=ex
    )
    _round_trips(chan, answer)
    assert ex.clock.now() == 0.0 and chan.timeouts == 0  # no time passed: none was needed


def test_round_trip_in_threaded_mode() -> None:
    """The threaded mode (an OS edge: the backend on a thread of its own) behaves alike."""
    buf = bytearray(4096)
    info = pciif.xen_pci_sharedinfo.from_buffer(buf)
    answer = {"value": 0x12345678}
    kick = threading.Semaphore(0)
    stop = False

    def loop() -> None:
        while True:
            kick.acquire()
            if stop:
                return
            _serve(info, answer)
            chan.on_event()

    chan = ops.PciOpChannel(memoryview(buf), kick.release, timeout=OS_EDGE_TIMEOUT)
    th = threading.Thread(target=loop, daemon=True)
    th.start()
    try:
        _round_trips(chan, answer)
        assert chan.timeouts == 0
    finally:
        stop = True
        kick.release()
        th.join()


def test_msix_above_max_vec_refused_locally() -> None:
    _buf, page = _page()
    sent: list[int] = []
    chan = ops.PciOpChannel(page, lambda: sent.append(1), executor=Scheduler())
    with pytest.raises(PciOpError) as ei:
        ops.enable_msix(chan, 0, 0, 0, list(range(pciif.SH_INFO_MAX_VEC + 1)))
    assert ei.value.err == -22 and sent == []


def test_op_from_vcpu_thread_refused_not_deadlocked() -> None:
    _buf, page = _page()
    chan = ops.PciOpChannel(page, lambda: None, on_vcpu=lambda: True)
    with pytest.raises(NotConnected):
        chan.do_pci_op(ops.make_op(0, 0, 0, 0, size=4))


def test_op_written_into_page_at_c_offsets() -> None:
    buf, page = _page()
    chan = ops.PciOpChannel(page, lambda: None, executor=Scheduler())
    ops.conf_write(chan, 0, 3, 0x11, 0x3C, 1, 0xAB)
    # offsets from pciif.h: op at 4; cmd@0 domain@8 bus@12 devfn@16 offset@20 size@24 value@28
    raw = bytes(buf)
    assert int.from_bytes(raw[4:8], "little") == pciif.XEN_PCI_OP_conf_write
    assert int.from_bytes(raw[16:20], "little") == 3
    assert int.from_bytes(raw[20:24], "little") == 0x11
    assert int.from_bytes(raw[24:28], "little") == 0x3C
    assert int.from_bytes(raw[28:32], "little") == 1
    assert int.from_bytes(raw[32:36], "little") == 0xAB
    assert ctypes.sizeof(pciif.xen_pci_op) == 548


class _FakeBus:
    """PciOps over plain config spaces: absent devfns answer -1 -> PCIBIOS 0x86."""

    def __init__(self, devs: dict[int, ConfigSpace]) -> None:
        self.devs = devs
        self.reads = 0

    def read(self, domain: int, bus: int, devfn: int, offset: int, size: int) -> tuple[int, int]:
        self.reads += 1
        cs = self.devs.get(devfn)
        if cs is None:
            return pcibios.PCIBIOS_DEVICE_NOT_FOUND, 0
        return 0, cs.read(offset, size)

    def write(self, domain: int, bus: int, devfn: int, offset: int, size: int, value: int) -> int:
        cs = self.devs.get(devfn)
        if cs is None:
            return pcibios.PCIBIOS_DEVICE_NOT_FOUND
        cs.write(offset, size, value)
        return 0


def _device(bars: dict[int, tuple[int, int]]) -> ConfigSpace:
    data = bytearray(256)
    data[0:4] = (0x100E8086).to_bytes(4, "little")
    data[0x0B] = 0x02
    for idx, (val, _size) in bars.items():
        off = regs.PCI_BASE_ADDRESS_0 + 4 * idx
        data[off : off + 4] = (val & 0xFFFFFFFF).to_bytes(4, "little")
        if val >> 32:
            data[off + 4 : off + 8] = (val >> 32).to_bytes(4, "little")
    cs = ConfigSpace(bytes(data))
    apply_standard_masks(cs, {i: s for i, (_v, s) in bars.items()})
    return cs


def test_scan_probes_every_devfn_and_sizes_bars() -> None:
    lone_fn3 = _device({0: (0xFEB00000, 0x20000), 2: (0xC001, 0x20)})
    wide = _device({0: (0x38000000000C, 0x10000000)})  # 64-bit prefetchable 256 MiB
    bus = _FakeBus({(4 << 3) | 3: lone_fn3, 9 << 3: wide})
    root = GuestPciBus(0, 0, bus)
    found = root.scan()
    assert sorted(d.devfn for d in found) == [(4 << 3) | 3, 9 << 3]
    dev = root.devices[(4 << 3) | 3]
    assert [(b.index, b.kind, b.address, b.size) for b in dev.bars] == [
        (0, "mem32", 0xFEB00000, 0x20000),
        (2, "io", 0xC000, 0x20),
    ]
    assert str(dev.sbdf) == "0000:00:04.3"
    big = root.devices[9 << 3].bars[0]
    assert (big.kind, big.prefetchable, big.size, big.address) == (
        "mem64",
        True,
        0x10000000,
        0x380000000000,
    )
    # sizing restored the BARs
    assert lone_fn3.read(0x10, 4) == 0xFEB00000
    before = bus.reads
    assert root.scan() == []  # a rescan probes only unknown devfns
    assert bus.reads - before == 254


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40))
def test_dev_and_vdev_parsers_fail_precisely_on_any_text(text: str) -> None:
    # hostile XenStore values: either a valid address or the layer's own error
    try:
        got = parse_dev(text)
    except XenbusBackendError as e:
        assert repr(text) in str(e)
        with pytest.raises(PcifrontError):
            parse_vdev(text)
        return
    assert parse_vdev(text) == got
    assert parse_dev(format_vdev(GuestAddress(got.segment, got.bus, got.devfn))) == got


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0x1F), st.integers(0, 7))
def test_vdev_written_by_pciback_is_read_back_by_pcifront(d: int, b: int, s: int, f: int) -> None:
    text = format_vdev(GuestAddress(d, b, (s << 3) | f))
    assert len(text.rpartition(".")[2]) == 2  # the PV protocol's %02x function
    assert parse_vdev(text) == SBDF(d, b, s, f)
    assert parse_root(format_root(d, b)) == (d, b)


def test_request_writes_the_ctypes_layout_and_reads_the_answer() -> None:
    """``request`` packs the header with ``struct``: the backend, reading the page
    through the ctypes ``xen_pci_sharedinfo``, sees every field where C puts it,
    truncated to 32 bits as a ctypes (or C) assignment would."""
    buf = bytearray(4096)
    seen: list[tuple[int, ...]] = []

    def backend() -> None:
        info = pciif.xen_pci_sharedinfo.from_buffer(buf)
        o = info.op
        seen.append((info.flags, o.cmd, o.err, o.domain, o.bus, o.devfn, o.offset, o.size, o.value))
        o.err, o.value = -22, 0xDEADBEEF
        info.flags &= ~pciif.XEN_PCIF_active

    pciif.xen_pci_sharedinfo.from_buffer(buf).flags = pciif.XEN_PCIB_AERHANDLER
    chan = ops.PciOpChannel(memoryview(buf), backend)
    got = chan.request(pciif.XEN_PCI_OP_conf_write, 0x1_0000_0005, 2, 0x1FF, -4, 4, 0x1_2345_6789)
    assert got == (-22, 0xDEADBEEF)
    flags = pciif.XEN_PCIB_AERHANDLER | pciif.XEN_PCIF_active
    assert seen == [(flags, pciif.XEN_PCI_OP_conf_write, 0, 5, 2, 0x1FF, -4, 4, 0x23456789)]
    assert pciif.xen_pci_sharedinfo.from_buffer(buf).flags == pciif.XEN_PCIB_AERHANDLER
