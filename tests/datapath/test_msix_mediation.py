"""MSI-X table protection: reads pass, Mask is the guest's, address/data are not.

Truth is the device's own MSI-X block (``NicFunction.msix``), read from the
device side, and the PCI spec's entry layout (16 bytes: address low/high,
data, vector control with Mask in bit 0).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.datapath.conftest import NIC_BAR0, NIC_BAR3, BareNic, make_bare_nic
from xenpci.hv import PAGE_SHIFT, InvalidArgument, PermissionDenied
from xenpci.hv.msixtbl import MsixRegion, MsixTables
from xenpci.pciback.platform import msix_windows

pytestmark = pytest.mark.timeout(60)

NVEC = 3  # the NIC's vectors


def program(b: BareNic) -> None:
    """dom0/Xen's side: each entry gets an address and a data word, unmasked."""
    block = b.nic.msix
    assert block is not None
    for v in range(NVEC):
        block.write_table(16 * v, 4, 0xFEE0_0000)
        block.write_table(16 * v + 4, 4, 0)
        block.write_table(16 * v + 8, 4, 0x100 + v)
        block.write_table(16 * v + 12, 4, 0)


def words(b: BareNic) -> list[int]:
    block = b.nic.msix
    assert block is not None
    return [block.read_table(off, 4) for off in range(0, 16 * NVEC, 4)]


def test_windows_come_from_the_capability(bare_nic: BareNic) -> None:
    # NicFunction docstring: BAR3 holds the table at 0 and the PBA at 0x2000.
    assert msix_windows(bare_nic.nic) == (NIC_BAR3, 16 * NVEC, NIC_BAR3 + 0x2000, 8)
    assert bare_nic.hv.msixtbl.ro_frames.ranges() == [
        (NIC_BAR3 >> PAGE_SHIFT, NIC_BAR3 >> PAGE_SHIFT),
        ((NIC_BAR3 >> PAGE_SHIFT) + 2, (NIC_BAR3 >> PAGE_SHIFT) + 2),
    ]


def test_reads_pass_and_are_counted_as_mediated(bare_nic: BareNic) -> None:
    program(bare_nic)
    m = bare_nic.guest.hypercalls.mmio_map(NIC_BAR3 >> PAGE_SHIFT, 4)
    assert [m.read(off, 4) for off in range(0, 16 * NVEC, 4)] == words(bare_nic)
    assert bare_nic.hv.trace.count("mmio_mediated") == 4 * NVEC
    assert bare_nic.hv.trace.count("mmio_read") == 0


def test_address_and_data_writes_are_dropped(bare_nic: BareNic) -> None:
    program(bare_nic)
    before = words(bare_nic)
    m = bare_nic.guest.hypercalls.mmio_map(NIC_BAR3 >> PAGE_SHIFT, 4)
    for v in range(NVEC):
        m.write(16 * v, 4, 0xDEAD_0000)  # aim the message at another address
        m.write(16 * v + 8, 4, 0x42)  # or another pirq
        m.write(16 * v, 8, 0x1234_5678_9ABC_DEF0)
    assert words(bare_nic) == before
    verdicts = [e.args["verdict"] for e in bare_nic.hv.trace.events if e.kind == "mmio_mediated"]
    assert verdicts == ["dropped"] * 3 * NVEC


def test_mask_bit_is_the_guests(bare_nic: BareNic) -> None:
    program(bare_nic)
    block = bare_nic.nic.msix
    assert block is not None
    m = bare_nic.guest.hypercalls.mmio_map(NIC_BAR3 >> PAGE_SHIFT, 4)
    m.write(16 * 1 + 12, 4, 0xFFFF_FFFF)  # reserved bits must not stick
    assert block.masked(1) and not block.masked(0)
    assert block.read_table(16 * 1 + 12, 4) == 1
    m.write(16 * 1 + 12, 4, 0)
    assert not block.masked(1)


def test_pba_is_read_only(bare_nic: BareNic) -> None:
    block = bare_nic.nic.msix
    assert block is not None
    m = bare_nic.guest.hypercalls.mmio_map(NIC_BAR3 >> PAGE_SHIFT, 4)
    m.write(0x2000, 8, 0xFF)
    assert m.read(0x2000, 8) == block.read_pba(0, 8) == 0


def test_registers_outside_the_table_are_direct(bare_nic: BareNic) -> None:
    m = bare_nic.guest.hypercalls.mmio_map(NIC_BAR0 >> PAGE_SHIFT, 0x20)
    m.write(0xD0, 4, 0x80)  # IMS
    assert bare_nic.nic.core.regs["IMS"] == 0x80
    assert bare_nic.hv.trace.count("mmio_write") == 1
    assert bare_nic.hv.trace.count("mmio_mediated") == 0


def test_only_dom0_protects_or_releases(bare_nic: BareNic) -> None:
    # XSA-87: an unprivileged guest must not lift (or set) the protection.
    g = bare_nic.guest.hypercalls
    sbdf = bare_nic.nic.sbdf.sbdf_int
    with pytest.raises(PermissionDenied) as e:
        g.release_msix(sbdf)
    assert e.value.errno == "EPERM"
    with pytest.raises(PermissionDenied):
        g.prepare_msix(sbdf + 8, 0x1000, 16, 0x2000, 8)
    assert not bare_nic.hv.msixtbl.ro_frames.is_empty()
    bare_nic.hv.dom0.hypercalls.release_msix(sbdf)
    assert bare_nic.hv.msixtbl.ro_frames.is_empty()
    with pytest.raises(InvalidArgument) as e2:
        bare_nic.hv.dom0.hypercalls.release_msix(sbdf)
    assert e2.value.errno == "ENOENT"


@pytest.mark.parametrize(
    "args",
    [(-1, 0, 16, 0, 8), (0, 0x1000, 15, 0x2000, 8), (0, 0x1000, 16, -8, 8), (0, 0x1000, 0, 0, 8)],
)
def test_regions_are_validated(args: tuple[int, int, int, int, int]) -> None:
    with pytest.raises(InvalidArgument):
        MsixRegion(*args)


def test_double_prepare_is_busy() -> None:
    t = MsixTables()
    t.prepare(MsixRegion(8, 0x1000, 16, 0x2000, 8))
    with pytest.raises(InvalidArgument) as e:
        t.prepare(MsixRegion(8, 0x1000, 16, 0x2000, 8))
    assert e.value.errno == "EBUSY"


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 0x3FFF),
            st.sampled_from([1, 2, 4, 8]),
            st.integers(0, (1 << 64) - 1),
        ),
        max_size=30,
    )
)
def test_no_guest_write_changes_a_message(writes: list[tuple[int, int, int]]) -> None:
    """Whatever a hostile guest writes anywhere in BAR3, no address/data word changes."""
    with make_bare_nic() as b:
        program(b)
        before = words(b)
        m = b.guest.hypercalls.mmio_map(NIC_BAR3 >> PAGE_SHIFT, 4)
        for off, size, value in writes:
            if off + size > 0x4000:
                continue
            m.write(off, size, value & ((1 << (8 * size)) - 1))
        after = words(b)
        for v in range(NVEC):
            assert after[4 * v : 4 * v + 3] == before[4 * v : 4 * v + 3]
            assert after[4 * v + 3] in (0, 1)  # only the Mask bit can differ
