"""One host with the three IO models on the same hypervisor and the same NVMe model.

There is no single real counterpart: this is what an administrator sets up
by hand to compare them on one Xen host. dom0 binds its own NVMe driver to
the physical disk (``/dev/nvme0n1``, :mod:`xenpci.blkback.dom0_block`);
blkback serves PV guests' ``disk=[...]`` from it; a device model (QEMU's
role, :mod:`xenpci.emu`) serves an HVM guest's emulated controller from it;
a second function of the same NVMe model is passed through to a third guest
with pciback, exactly as ``xl create`` with ``pci=[...]`` does today.

Deliberate differences: the passthrough guest drives its own NVMe function
(the same model class, another function), since a disk cannot be owned by
dom0 and assigned to a guest at once. Threaded by default: blkback's
``xenblkd`` and the device model wait for dom0's disk interrupts on their own
threads, as their real counterparts do. With ``deterministic=True`` the whole
host runs on the caller's thread, as tasks of the machine's one executor
(``xenblkd`` and the device model are lanes of it; their waits for dom0's
disk run the executor until the interrupt's upcall has run).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from xenpci.blkback.blkback import BlockDevice
from xenpci.blkback.dom0_block import Dom0Disk
from xenpci.blkback.xenbus import BlkbackDriver
from xenpci.blkfront.blkfront import Blkfront
from xenpci.emu.device_model import XenDeviceModel
from xenpci.emu.hvm_guest import HvmKernel
from xenpci.errors import XenpciError
from xenpci.guest.drivers.nvme import NvmeDriver
from xenpci.pci.address import SBDF
from xenpci.toolstack.host import HostDescription, boot_machine
from xenpci.toolstack.libxl import Libxl
from xenpci.toolstack.machine import Machine
from xenpci.toolstack.xlcfg import load_domain_config
from xenpci.toolstack.xldisk import DiskSpec, parse_disk_spec, vbd_add
from xenpci.trace import Trace

#: dom0's disk and the passthrough guest's disk: two functions of the NVMe model.
DOM0_NVME = SBDF.parse("0000:04:00.0")
PASSTHROUGH_NVME = SBDF.parse("0000:09:00.0")
DOM0_DISK = "/dev/nvme0n1"


@dataclass
class HvmGuest:
    """An HVM guest's running parts: its device model in dom0 and its NVMe driver."""

    domid: int
    driver: NvmeDriver
    model: XenDeviceModel

    def stop(self) -> None:
        """The guest's driver lets go, then the device model stops (before the domain goes)."""
        with contextlib.suppress(XenpciError):
            self.driver.remove()
        self.model.stop()


def start_hvm_guest(
    machine: Machine, disk: BlockDevice, name: str, memory_kib: int = 16 * 1024
) -> HvmGuest:
    """An HVM guest (``type = "hvm"``) with an emulated NVMe controller backed by ``disk``:
    its device model started in dom0, the guest's NVMe driver probed through it.

    The one way to boot an HVM guest: :meth:`IoModelsHost.add_hvm_guest` and the
    toolstack (``xl create`` of a ``type="hvm"`` config) both call it. A failure
    undoes the device model and the domain.
    """
    domid = machine.start_guest(name, memory_kib, boot=False)
    try:
        dom = machine.hv.domain(domid)
        dm = XenDeviceModel(machine.hv, dom, disk)
    except BaseException:
        machine.stop_guest(domid)
        raise
    try:
        kernel = HvmKernel(dom, machine.guest(domid).xs)
        kernel.scan()
        driver = NvmeDriver(kernel)
        driver.probe()
    except BaseException:
        dm.stop()
        machine.stop_guest(domid)
        raise
    return HvmGuest(domid, driver, dm)


