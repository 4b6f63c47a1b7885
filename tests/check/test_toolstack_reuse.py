"""The toolstack refuses ``pci-attach`` with exactly the reason ``xenpci check`` gives
for the same device on the same host (one rule table, one text)."""

from __future__ import annotations

import pytest

from xenpci.check import HostFacts, run_checks
from xenpci.pci.address import SBDF
from xenpci.toolstack.errors import Refused
from xenpci.toolstack.host import HostDescription, boot_machine
from xenpci.toolstack.libxl import Libxl
from xenpci.toolstack.xlcfg import load_domain_config, parse_pci_spec

pytestmark = pytest.mark.timeout(60)
NIC = SBDF(0, 3, 0, 0)
SUB_A = SBDF(0, 5, 0, 0)
OVERRIDE = " (override with --allow-unsafe)"


@pytest.mark.parametrize(
    ("iommu", "sbdf", "rule"), [(False, NIC, "iommu"), (True, SUB_A, "shared-page")]
)
def test_refusal_text_is_the_check_row(iommu: bool, sbdf: SBDF, rule: str) -> None:
    m = boot_machine(HostDescription(iommu=iommu), deterministic=True)
    try:
        libxl = Libxl(m, m.xs)
        libxl.assignable_add(sbdf)
        dom = libxl.domain_create(load_domain_config('name="g"\nmemory=16'))
        with pytest.raises(Refused) as e:
            libxl.pci_attach(dom, parse_pci_spec(f"{sbdf.bdf}"))
        facts = HostFacts(functions=list(m.host_functions()), source="machine", iommu=iommu)
        (row,) = [r for r in run_checks(facts, [sbdf]) if r.rule == rule]
        assert row.status == "fail"
        assert e.value.message == row.reason + OVERRIDE
        assert e.value.reason == {"iommu": "no-iommu", "shared-page": "shared-page"}[rule]
    finally:
        m.shutdown()
