"""One boot-a-guest-with-devices path and one refusal table (issue 11).

``xl create``, ``xenpci pci guest-view`` and the split-driver tests all boot through
:meth:`Libxl.domain_create` (``machine.boot_guest``), and attach and guest-view refuse
from the same table (:data:`xenpci.check.rules.REFUSALS`). The expected permissions come
from the device's BARs read by the hypervisor's own range checks, not from the toolstack.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from xenpci.check.rules import REFUSALS, RULES_BY_NAME
from xenpci.devices import catalog
from xenpci.hv.memory import PAGE_SHIFT
from xenpci.pci.sources import open_source
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.errors import Refused
from xenpci.toolstack.libxl import Libxl
from xenpci.toolstack.machine import Machine, boot_guest, guest_view, refusal_reason
from xenpci.toolstack.xlcfg import load_domain_config, parse_pci_spec

IDE = Path(__file__).parents[1] / "pci" / "data" / "legacy-ide"


def _bare_dump(tmp_path: Path) -> Path:
    """``lspci -xxxx`` without ``-v``: no Region lines, so no BAR sizes."""
    lines = [ln for ln in IDE.read_text().splitlines() if not ln.startswith(("\t", " "))]
    out = tmp_path / "bare.txt"
    out.write_text("\n".join(lines) + "\n")
    return out


def test_every_refusal_row_is_a_check_rule() -> None:
    for name, _overridable in REFUSALS:
        assert RULES_BY_NAME[name].refusal is not None, name


def test_attach_and_guest_view_refuse_from_one_table(tmp_path: Path) -> None:
    (fn,) = open_source(f"{_bare_dump(tmp_path)}@00:03.0")
    report = guest_view([fn])
    assert not report.views
    (refused,) = report.refused
    assert refused.reason == refusal_reason(fn) and "--bar-size" in refused.reason
    with Machine() as m:
        m.add_host_devices([fn])
        m.pciback_bind(fn.sbdf)
        libxl = Libxl(m, m.xs, timeout=10)
        domid = libxl.domain_create(load_domain_config('name = "g"\nmemory = 16\n'))
        for unsafe in (False, True):  # not overridable: the guest's view would be a guess
            with pytest.raises(Refused) as e:
                libxl.pci_attach(domid, parse_pci_spec(str(fn.sbdf)), allow_unsafe=unsafe)
            assert (e.value.reason, e.value.message) == ("config", refused.reason)
        assert lp.device_pci_list(m.xs, domid) == []


def test_boot_guest_is_xl_creates_path() -> None:
    """The helper tests and guest-view boot with is xl create's: the guest is granted its
    BAR pages and the IOMMU context, and libxl records the domain."""
    nic = catalog.make("nic", "0000:03:00.0")
    with Machine() as m:
        domid = boot_guest(m, nic, "g")
        (entry,) = lp.device_pci_list(m.xs, domid)
        assert entry.sbdf == nic[0].sbdf
        fn = m.host_function(nic[0].sbdf)
        for bar in fn.bars:
            if bar.address and bar.size and not bar.is_io:
                first = bar.address >> PAGE_SHIFT
                last = (bar.address + bar.size - 1) >> PAGE_SHIFT
                assert m.hv.permissions.iomem_permitted(domid, first, last), bar
        # an unrelated page is not granted
        assert not m.hv.permissions.iomem_permitted(domid, 0x1000, 0x1000)
