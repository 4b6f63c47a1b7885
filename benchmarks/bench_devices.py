"""Device models: config dword reads/s and NIC loopback packets/s.

Config reads go through ``DeviceModel.config_read`` (the path pciback and
the guest take) on the catalog NIC; the baseline is the cheapest possible
read of the same bytes, ``int.from_bytes`` on a bytearray slice, timed in
the same run. The NIC figure sends 64-byte frames through TX->RX loopback
with DMA to an in-memory port, against a baseline of the same number of
bytes copied by ``MemoryDmaPort`` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.timing import time_per_call
from xenpci.devices import catalog
from xenpci.devices.dma import MemoryDmaPort
from xenpci.devices.nic import (
    CTRL_EN,
    E1000_CTRL,
    E1000_RDBAL,
    E1000_RDLEN,
    E1000_RDT,
    E1000_TDBAL,
    E1000_TDLEN,
    E1000_TDT,
    NicFunction,
)
from xenpci.devices.ring import TXD_CMD_EOP, Descriptor
from xenpci.pci import regs


def _rate(fn: Callable[[], None], ops_per_call: int) -> float:
    return ops_per_call / time_per_call(fn)


def _config_reads() -> dict[str, Any]:
    nic = catalog.make("nic")[0]
    offsets = list(range(0, 256, 4))
    raw = bytearray(nic.config.raw())

    def model() -> None:
        for off in offsets:
            nic.config_read(off, 4)

    def baseline() -> None:
        for off in offsets:
            int.from_bytes(raw[off : off + 4], "little")

    value = _rate(model, len(offsets))
    base = _rate(baseline, len(offsets))
    return {
        "name": "config dword reads (nic)",
        "value": value,
        "unit": "reads/s",
        "baseline": round(base, 1),
        "ratio": value / base,
        "target": ">= 0.1 (model overhead within 10x of a raw slice)",
    }


def _loopback() -> dict[str, Any]:
    n = 256
    mem = MemoryDmaPort()
    nic = catalog.make("nic", dma=mem)[0]
    assert isinstance(nic, NicFunction)
    nic.config_write(regs.PCI_COMMAND, 2, regs.PCI_COMMAND_MEMORY | regs.PCI_COMMAND_MASTER)
    w = nic.mmio_write
    for off, val in (
        (E1000_TDBAL, 0x10000),
        (E1000_TDLEN, 16 * n),
        (E1000_RDBAL, 0x20000),
        (E1000_RDLEN, 16 * n),
        (E1000_CTRL, CTRL_EN),
    ):
        w(0, off, 4, val)
    frame = bytes(64)
    for i in range(n):
        mem.write(0x100000 + 64 * i, frame)
        mem.write(0x10000 + 16 * i, Descriptor(0x100000 + 64 * i, 64, TXD_CMD_EOP).pack())
        mem.write(0x20000 + 16 * i, Descriptor(0x200000 + 2048 * i, 0).pack())
    state = {"tail": 0}

    def send_batch() -> None:
        # Give all RX buffers back, then send n-1 frames with one doorbell.
        head = nic.core.regs["RDH"]
        w(0, E1000_RDT, 4, (head - 1) % n)
        state["tail"] = (state["tail"] + n - 1) % n
        w(0, E1000_TDT, 4, state["tail"])

    def baseline() -> None:
        for i in range(n - 1):
            mem.write(0x200000 + 2048 * i, mem.read(0x100000 + 64 * i, 64))

    value = _rate(send_batch, n - 1)
    # The figure is only meaningful if every frame really arrived.
    if nic.core.regs["MPC"] or nic.core.last_fault or nic.core.regs["TPR"] < n - 1:
        raise RuntimeError("loopback benchmark lost frames")
    base = _rate(baseline, n - 1)
    return {
        "name": "NIC loopback 64-byte frames",
        "value": value,
        "unit": "frames/s",
        "baseline": round(base, 1),
        "ratio": value / base,
        "target": ">= 0.05",
    }


def run() -> list[dict[str, Any]]:
    return [_config_reads(), _loopback()]


if __name__ == "__main__":
    for fig in run():
        print(fig)
