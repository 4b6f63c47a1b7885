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
    with Machine(deterministic=True) as m:
        m.add_host_devices([fn])
        m.pciback_bind(fn.sbdf)
        libxl = Libxl(m, m.xs)
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
    with Machine(deterministic=True) as m:
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


def test_grants_follow_dom0s_resources_not_the_bar_registers(tmp_path: Path) -> None:
    """Behind an address-translating bridge dom0's resources (sysfs ``resource``, here a
    dump's Region lines) differ from the BAR registers: libxl grants the former, which is
    also what pciback shows the guest in its BARs (issue 13 follow-up)."""
    from tests.interop import require_file
    from xenpci.toolstack.host import HostDescription, boot_machine

    dump = Path(require_file("/work/shared/data/lspci-dumps/cap-address-xlation")).read_text()
    # the same device with the CPU side of a translation 0x20_0000_0000 above the bus side
    for bus_addr in ("50000000", "53100000"):
        dump = dump.replace(f"Memory at {bus_addr} (", f"Memory at 20{bus_addr} (")
    path = tmp_path / "xlated.txt"
    path.write_text(dump)
    m = boot_machine(HostDescription(sources=(str(path),)), deterministic=True)
    try:
        (fn,) = m.host_functions()
        res = fn.resources
        assert res[0].start == 0x20_5000_0000 and fn.bars[0].address == 0x5000_0000
        libxl = Libxl(m, m.xs)
        libxl.assignable_add(fn.sbdf)
        domid = libxl.domain_create(
            load_domain_config(f'name = "g"\nmemory = 16\npci = ["{fn.sbdf}"]\n')
        )
        want = set()
        for r in (res[0], res[2]):
            want |= set(range(r.start >> PAGE_SHIFT, (r.start + r.size) >> PAGE_SHIFT))
        got = {
            p for first, last in m.hv.permissions.snapshot(domid)["iomem"]
            for p in range(first, last + 1)
        }  # fmt: skip
        assert got == want
        # ... and the guest is shown those addresses in its BARs (pciback's bar_init)
        front = m.guest(domid).wait_for_pcifront()
        assert front.wait_connected(1)
        (dev,) = m.guest(domid).pci.devices()
        lo, hi = dev.read_config(0x10, 4), dev.read_config(0x14, 4)
        assert ((hi << 32) | lo) & ~0xF == res[0].start
    finally:
        m.shutdown()
