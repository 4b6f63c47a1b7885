"""dom0's block layer over its own driver of the physical NVMe model.

On a real host, blkback and QEMU both end in dom0's block layer
(``submit_bio`` / ``blk_mq``), which drives the disk with dom0's own
``nvme`` driver. Here that driver is the same
:class:`~xenpci.guest.drivers.nvme.NvmeDriver` class a passthrough guest
uses, bound in dom0: its config cycles go straight to the host function (dom0
owns the bus), its BAR is mapped with dom0's own iomem capability, and its
MSI-X vectors are pirqs dom0 maps for itself (``xen_initdom_setup_msi_irqs``)
and binds to its own event channels. Nothing goes through pciback or
pcifront: the disk is not assigned to anyone.

Deliberate differences: the driver API is the guest driver's (one command in
flight, at most MDTS (32 pages) per command), serialised by a lock here because
several backends share the disk; there is no request merging or queueing.
With the machine's deterministic executor a command's wait runs the executor
nested: another lane's task that reaches the disk meanwhile (the device model
while ``xenblkd`` waits, say) would wait for a lock its own thread holds, so
it fails at once with ``Deadlock`` (EDEADLK) instead of hanging, and the
command in flight completes.
Callers must not run on dom0's vCPU: the driver waits for its completion
interrupt, which dom0's vCPU delivers (blkback and the device model each run
on their own thread, as ``xenblkd`` and QEMU do).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence

from xenpci.devices import nvme as hw
from xenpci.errors import XenpciError
from xenpci.guest.drivers.nvme import MAX_BLOCKS_PER_CMD, NvmeDriver
from xenpci.guest.kernel import GuestKernel
from xenpci.guest.pci_core import GuestPciDevice
from xenpci.hv.domain import Domain
from xenpci.hv.errors import Deadlock
from xenpci.pci.address import SBDF
from xenpci.pci.function import PciFunction
from xenpci.pci.pcibios import PCIBIOS_DEVICE_NOT_FOUND, PCIBIOS_SUCCESSFUL
from xenpci.pciback.conf_space.dom0_pci import Dom0PciDev, InterruptPlatform, hw_read, hw_write
from xenpci.pcifront.xenbus import PciDevice, Pcifront
from xenpci.xenstore.client import XsClient

#: NVMe blocks and blkif sectors are both 512 bytes here.
SECTOR_SIZE = hw.BLOCK_SIZE


class Dom0BlockError(XenpciError):
    """dom0 could not bind or use its disk."""


class Dom0PciOps:
    """``struct pci_ops`` of dom0's own root bus: raw config cycles to the host functions."""

    def __init__(self, functions: Sequence[PciFunction]) -> None:
        self._fns = {f.sbdf: f for f in functions}

    def _fn(self, domain: int, bus: int, devfn: int) -> PciFunction | None:
        return self._fns.get(SBDF.from_devfn(domain, bus, devfn))

    def read(self, domain: int, bus: int, devfn: int, offset: int, size: int) -> tuple[int, int]:
        fn = self._fn(domain, bus, devfn)
        if fn is None:
            return PCIBIOS_DEVICE_NOT_FOUND, (1 << (8 * size)) - 1
        err, value = hw_read(fn, offset, size)
        return (PCIBIOS_SUCCESSFUL if err == 0 else PCIBIOS_DEVICE_NOT_FOUND), value

    def write(self, domain: int, bus: int, devfn: int, offset: int, size: int, value: int) -> int:
        fn = self._fn(domain, bus, devfn)
        if fn is None:
            return PCIBIOS_DEVICE_NOT_FOUND
        return PCIBIOS_SUCCESSFUL if hw_write(fn, offset, size, value) == 0 else 0x87


