"""A loopback Ethernet controller: e1000-style registers and descriptor rings.

The register offsets and bits mirror the Intel 8254x (e1000) legacy interface
(SDM ch. 13: CTRL 0x0, STATUS 0x8, ICR 0xC0, IMS 0xD0, RDBAL..RDT 0x2800..,
TDBAL..TDT 0x3800.., TPR 0x40D0, TPT 0x40D4, MPC 0x4010). Deliberate
differences, because this is a model and not the e1000:

* There is no PHY or wire. A frame sent on TX arrives on the RX ring of the
  ``peer`` core; by default the peer is the core itself (loopback), and the
  "multifunction" catalog entry wires two cores back to back.
* ICR is write-1-to-clear (e1000 clears on read) and IMS is a plain read/write
  mask (e1000 splits it into IMS/IMC); bit 16 (``ICR_DMA_ERR``) is ours: it
  reports a DMA fault, which the e1000 would signal as a PCI master abort.
* Receive buffers are always 2048 bytes (the e1000 reset value of RCTL.BSIZE).

Each doorbell (TDT write) is processed synchronously, so the model is
deterministic. Processing is bounded by the ring size, and a faulting DMA
stops the engine with STATUS/ICR error bits set instead of raising.
"""

from __future__ import annotations

from collections.abc import Callable

from xenpci.devices.base import DeviceModel, Region
from xenpci.devices.builder import ConfigBuilder, MsixLayout
from xenpci.devices.dma import DmaPort
from xenpci.devices.errors import DmaFault
from xenpci.devices.irq import RaiseIrq
from xenpci.devices.regfile import Reg, RegisterFile
from xenpci.devices.ring import (
    DESC_STA_DD,
    RXD_STA_EOP,
    TXD_CMD_EOP,
    Descriptor,
    DescriptorRing,
)
from xenpci.pci.address import SBDF

NIC_MMIO_SIZE = 0x20000  # 128 KiB, as the 8254x BAR0
RX_BUFFER_SIZE = 2048
MAX_FRAME = 16384

E1000_CTRL = 0x0000
E1000_STATUS = 0x0008
E1000_ICR = 0x00C0
E1000_IMS = 0x00D0
E1000_RDBAL = 0x2800
E1000_RDBAH = 0x2804
E1000_RDLEN = 0x2808
E1000_RDH = 0x2810
E1000_RDT = 0x2818
E1000_TDBAL = 0x3800
E1000_TDBAH = 0x3804
E1000_TDLEN = 0x3808
E1000_TDH = 0x3810
E1000_TDT = 0x3818
E1000_MPC = 0x4010
E1000_TPR = 0x40D0
E1000_TPT = 0x40D4

CTRL_EN = 1 << 1  # model: "engine enabled" (e1000 bit 1 is reserved)
CTRL_RST = 1 << 26
STATUS_LU = 1 << 1
STATUS_DMA_ERR = 1 << 31  # model-specific
ICR_TXDW = 0x01
ICR_LSC = 0x04
ICR_RXO = 0x40
ICR_RXT0 = 0x80
ICR_DMA_ERR = 1 << 16  # model-specific

# MSI-X vector assignment (igb-style: one per queue, one for "other").
VEC_RX = 0
VEC_TX = 1
VEC_OTHER = 2
NIC_MSIX_VECTORS = 3


def _vector_of(cause: int) -> int:
    if cause & (ICR_RXT0 | ICR_RXO):
        return VEC_RX
    if cause & ICR_TXDW:
        return VEC_TX
    return VEC_OTHER


