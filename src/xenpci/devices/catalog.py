"""The catalog of device models, by name, and the ``model:NAME`` source scheme.

Plays the role of QEMU's ``-device NAME`` type registry: a name maps to a
factory that builds the function(s) at a given address. ``make`` returns a
list because some entries are several functions: "multifunction" is two NIC
functions at .0 and .1 wired back to back (TX of one arrives on RX of the
other), "bridge" is a PCIe-to-PCI bridge plus the legacy UART on its
secondary bus. Importing this module registers the ``model`` scheme with
:func:`xenpci.pci.sources.register_source_scheme`, so ``open_source("model:nic")``
(and ``model:nvme@0000:05:00.0``) works; ``xenpci.devices`` imports it.
"""

from __future__ import annotations

from collections.abc import Callable

from xenpci.devices.base import DeviceModel
from xenpci.devices.bridge import PcieToPciBridge
from xenpci.devices.dma import DmaPort
from xenpci.devices.errors import CatalogError, DeviceError
from xenpci.devices.gpu import GpuFunction
from xenpci.devices.irq import RaiseIrq
from xenpci.devices.nic import NicFunction
from xenpci.devices.nvme import NvmeFunction
from xenpci.devices.serial import SerialFunction
from xenpci.devices.subpage import SubpageFunction
from xenpci.pci.address import SBDF
from xenpci.pci.errors import AddressError, SourceError
from xenpci.pci.function import PciFunction
from xenpci.pci.sources import register_source_scheme

DEFAULT_SBDF = SBDF(0, 3, 0, 0)

Factory = Callable[[SBDF, DmaPort | None, RaiseIrq | None], list[DeviceModel]]


def _nic(sbdf: SBDF, dma: DmaPort | None, irq: RaiseIrq | None) -> list[DeviceModel]:
    return [NicFunction(sbdf, dma=dma, raise_irq=irq)]


def _nvme(sbdf: SBDF, dma: DmaPort | None, irq: RaiseIrq | None) -> list[DeviceModel]:
    return [NvmeFunction(sbdf, dma=dma, raise_irq=irq)]


def _gpu(sbdf: SBDF, dma: DmaPort | None, irq: RaiseIrq | None) -> list[DeviceModel]:
    return [GpuFunction(sbdf, dma=dma, raise_irq=irq)]


def _legacy(sbdf: SBDF, dma: DmaPort | None, irq: RaiseIrq | None) -> list[DeviceModel]:
    return [SerialFunction(sbdf, dma=dma, raise_irq=irq)]


def _subpage(sbdf: SBDF, dma: DmaPort | None, irq: RaiseIrq | None) -> list[DeviceModel]:
    return [SubpageFunction(sbdf, dma=dma, raise_irq=irq)]


def _multifunction(sbdf: SBDF, dma: DmaPort | None, irq: RaiseIrq | None) -> list[DeviceModel]:
    f0 = NicFunction(
        SBDF(sbdf.segment, sbdf.bus, sbdf.device, 0), dma=dma, raise_irq=irq, multifunction=True
    )
    f1 = NicFunction(
        SBDF(sbdf.segment, sbdf.bus, sbdf.device, 1), dma=dma, raise_irq=irq, multifunction=True
    )
    f0.core.wire(f1.core)
    return [f0, f1]


def _bridge(sbdf: SBDF, dma: DmaPort | None, irq: RaiseIrq | None) -> list[DeviceModel]:
    if sbdf.bus == 0xFF:
        raise DeviceError(f"bridge at {sbdf}: bus 0xff leaves no secondary bus number")
    bridge = PcieToPciBridge(sbdf, dma=dma, raise_irq=irq)
    behind = SerialFunction(SBDF(sbdf.segment, bridge.secondary_bus, 0, 0), dma=dma, raise_irq=irq)
    return [bridge, behind]


CATALOG: dict[str, Factory] = {
    "nic": _nic,
    "nvme": _nvme,
    "gpu": _gpu,
    "legacy": _legacy,
    "subpage": _subpage,
    "multifunction": _multifunction,
    "bridge": _bridge,
}


def names() -> tuple[str, ...]:
    return tuple(CATALOG)


def make(
    name: str,
    sbdf: SBDF | str = DEFAULT_SBDF,
    *,
    dma: DmaPort | None = None,
    raise_irq: RaiseIrq | None = None,
) -> list[DeviceModel]:
    """Build catalog entry ``name`` at ``sbdf`` (function 0 of a multifunction device)."""
    factory = CATALOG.get(name)
    if factory is None:
        raise CatalogError(name, names())
    where = SBDF.parse(sbdf) if isinstance(sbdf, str) else sbdf
    functions = factory(where, dma, raise_irq)
    for fn in functions:
        fn.source = f"model:{name}"  # the catalog entry, e.g. both halves of "multifunction"
    return functions


def _model_scheme(rest: str) -> list[PciFunction]:
    """``model:NAME`` or ``model:NAME@BDF``."""
    name, at, bdf = rest.partition("@")
    try:
        sbdf = SBDF.parse(bdf) if at else DEFAULT_SBDF
        return list(make(name, sbdf))
    except (CatalogError, AddressError) as e:
        raise SourceError(f"model:{rest}", str(e)) from None


register_source_scheme("model", _model_scheme)
