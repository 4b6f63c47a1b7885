"""Guest drivers on a full machine: real workloads, data checked at both ends.

Truth: the bytes a guest wrote against what comes back, the device model's
own state (the NVMe namespace's blocks, the NIC's packet counters), and the
trace's record of which path every operation took.
"""

from __future__ import annotations

import pytest

from tests.datapath.conftest import Guests, boot_guests, vcpu_threads
from xenpci.demo import NIC, NVME, UART
from xenpci.devices import nvme as nvme_hw
from xenpci.devices.nic import E1000_IMS as IMS
from xenpci.devices.nic import NicFunction
from xenpci.devices.nvme import NvmeFunction
from xenpci.guest.drivers.base import DeviceNotFound, PciDriver
from xenpci.guest.drivers.nic import RING_ENTRIES, NicDriver
from xenpci.guest.drivers.nvme import NvmeDriver
from xenpci.guest.drivers.serial import SerialDriver
from xenpci.guest.kernel import GuestKernel
from xenpci.hv import PAGE_SHIFT, MmioDenied
from xenpci.pci import regs
from xenpci.toolstack.xlcfg import PciSpec

pytestmark = pytest.mark.timeout(60)


def wait_device(kernel: GuestKernel, cls: type[PciDriver], present: bool = True) -> None:
    """Drive the deterministic machine until the device is (or is no longer) there."""
    assert kernel.executor is not None
    kernel.executor.run_until(
        lambda: (
            any((d.vendor, d.device) == (cls.VENDOR, cls.DEVICE) for d in kernel.pci.devices())
            == present
        )
    )


def dom0_on(g: Guests, *kinds: str) -> list[str]:
    return [e.kind for e in g.machine.trace.events if e.kind in kinds and e.path == "dom0"]


def test_nic_loops_frames_through_the_rings(guests: Guests) -> None:
    wait_device(guests.g1, NicDriver)
    drv = NicDriver(guests.g1)
    drv.probe()
    # More frames than descriptors: both rings wrap; sizes from 1 byte to a full page.
    frames = [bytes([i % 251]) * (1 + (i * 397) % 4096) for i in range(3 * RING_ENTRIES)]
    assert drv.loopback(frames) == frames
    nic = guests.machine.host_function(NIC)
    assert isinstance(nic, NicFunction)
    assert nic.core.regs["TPT"] == nic.core.regs["TPR"] == len(frames)
    t = guests.machine.trace
    assert t.count("pirq", guests.g1.domid) >= 2 * len(frames)
    assert t.count("mmio_write", guests.g1.domid) > 0
    assert dom0_on(guests, "dma_read", "dma_write", "pirq", "mmio_read", "mmio_write") == []
    assert t.count("mmio_write", 0) == t.count("mmio_read", 0) == 0
    drv.remove()


def test_nvme_writes_and_reads_back(guests: Guests) -> None:
    wait_device(guests.g2, NvmeDriver)
    drv = NvmeDriver(guests.g2)
    drv.probe()
    data = bytes(range(256)) * 32  # 16 blocks, two pages: PRP1 + PRP2
    drv.write_blocks(100, data)
    disk = guests.machine.host_function(NVME)
    assert isinstance(disk, NvmeFunction)
    # The device's namespace holds exactly what the guest wrote.
    stored = b"".join(disk.core.blocks[100 + i] for i in range(16))
    assert stored == data
    assert drv.read_blocks(100, 16) == data
    assert drv.read_blocks(100, 3) == data[: 3 * nvme_hw.BLOCK_SIZE]
    assert drv.read_blocks(5000, 1) == bytes(nvme_hw.BLOCK_SIZE)  # never written: zeros
    # An out-of-range LBA is refused with the spec's status.
    assert drv.submit_io(nvme_hw.NVM_READ, nvme_hw.NAMESPACE_BLOCKS, 1, drv.data[0].bus) == (
        nvme_hw.SC_LBA_OUT_OF_RANGE
    )
    assert dom0_on(guests, "dma_read", "dma_write", "pirq") == []
    drv.remove()


def test_guest2_cannot_reach_guest1s_device(guests: Guests) -> None:
    wait_device(guests.g1, NicDriver)
    nic = NicDriver(guests.g1)
    nic.probe()
    bar = nic.bar(0)
    g2 = guests.g2.domain.hypercalls
    with pytest.raises(MmioDenied) as e:
        g2.mmio_map(bar.address >> PAGE_SHIFT, 1)
    assert e.value.errno == "EPERM"
    # guest2 does not even see the NIC on its bus.
    with pytest.raises(DeviceNotFound):
        NicDriver(guests.g2)
    assert nic.loopback([b"still works"]) == [b"still works"]
    nic.remove()