def nic_registers() -> RegisterFile:
    return RegisterFile(
        "nic-bar0",
        NIC_MMIO_SIZE,
        [
            Reg("CTRL", E1000_CTRL, wmask=CTRL_EN | CTRL_RST),
            Reg("STATUS", E1000_STATUS, wmask=0),
            Reg(
                "ICR", E1000_ICR, wmask=0, w1c=ICR_TXDW | ICR_LSC | ICR_RXO | ICR_RXT0 | ICR_DMA_ERR
            ),
            Reg("IMS", E1000_IMS, wmask=ICR_TXDW | ICR_LSC | ICR_RXO | ICR_RXT0 | ICR_DMA_ERR),
            Reg("RDBAL", E1000_RDBAL, wmask=0xFFFF_FFF0),  # 16-byte aligned
            Reg("RDBAH", E1000_RDBAH),
            Reg("RDLEN", E1000_RDLEN, wmask=0x000F_FFF0),
            Reg("RDH", E1000_RDH, wmask=0xFFFF),
            Reg("RDT", E1000_RDT, wmask=0xFFFF),
            Reg("TDBAL", E1000_TDBAL, wmask=0xFFFF_FFF0),
            Reg("TDBAH", E1000_TDBAH),
            Reg("TDLEN", E1000_TDLEN, wmask=0x000F_FFF0),
            Reg("TDH", E1000_TDH, wmask=0xFFFF),
            Reg("TDT", E1000_TDT, wmask=0xFFFF),
            Reg("MPC", E1000_MPC, wmask=0),
            Reg("TPR", E1000_TPR, wmask=0),
            Reg("TPT", E1000_TPT, wmask=0),
        ],
    )


class NicCore:
    """Registers plus TX/RX engines of one NIC function.

    ``dma`` is consulted on every access (the owning function swaps in a port
    that refuses DMA while Bus Master Enable is clear). ``signal(vector)`` is
    called when an unmasked cause is raised; the function turns it into MSI-X
    or INTx.
    """

    def __init__(self, dma: DmaPort, signal: Callable[[int], None] | None = None) -> None:
        self.dma = dma
        self.signal = signal
        self.regs = nic_registers()
        self.peer: NicCore = self
        self.last_fault: DmaFault | None = None
        self.errors: list[str] = []
        self.regs.on_write("TDT", lambda _old, _new: self._transmit())
        self.regs.on_write("RDT", self._rdt_written)
        self.regs.on_write("CTRL", self._ctrl_written)
        self.regs.on_write("IMS", lambda _old, _new: self._reassert())
        self.reset()

    def reset(self) -> None:
        self.regs.reset()
        self.regs["STATUS"] = STATUS_LU
        self.last_fault = None
        self.errors = []

    def wire(self, other: NicCore) -> None:
        """Connect two cores back to back (TX of one is RX of the other)."""
        self.peer = other
        other.peer = self

    # -- register side effects ------------------------------------------------
    def _ctrl_written(self, _old: int, new: int) -> None:
        if new & CTRL_RST:
            self.reset()  # self-clearing: reset() leaves CTRL at 0

    def _rdt_written(self, _old: int, _new: int) -> None:
        self._check_tail("RDT", "RDLEN")  # records hostile tails; RX checks again on use

    def _reassert(self) -> None:
        pending = self.regs["ICR"] & self.regs["IMS"]
        if pending and self.signal is not None:
            self.signal(_vector_of(pending))

    def raise_cause(self, cause: int) -> None:
        self.regs["ICR"] = self.regs["ICR"] | cause
        if cause & self.regs["IMS"] and self.signal is not None:
            self.signal(_vector_of(cause))

    def _fault(self, fault: DmaFault) -> None:
        self.last_fault = fault
        self.regs["STATUS"] = self.regs["STATUS"] | STATUS_DMA_ERR
        self.raise_cause(ICR_DMA_ERR)

    def _check_tail(self, tail: str, length: str) -> bool:
        count = self.regs[length] // 16
        if self.regs[tail] >= max(count, 1):
            self.errors.append(f"{tail}={self.regs[tail]} beyond a ring of {count} descriptors")
            return False
        return True

    def _ring(self, prefix: str) -> DescriptorRing:
        base = self.regs[f"{prefix}DBAL"] | (self.regs[f"{prefix}DBAH"] << 32)
        return DescriptorRing(base, self.regs[f"{prefix}DLEN"])

    @property
    def enabled(self) -> bool:
        return bool(self.regs["CTRL"] & CTRL_EN) and not self.regs["STATUS"] & STATUS_DMA_ERR

    # -- transmit ---------------------------------------------------------------
    def _transmit(self) -> None:
        if not self.enabled or not self._check_tail("TDT", "TDLEN"):
            return
        ring = self._ring("T")
        frame = bytearray()
        try:
            # Bounded: at most one pass over the ring per doorbell.
            for _ in range(ring.count):
                head = self.regs["TDH"]
                if head == self.regs["TDT"]:
                    break
                desc = ring.fetch(self.dma, head)
                frame += self.dma.read(desc.addr, desc.length)
                ring.store(
                    self.dma, head, Descriptor(desc.addr, desc.length, desc.cmd, DESC_STA_DD)
                )
                self.regs["TDH"] = (head + 1) % ring.count
                if desc.cmd & TXD_CMD_EOP:
                    self._send(bytes(frame))
                    frame.clear()
                if len(frame) > MAX_FRAME:
                    self.errors.append(f"frame longer than {MAX_FRAME} bytes dropped")
                    frame.clear()
        except DmaFault as fault:
            self._fault(fault)
            return
        self.raise_cause(ICR_TXDW)

    def _send(self, frame: bytes) -> None:
        self.regs["TPT"] = self.regs["TPT"] + 1
        self.peer.receive(frame)

    # -- receive ----------------------------------------------------------------
    def receive(self, frame: bytes) -> bool:
        """Put ``frame`` on the RX ring; False if it was dropped (counted in MPC)."""
        if not self.enabled or not frame:
            self.regs["MPC"] = self.regs["MPC"] + 1
            return False
        ring = self._ring("R")
        need = (len(frame) + RX_BUFFER_SIZE - 1) // RX_BUFFER_SIZE
        if ring.owned(self.regs["RDH"], self.regs["RDT"]) < need:
            self.regs["MPC"] = self.regs["MPC"] + 1
            self.raise_cause(ICR_RXO)
            return False
        try:
            for i in range(need):
                head = self.regs["RDH"]
                desc = ring.fetch(self.dma, head)
                chunk = frame[i * RX_BUFFER_SIZE : (i + 1) * RX_BUFFER_SIZE]
                self.dma.write(desc.addr, chunk)
                status = DESC_STA_DD | (RXD_STA_EOP if i == need - 1 else 0)
                ring.store(self.dma, head, Descriptor(desc.addr, len(chunk), 0, status))
                self.regs["RDH"] = (head + 1) % ring.count
        except DmaFault as fault:
            self._fault(fault)
            return False
        self.regs["TPR"] = self.regs["TPR"] + 1
        self.raise_cause(ICR_RXT0)
        return True