class Dom0Msi(Pcifront):
    """dom0's MSI-X set-up, behind the interface guest drivers call (``enable_msix``).

    A guest driver asks pcifront; dom0's PCI core asks the hypervisor itself
    (``PHYSDEVOP_map_pirq`` with dom0 as owner) and binds each pirq to one of
    its own event channels. Subclassing :class:`Pcifront` only lends the
    driver the same two calls; no XenBus device exists behind it.
    """

    def __init__(
        self, dom0: Domain, xs: XsClient, kernel: GuestKernel, platform: InterruptPlatform
    ) -> None:
        super().__init__(0, dom0.hypercalls, xs, kernel.pci)
        self.platform = platform
        self._linux: dict[SBDF, Dom0PciDev] = {}
        self.functions: dict[SBDF, PciFunction] = {}

    def enable_msix(
        self, dev: PciDevice, entries: list[int], handler: Callable[[int], None]
    ) -> list[int]:
        if not isinstance(dev, GuestPciDevice):  # the guest PCI core hands us only its own
            raise TypeError(f"not a guest PCI device: {dev!r}")
        fn = self.functions[dev.sbdf]
        linux = self._linux.setdefault(dev.sbdf, Dom0PciDev.probe(fn))
        err = linux.pci_enable_msix_exact(self.platform, 0, entries)
        if err:
            raise Dom0BlockError(f"dom0: MSI-X enable on {dev.sbdf} failed ({err})")
        dev.msix_pirqs = list(linux.msix_pirqs)
        return [self._bind_pirq(p, handler) for p in linux.msix_pirqs]

    def disable_msix(self, dev: PciDevice) -> int:
        if not isinstance(dev, GuestPciDevice):  # the guest PCI core hands us only its own
            raise TypeError(f"not a guest PCI device: {dev!r}")
        linux = self._linux.get(dev.sbdf)
        if linux is not None:
            linux.pci_disable_msix(self.platform)
        dev.msix_pirqs = []
        return 0


class Dom0Disk:
    """dom0's ``/dev/nvme0n1``: whole-sector reads and writes through dom0's NVMe driver."""

    def __init__(
        self,
        dom0: Domain,
        xs: XsClient,
        function: PciFunction,
        platform: InterruptPlatform,
        *,
        name: str = "nvme0n1",
    ) -> None:
        self.name = name
        self.function = function
        self.kernel = GuestKernel(dom0, xs)
        bus = self.kernel.pci.add_root(
            function.sbdf.segment, function.sbdf.bus, Dom0PciOps([function])
        )
        found = [d for d in bus.scan() if d.sbdf == function.sbdf]
        if not found:
            raise Dom0BlockError(f"dom0: no PCI function at {function.sbdf}")
        msi = Dom0Msi(dom0, xs, self.kernel, platform)
        msi.functions[function.sbdf] = function
        self.kernel.pcifront = msi
        self.driver = NvmeDriver(self.kernel, found[0])
        self._lock = threading.Lock()
        #: NVMe commands issued (reads and writes), for the comparison's "ops in dom0".
        self.commands = 0
        self.sectors = hw.NAMESPACE_BLOCKS
        self._probed = False

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The disk's lock; on the executor, a nested taker fails rather than hang."""
        if self.kernel.executor is None:
            with self._lock:
                yield
            return
        if not self._lock.acquire(blocking=False):
            raise Deadlock(f"{self.name}: the disk is busy with a command of another task")
        try:
            yield
        finally:
            self._lock.release()

    def probe(self) -> None:
        """Bind the driver (``nvme_probe``): enable, map BAR0, queues, MSI-X."""
        with self._exclusive():
            if not self._probed:
                self.driver.probe()
                self._probed = True

    def remove(self) -> None:
        with self._exclusive():
            if self._probed:
                self.driver.remove()
                self._probed = False

    def _check(self, sector: int, count: int) -> None:
        if count <= 0 or sector < 0 or sector + count > self.sectors:
            raise Dom0BlockError(
                f"{self.name}: sectors {sector}..{sector + count - 1} beyond {self.sectors}"
            )

    def read(self, sector: int, count: int) -> bytes:
        """Read ``count`` sectors, one NVMe command per MDTS (128 KiB)."""
        self._check(sector, count)
        out = []
        with self._exclusive():
            done = 0
            while done < count:
                n = min(MAX_BLOCKS_PER_CMD, count - done)
                out.append(self.driver.read_blocks(sector + done, n))
                self.commands += 1
                done += n
        return b"".join(out)

    def write(self, sector: int, data: bytes) -> None:
        if not data or len(data) % SECTOR_SIZE:
            raise Dom0BlockError(f"{self.name}: {len(data)} bytes is not whole sectors")
        count = len(data) // SECTOR_SIZE
        self._check(sector, count)
        with self._exclusive():
            done = 0
            while done < count:
                n = min(MAX_BLOCKS_PER_CMD, count - done)
                chunk = data[done * SECTOR_SIZE : (done + n) * SECTOR_SIZE]
                self.driver.write_blocks(sector + done, chunk)
                self.commands += 1
                done += n
