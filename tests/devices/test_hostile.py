"""Hostile drivers: arbitrary BAR and config traffic never crashes a model or escapes its DMA.

Also runs the PciFunction conformance suite (xenpci.pci.conformance) on every model.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.devices.conftest import enable
from xenpci.devices import catalog
from xenpci.devices.dma import DmaWindow, MemoryDmaPort
from xenpci.devices.errors import MmioError
from xenpci.devices.irq import IrqLog
from xenpci.pci.conformance import check_pci_function
from xenpci.pci.errors import ConfigError

WINDOW = DmaWindow(0x10000, 0x10000)


@pytest.mark.parametrize("name", catalog.names())
def test_models_pass_the_pci_function_conformance_suite(name: str) -> None:
    for fn in catalog.make(name):
        check_pci_function(fn)


accesses = st.lists(
    st.tuples(
        st.sampled_from(["mmio", "cfg"]),
        st.integers(0, 6),  # BAR index (config: ignored)
        st.integers(0, 0x3FFF),  # offset (BARs: scaled to the BAR below)
        st.sampled_from([1, 2, 4, 8]),
        st.integers(0, 2**64 - 1),
        st.booleans(),  # write?
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(catalog.names()), ops=accesses)
def test_arbitrary_traffic_only_raises_precise_errors(
    name: str, ops: list[tuple[str, int, int, int, int, bool]]
) -> None:
    mem = MemoryDmaPort((WINDOW,))
    for fn in catalog.make(name, dma=mem, raise_irq=IrqLog()):
        enable(fn, io=True)
        sizes = fn.bar_sizes
        for kind, bar, offset, size, value, write in ops:
            try:
                if kind == "cfg":
                    off, sz = offset % fn.config.size, min(size, 4)
                    if write:
                        fn.config_write(off, sz, value & ((1 << (8 * sz)) - 1))
                    else:
                        fn.config_read(off, sz)
                    enable(fn, io=True)  # keep the BARs reachable for the next access
                    continue
                if bar not in sizes:
                    continue
                off = offset % sizes[bar]
                if write:
                    fn.mmio_write(bar, off, size, value)
                else:
                    assert 0 <= fn.mmio_read(bar, off, size) < 1 << (8 * size)
            except (MmioError, ConfigError):
                pass  # a precise refusal is the right answer
    # Every DMA stayed inside the one mapped window (the port would have faulted).
    assert all(WINDOW.base <= p * 4096 < WINDOW.base + WINDOW.size for p in mem.touched_pages)