def test_nvme_dma_outside_the_guest_faults(guests: Guests) -> None:
    wait_device(guests.g2, NvmeDriver)
    drv = NvmeDriver(guests.g2)
    drv.probe()
    dom0 = guests.machine.hv.dom0
    gfn = dom0.hypercalls.alloc_page()
    dom0.hypercalls.write(gfn << PAGE_SHIFT, b"secret")
    victim = dom0.p2m.mfn(gfn) << PAGE_SHIFT
    drv.write_blocks(0, b"\xee" * 4096 * 2)
    status = drv.submit_io(nvme_hw.NVM_READ, 0, 1, victim)
    assert status == nvme_hw.SC_DATA_TRANSFER_ERROR
    assert dom0.hypercalls.read(gfn << PAGE_SHIFT, 6) == b"secret"
    fault = guests.machine.hv.iommu.faults[-1]
    assert (fault.bus_addr, fault.domid, fault.write) == (victim, guests.g2.domid, True)
    assert drv.read_blocks(0, 1) == b"\xee" * 512  # the controller survives the fault
    drv.remove()


def test_without_an_iommu_the_same_dma_hits_dom0() -> None:
    before = vcpu_threads()
    g = boot_guests(iommu=False)
    try:
        wait_device(g.g2, NvmeDriver)
        drv = NvmeDriver(g.g2)
        drv.probe()
        drv.write_blocks(0, b"\x66" * 8192)
        assert drv.read_blocks(0, 16) == b"\x66" * 8192  # the driver works with mfns
        dom0 = g.machine.hv.dom0
        gfn = dom0.hypercalls.alloc_page()
        dom0.hypercalls.write(gfn << PAGE_SHIFT, b"secret")
        victim = dom0.p2m.mfn(gfn) << PAGE_SHIFT
        assert drv.submit_io(nvme_hw.NVM_READ, 0, 1, victim) == nvme_hw.SC_SUCCESS
        assert dom0.hypercalls.read(gfn << PAGE_SHIFT, 6) == b"\x66" * 6
        drv.remove()
    finally:
        g.machine.shutdown()
    assert vcpu_threads() <= before


def test_hotplugged_uart_by_port_io_then_gone(guests: Guests) -> None:
    guests.lx.pci_attach("guest1", PciSpec(UART))
    wait_device(guests.g1, SerialDriver)
    uart = SerialDriver(guests.g1)
    uart.probe()
    assert uart.loopback(b"port io \x00\xff") == b"port io \x00\xff"
    port = uart.bar(0).address
    g = guests.g1.domain.hypercalls
    with pytest.raises(MmioDenied):
        g.ioport_read(port + 8, 1)  # one past the 8-byte BAR: not granted
    uart.remove()
    guests.lx.pci_detach("guest1", PciSpec(UART))
    wait_device(guests.g1, SerialDriver, present=False)
    with pytest.raises(MmioDenied) as e:
        g.ioport_read(port, 1)
    assert e.value.errno == "EPERM"
    assert guests.machine.trace.count("ioport_write", 0) == 0
    assert guests.machine.trace.count("ioport_write", guests.g1.domid) > 0


def test_guest_memory_bit_unmaps_its_bars(guests: Guests) -> None:
    """A guest clears COMMAND.MEMORY through pcifront: its BAR mapping goes dead (reads
    float high, writes go nowhere, both traced as mmio_unmapped) while the device keeps
    decoding for dom0; setting the bit again brings the same mapping back."""
    wait_device(guests.g1, NicDriver)
    drv = NicDriver(guests.g1)
    drv.enable()
    m = drv.iomap(0)
    nic = guests.machine.host_function(NIC)
    assert isinstance(nic, NicFunction)
    m.write(IMS, 4, 0x80)
    assert nic.core.regs["IMS"] == 0x80
    trace, domid = guests.machine.trace, guests.g1.domid
    cmd = drv.dev.read_config_checked(regs.PCI_COMMAND, 2)
    drv.dev.write_config_checked(regs.PCI_COMMAND, 2, cmd & ~regs.PCI_COMMAND_MEMORY)
    assert not drv.dev.read_config_checked(regs.PCI_COMMAND, 2) & regs.PCI_COMMAND_MEMORY
    assert nic.config_read(regs.PCI_COMMAND, 2) & regs.PCI_COMMAND_MEMORY  # pciback: virtual
    before = trace.count("mmio_unmapped", domid)
    assert m.read(IMS, 4) == 0xFFFF_FFFF
    m.write(IMS, 4, 0x01)
    assert nic.core.regs["IMS"] == 0x80  # the write went nowhere
    assert trace.count("mmio_unmapped", domid) == before + 2
    assert guests.g2.domid not in guests.machine.hv.decode_off  # only the owner is affected
    drv.dev.write_config_checked(regs.PCI_COMMAND, 2, cmd)
    assert m.read(IMS, 4) == 0x80
    assert domid not in guests.machine.hv.decode_off
    drv.remove()


def test_detach_with_decode_off_leaves_no_unmapping(guests: Guests) -> None:
    wait_device(guests.g1, NicDriver)
    drv = NicDriver(guests.g1)
    drv.enable()
    cmd = drv.dev.read_config_checked(regs.PCI_COMMAND, 2)
    drv.dev.write_config_checked(regs.PCI_COMMAND, 2, cmd & ~regs.PCI_COMMAND_MEMORY)
    assert guests.g1.domid in guests.machine.hv.decode_off
    guests.lx.pci_detach("guest1", PciSpec(NIC))
    assert guests.g1.domid not in guests.machine.hv.decode_off