# --- the PCI function ------------------------------------------------------------
NIC_VENDOR = 0x1B36  # Red Hat/QEMU range; see NicFunction
NIC_DEVICE = 0x00E0
NIC_MSIX_BAR = 3


class NicFunction(DeviceModel):
    """The loopback NIC as a PCIe endpoint.

    IDs: vendor 1b36 (Red Hat, the range QEMU uses for its own test devices)
    with device 00e0, which xenpci picked and which is not a real product; it
    does not claim e1000 compatibility (8086:100e) because the register subset
    differs (see module doc). BAR0: 128 KiB registers; BAR3: 16 KiB holding the
    MSI-X table (offset 0) and PBA (offset 0x2000) on separate pages, as
    igb-class NICs do, so passthrough can map BAR0 whole. MSI-X vectors:
    0 = RX, 1 = TX, 2 = other (link, DMA error); INTx pin A otherwise.
    """

    model_name = "nic"

    def __init__(
        self,
        sbdf: SBDF,
        *,
        dma: DmaPort | None = None,
        raise_irq: RaiseIrq | None = None,
        multifunction: bool = False,
    ) -> None:
        b = ConfigBuilder(
            NIC_VENDOR,
            NIC_DEVICE,
            0x020000,
            revision=1,
            subsystem=(NIC_VENDOR, NIC_DEVICE),
            express=True,
            multifunction=multifunction,
            interrupt_pin=1,
        )
        b.bar(0, "mem32", NIC_MMIO_SIZE)
        b.bar(NIC_MSIX_BAR, "mem32", 0x4000)
        b.add_pm()
        b.add_express(flr=True)
        layout = MsixLayout(NIC_MSIX_VECTORS, NIC_MSIX_BAR, 0, NIC_MSIX_BAR, 0x2000)
        b.add_msix(layout)
        built = b.build()
        super().__init__(sbdf, built, dma=dma, raise_irq=raise_irq, msix=layout)
        self.core = NicCore(self.dma, self.signal)
        regs_ = self.core.regs
        self.add_region(0, Region("nic-regs", 0, NIC_MMIO_SIZE, regs_.read, regs_.write))
        regs_.on_write("ICR", self._icr_written)

    def _icr_written(self, _old: int, new: int) -> None:
        if not new & self.core.regs["IMS"]:
            self.set_intx(False)

    def reset_device(self) -> None:
        self.core.reset()