@dataclass
class IoModelsHost:
    """The machine, dom0's disk and its blkback, and the guests added so far."""

    machine: Machine
    disk: Dom0Disk
    blkback: BlkbackDriver
    fronts: list[Blkfront] = field(default_factory=list)
    models: list[XenDeviceModel] = field(default_factory=list)
    drivers: list[NvmeDriver] = field(default_factory=list)

    @property
    def trace(self) -> Trace:
        return self.machine.trace

    def add_pv_guest(self, name: str, spec: str, memory_kib: int = 16 * 1024) -> Blkfront:
        """A PV guest with ``disk=[spec]``: vbd nodes written, blkfront probed and connected."""
        m = self.machine
        disk: DiskSpec = parse_disk_spec(spec)
        domid = m.start_guest(name, memory_kib, boot=False)
        kernel = m.guest(domid)
        vbd_add(m.xs, domid, disk)
        front = Blkfront(domid, disk.devid, kernel.domain.hypercalls, kernel.xs, trace=m.trace)
        front.probe()
        self.fronts.append(front)
        if not front.wait_connected(10):
            raise XenpciError(f"{name}: vbd {disk.vdev} did not connect ({front.xenbus.history})")
        return front

    def add_hvm_guest(
        self, name: str, memory_kib: int = 16 * 1024
    ) -> tuple[NvmeDriver, XenDeviceModel]:
        """An HVM guest with an emulated NVMe controller (``type = "hvm"``): its device
        model started in dom0, the guest's NVMe driver probed through it."""
        guest = start_hvm_guest(self.machine, self.disk, name, memory_kib)
        self.models.append(guest.model)
        self.drivers.append(guest.driver)
        return guest.driver, guest.model

    def add_passthrough_guest(self, name: str, memory_kib: int = 16 * 1024) -> NvmeDriver:
        """A PV guest with the second NVMe function passed through (``pci=[...]``)."""
        m = self.machine
        lx = Libxl(m, m.xs, trace=m.trace)
        lx.assignable_add(PASSTHROUGH_NVME)
        cfg = load_domain_config(
            f'name = "{name}"\nmemory = {memory_kib // 1024}\n'
            f'pci = [ "{PASSTHROUGH_NVME},msitranslate=1" ]\n',
        )
        domid = lx.domain_create(cfg)
        kernel = m.guest(domid)
        front = kernel.wait_for_pcifront(10)
        # The XenBus shell notifies after each driver step, the connect scan included.
        if front.watch is None or not front.watch.wait_for(
            lambda _d: any(d.vendor == NvmeDriver.VENDOR for d in kernel.pci.devices()), 10
        ):
            raise XenpciError(f"{name}: the NVMe function did not appear")
        driver = NvmeDriver(kernel)
        driver.probe()
        self.drivers.append(driver)
        return driver

    def shutdown(self) -> None:
        for driver in self.drivers:
            with contextlib.suppress(XenpciError):
                driver.remove()
        for dm in self.models:
            dm.stop()
        for front in self.fronts:
            with contextlib.suppress(XenpciError):
                front.remove()
        self.blkback.stop()
        with contextlib.suppress(XenpciError):
            self.disk.remove()
        self.machine.shutdown()

    def __enter__(self) -> IoModelsHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def boot_iomodels_host(*, deterministic: bool = False) -> IoModelsHost:
    """Boot the host: two NVMe functions, dom0's driver bound to one, blkback started."""
    machine = boot_machine(
        HostDescription(sources=(f"model:nvme@{DOM0_NVME}", f"model:nvme@{PASSTHROUGH_NVME}")),
        deterministic=deterministic,
    )
    try:
        fn = machine.host_function(DOM0_NVME)
        disk = Dom0Disk(machine.hv.dom0, machine.xs, fn, machine.irq_platform)
        disk.probe()
        blkback = BlkbackDriver(machine.dom0, machine.xs, {DOM0_DISK: disk}, trace=machine.trace)
        blkback.start()
    except BaseException:
        machine.shutdown()
        raise
    return IoModelsHost(machine, disk, blkback)
