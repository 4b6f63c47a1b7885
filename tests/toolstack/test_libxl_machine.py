"""The toolstack on a real machine model: guests see their devices, grants follow BAR pages.

Everything here is the real stack in one process (hv, xenstored, pciback, pcifront, the
guest PCI core); only the xl front end is skipped (see test_e2e_cli.py for that).

Waits: the machine is deterministic (one thread, a virtual clock), so libxl's backend
waits and the tests' own waits are deadlines on virtual time, and a guest dying "during"
an attach is a watch callback run by the executor at an exact point. The one test that
stays threaded races two xl invocations (two OS threads, as two real xl processes) on
libxl's per-domain lock; its waits are bounded by the suite's named bounds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import OS_EDGE_TIMEOUT, THREADED_MODEL_TIMEOUT
from xenpci.pci import regs
from xenpci.pci.address import SBDF
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.errors import DomainGone, Refused, ToolstackError
from xenpci.toolstack.host import HostDescription, boot_machine
from xenpci.toolstack.libxl import Libxl, bar_page_ranges
from xenpci.toolstack.machine import Machine
from xenpci.toolstack.xlcfg import load_domain_config, parse_pci_spec
from xenpci.xenstore.client import XsClient

pytestmark = pytest.mark.timeout(60)

NIC = SBDF(0, 3, 0, 0)
NVME = SBDF(0, 4, 0, 0)
SUB_A = SBDF(0, 5, 0, 0)
MF0, MF1 = SBDF(0, 6, 0, 0), SBDF(0, 6, 0, 1)
LEGACY = SBDF(0, 7, 0, 0)


def wait_node(xs: XsClient, path: str, value: str, timeout: float = OS_EDGE_TIMEOUT) -> None:
    """Block (on a watch) until ``path`` reads ``value``.

    On a deterministic machine's client this drives the executor and ``timeout`` is
    virtual time; on a threaded one it is the OS-edge bound on another thread.
    """
    ok = threading.Event()
    token = f"test-wait-{path}-{value}"

    def cb(*_: object) -> None:
        try:
            if xs.read(path).decode() == value:
                ok.set()
        except ToolstackError:
            pass
        except Exception:
            pass

    xs.watch(path, token, cb)
    try:
        cb()
        executor = xs.executor
        done = executor.wait_until(ok.is_set, timeout) if executor else ok.wait(timeout)
        assert done, f"{path} never became {value!r}"
    finally:
        xs.unwatch(path, token)


def kill_when_claimed(machine: Machine, sbdf: SBDF, domid: int) -> None:
    """Destroy guest ``domid`` as soon as libxl records ``sbdf`` as assigned to it: a
    watch callback, run by the deterministic executor while libxl waits."""
    path, token = f"{lp.libxl_pci_path(sbdf)}/domid", f"test-kill-{domid}"

    def cb(*_: object) -> None:
        if machine.xs.exists(path) and machine.xs.read(path) == str(domid).encode():
            machine.xs.unwatch(path, token)
            machine.stop_guest(domid)

    machine.xs.watch(path, token, cb)


@pytest.fixture(params=[True], ids=["iommu"])
def machine(request: pytest.FixtureRequest) -> Iterator[Machine]:
    m = boot_machine(HostDescription(iommu=request.param), deterministic=True)
    try:
        yield m
    finally:
        m.shutdown()


@pytest.fixture
def libxl(machine: Machine) -> Libxl:
    return Libxl(machine, machine.xs)  # libxl's own backend timeout, in virtual seconds


def clock_now(machine: Machine) -> float:
    """The deterministic machine's virtual clock."""
    assert machine.hv.scheduler is not None
    return machine.hv.scheduler.clock.now()


def spec(text: str):  # type: ignore[no-untyped-def]
    return parse_pci_spec(text)


def pages(ranges: list[tuple[int, int]]) -> set[int]:
    return {p for first, last in ranges for p in range(first, last + 1)}


def guest_sees(machine: Machine, domid: int) -> set[tuple[int, int]]:
    return {(d.vendor, d.device) for d in machine.guest(domid).pci.devices()}


def test_create_attach_and_the_guest_sees_it(machine: Machine, libxl: Libxl) -> None:
    libxl.assignable_add(NIC, "nic0")
    nic = machine.host_function(NIC)
    cfg = load_domain_config(
        'name = "g1"\nmemory = 16\npci = [ "nic0" ]'.replace('"nic0"', '"name=nic0,vslot=5"')
    )
    domid = libxl.domain_create(cfg)
    wait_node(machine.xs, f"{lp.frontend_path(domid)}/state", "4")
    assert guest_sees(machine, domid) == {(nic.vendor_id, nic.device_id)}
    # libxl's bookkeeping and keys
    assert lp.assigned_domid(machine.xs, NIC) == domid
    (entry,) = libxl.pci_list("g1")
    assert entry.sbdf == NIC and entry.vdevfn == 5 << 3 and entry.name == "nic0"
    # Grants: every page of every BAR, nothing beyond; the IOMMU context is the guest's.
    hc = machine.dom0
    ranges = bar_page_ranges(nic)
    assert ranges, "the NIC model has memory BARs"
    for kind, first, nr in ranges:
        assert kind == "iomem"
        assert hc.iomem_access_permitted(domid, first, first + nr - 1)
    # exactly the BARs' pages, nothing else (the invariant of STYLE.md's state machine)
    assert pages(machine.hv.permissions.snapshot(domid)["iomem"]) == pages(
        [(f, f + n - 1) for _k, f, n in ranges]
    )
    assert machine.hv.iommu.owner(NIC.sbdf_int) == domid
    assert libxl.assignable_list() == []


def test_hot_attach_detach_and_revocation(machine: Machine, libxl: Libxl) -> None:
    for s in (NIC, NVME):
        libxl.assignable_add(s)
    domid = libxl.domain_create(load_domain_config('name="g"\nmemory=16\npci=["03:00.0"]'))
    wait_node(machine.xs, f"{lp.frontend_path(domid)}/state", "4")
    libxl.pci_attach(domid, spec("04:00.0@7"))
    lp.wait_for_backend_state(machine.xs, domid)  # the 7 -> 8 -> 4 cycle completed
    nvme = machine.host_function(NVME)
    assert (nvme.vendor_id, nvme.device_id) in guest_sees(machine, domid)
    assert [str(e.sbdf) for e in libxl.pci_list(domid)] == [str(NIC), str(NVME)]

    libxl.pci_detach(domid, spec("03:00.0"))
    # compacted: the NVMe moved to index 0
    (only,) = libxl.pci_list(domid)
    assert only.index == 0 and only.sbdf == NVME and only.vdevfn == 7 << 3
    nic = machine.host_function(NIC)
    assert (nic.vendor_id, nic.device_id) not in guest_sees(machine, domid)
    for _kind, first, nr in bar_page_ranges(nic):
        assert not machine.dom0.iomem_access_permitted(domid, first, first + nr - 1)
    assert machine.hv.iommu.owner(NIC.sbdf_int) == 0
    assert [d.sbdf for d in libxl.assignable_list()] == [NIC]

    libxl.pci_detach(domid, spec("04:00.0"))
    assert not machine.xs.exists(lp.backend_path(domid))  # last one: dirs destroyed
    libxl.domain_destroy(domid)
    assert {d.sbdf for d in libxl.assignable_list()} == {NIC, NVME}


def test_legacy_irq_and_ioports_granted(machine: Machine, libxl: Libxl) -> None:
    libxl.assignable_add(LEGACY)
    fn = machine.host_function(LEGACY)
    domid = libxl.domain_create(load_domain_config('name="g"\nmemory=16\npci=["07:00.0"]'))
    io = [(first, nr) for kind, first, nr in bar_page_ranges(fn) if kind == "ioport"]
    assert io
    for first, nr in io:
        assert machine.dom0.ioports_access_permitted(domid, first, first + nr - 1)
    assert pages(machine.hv.permissions.snapshot(domid)["ioports"]) == pages(
        [(f, f + n - 1) for f, n in io]
    )
    irq = fn.config.read(regs.PCI_INTERRUPT_LINE, 1)
    assert 0 < irq < 0xFF
    assert machine.dom0.irq_access_permitted(domid, irq)
    libxl.pci_detach(domid, spec("07:00.0"))
    assert not machine.dom0.irq_access_permitted(domid, irq)
    for first, nr in io:
        assert not machine.dom0.ioports_access_permitted(domid, first, first + nr - 1)
    libxl.domain_destroy(domid)


def test_refusals(machine: Machine, libxl: Libxl) -> None:
    def reason(fn) -> str:  # type: ignore[no-untyped-def]
        with pytest.raises(Refused) as e:
            fn()
        return e.value.reason

    a = libxl.domain_create(load_domain_config('name="a"\nmemory=16'))
    b = libxl.domain_create(load_domain_config('name="b"\nmemory=16'))
    assert reason(lambda: libxl.pci_attach(a, spec("03:00.0"))) == "not-assignable"
    libxl.assignable_add(NIC)
    libxl.pci_attach(a, spec("03:00.0"))
    assert reason(lambda: libxl.pci_attach(b, spec("03:00.0"))) == "already-assigned"
    libxl.assignable_add(MF0)
    libxl.assignable_add(MF1)
    libxl.pci_attach(a, spec("06:00.0"))
    assert reason(lambda: libxl.pci_attach(b, spec("06:00.1"))) == "split-functions"
    libxl.assignable_add(SUB_A)
    assert reason(lambda: libxl.pci_attach(b, spec("05:00.0"))) == "shared-page"
    # the user may override the beyond-libxl refusal, not the libxl ones
    libxl.pci_attach(b, spec("05:00.0"), allow_unsafe=True)
    assert reason(lambda: libxl.pci_attach(b, spec("09:00.0"))) == "no-such-device"
    with pytest.raises(ToolstackError, match="malformed BDF 'no-such-name'") as bad:
        libxl.assignable_remove("no-such-name")  # not a name, then not a BDF: xl exits 2
    assert bad.value.exit_code == 2
    # a device that is on the host but not assignable: libxl's de-quarantine fails
    assert reason(lambda: libxl.assignable_remove("0000:07:00.0")) == "not-assignable"
    assert reason(lambda: libxl.assignable_remove(str(NIC))) == "assigned"
    # a refused create leaves no domain behind
    before = [d.name for d in libxl.domain_list()]
    with pytest.raises(Refused):
        libxl.domain_create(load_domain_config('name="c"\nmemory=16\npci=["03:00.0"]'))
    assert [d.name for d in libxl.domain_list()] == before
    for d in (a, b):
        libxl.domain_destroy(d)
    assert {d.sbdf for d in libxl.assignable_list()} == {NIC, MF0, MF1, SUB_A}


def test_all_functions_attach_every_function(machine: Machine, libxl: Libxl) -> None:
    libxl.assignable_add(MF0)
    libxl.assignable_add(MF1)
    domid = libxl.domain_create(load_domain_config('name="g"\nmemory=16\npci=["06:00.*@3"]'))
    got = {(e.sbdf, e.vdevfn) for e in libxl.pci_list(domid)}
    assert got == {(MF0, 3 << 3 | 0), (MF1, 3 << 3 | 1)}
    libxl.pci_detach(domid, spec("06:00.*@3"))
    assert libxl.pci_list(domid) == []
    libxl.domain_destroy(domid)


def test_guest_killed_mid_attach(machine: Machine, libxl: Libxl) -> None:
    """The guest dies during hot-plug: every device comes back reset and assignable."""
    for s in (NIC, NVME, LEGACY):
        libxl.assignable_add(s)
    domid = libxl.domain_create(load_domain_config('name="g"\nmemory=16\npci=["03:00.0"]'))
    wait_node(machine.xs, f"{lp.frontend_path(domid)}/state", "4")
    # The guest's kernel hangs: it will never answer a Reconfiguring backend.
    machine.guest(domid).shutdown()
    libxl.pci_attach(domid, spec("04:00.0"))  # writes state 7; the handshake never ends
    nvme = machine.host_function(NVME)
    # Whatever the guest did to the device (here: bus mastering on) must not survive.
    cmd = nvme.config_read(regs.PCI_COMMAND, 2)
    nvme.config_write(regs.PCI_COMMAND, 2, cmd | regs.PCI_COMMAND_MASTER)
    # A third attach waits for the backend to be Connected again; the guest dies meanwhile.
    # The killer strikes once the attach has begun (libxl has claimed the device), not
    # after a fixed delay: wherever the attach then is (granting, or waiting on the
    # backend), the death must end it with DomainGone.
    kill_when_claimed(machine, LEGACY, domid)
    t0 = clock_now(machine)
    with pytest.raises(DomainGone):
        libxl.pci_attach(domid, spec("07:00.0"))
    # woken by @releaseDomain, not by libxl's timeout: no virtual time passed at all
    assert clock_now(machine) == t0
    # the device being attached was rolled back at once
    assert lp.assigned_domid(machine.xs, LEGACY) is None
    assert LEGACY in {d.sbdf for d in libxl.assignable_list()}
    # xl destroy of the dead guest takes back the rest
    libxl.domain_destroy(domid)
    assert {d.sbdf for d in libxl.assignable_list()} == {NIC, NVME, LEGACY}
    assert not nvme.config_read(regs.PCI_COMMAND, 2) & regs.PCI_COMMAND_MASTER
    for s in (NIC, NVME, LEGACY):
        assert machine.hv.iommu.owner(s.sbdf_int) == 0
    assert not machine.xs.exists(lp.backend_path(domid))


def test_attach_to_a_guest_that_died_unnoticed(machine: Machine, libxl: Libxl) -> None:
    """The guest is gone before the attach grants anything: DomainGone, nothing kept."""
    libxl.assignable_add(LEGACY)
    domid = libxl.domain_create(load_domain_config('name="g"\nmemory=16'))
    machine.stop_guest(domid)  # died behind the toolstack's back (libxl still has it)
    with pytest.raises(DomainGone) as e:
        libxl.pci_attach(domid, spec("07:00.0"))
    assert e.value.domid == domid
    assert lp.assigned_domid(machine.xs, LEGACY) is None
    assert [d.sbdf for d in libxl.assignable_list()] == [LEGACY]
    assert machine.hv.iommu.owner(LEGACY.sbdf_int) == 0
    libxl.domain_destroy(domid)
    assert [d.name for d in libxl.domain_list()] == ["Domain-0"]


def test_no_iommu_refuses_dma_capable_devices() -> None:
    m = boot_machine(HostDescription(iommu=False), deterministic=True)
    try:
        libxl = Libxl(m, m.xs)
        libxl.assignable_add(NIC)
        with pytest.raises(Refused) as e:
            libxl.domain_create(load_domain_config('name="g"\nmemory=16\npci=["03:00.0"]'))
        assert e.value.reason == "no-iommu"
        assert "as trusted as dom0" in e.value.message
        g = libxl.domain_create(load_domain_config('name="g"\nmemory=16'))
        with pytest.raises(Refused) as e2:
            libxl.pci_attach(g, spec("03:00.0"))
        assert e2.value.reason == "no-iommu"
        libxl.pci_attach(g, spec("03:00.0"), allow_unsafe=True)
        assert m.hv.iommu.owner(NIC.sbdf_int) == 0  # nothing to assign without an IOMMU
        assert [e.sbdf for e in libxl.pci_list(g)] == [NIC]
        libxl.domain_destroy(g)
    finally:
        m.shutdown()


def test_first_device_hot_plugged_and_seize(machine: Machine, libxl: Libxl) -> None:
    """A guest created bare gets its first device by hot-plug (fresh backend, initial
    connect); ``seize=1`` binds a device to pciback on the way."""
    domid = libxl.domain_create(load_domain_config('name="g"\nmemory=16'))
    assert NVME not in machine.pciback_bound()
    libxl.pci_attach(domid, spec("04:00.0,seize=1"))
    assert NVME in machine.pciback_bound()
    wait_node(machine.xs, f"{lp.frontend_path(domid)}/state", "4")
    nvme = machine.host_function(NVME)
    assert guest_sees(machine, domid) == {(nvme.vendor_id, nvme.device_id)}
    libxl.domain_destroy(domid)
    assert [d.sbdf for d in libxl.assignable_list()] == [NVME]


def test_detach_from_an_unresponsive_guest(machine: Machine, libxl: Libxl) -> None:
    """Without -f a guest that never lets go keeps the device (timeout error); -f takes it."""
    libxl.assignable_add(NIC)
    domid = libxl.domain_create(load_domain_config('name="g"\nmemory=16\npci=["03:00.0"]'))
    wait_node(machine.xs, f"{lp.frontend_path(domid)}/state", "4")
    machine.guest(domid).shutdown()  # the kernel hangs
    t0 = clock_now(machine)
    with pytest.raises(ToolstackError, match="not ready"):
        libxl.pci_detach(domid, spec("03:00.0"))
    assert clock_now(machine) - t0 == pytest.approx(libxl.timeout)  # waited it out, no more
    assert lp.assigned_domid(machine.xs, NIC) == domid  # still the guest's
    assert machine.hv.iommu.owner(NIC.sbdf_int) == domid
    libxl.pci_detach(domid, spec("03:00.0"), force=True)
    assert lp.assigned_domid(machine.xs, NIC) is None
    assert machine.hv.iommu.owner(NIC.sbdf_int) == 0
    assert machine.hv.permissions.snapshot(domid)["iomem"] == []
    assert [d.sbdf for d in libxl.assignable_list()] == [NIC]
    libxl.domain_destroy(domid)


@pytest.fixture
def threaded() -> Iterator[Machine]:
    """A threaded machine: for two xl invocations racing from two OS threads."""
    m = boot_machine(HostDescription())
    try:
        yield m
    finally:
        m.shutdown()


def test_destroy_ends_an_attach_waiting_on_a_wedged_guest(threaded: Machine) -> None:
    """xl destroy while another xl waits on the same hung guest: both finish promptly."""
    machine = threaded
    # the waiter must be woken by the destroy (DomainGone), not by its timeout
    libxl = Libxl(machine, machine.xs, timeout=THREADED_MODEL_TIMEOUT)
    for s in (NIC, NVME, LEGACY):
        libxl.assignable_add(s)
    domid = libxl.domain_create(load_domain_config('name="g"\nmemory=16\npci=["03:00.0"]'))
    wait_node(machine.xs, f"{lp.frontend_path(domid)}/state", "4")
    machine.guest(domid).shutdown()
    libxl.pci_attach(domid, spec("04:00.0"))  # backend left Reconfiguring for good
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            libxl.pci_attach(domid, spec("07:00.0"))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    # Once libxl has claimed the device the waiter holds the context (a fixed sleep
    # could let the destroy run first, and the attach would then find no domain).
    wait_node(machine.xs, f"{lp.libxl_pci_path(LEGACY)}/domid", str(domid))
    t0 = time.monotonic()
    libxl.domain_destroy(domid)
    t.join(OS_EDGE_TIMEOUT)
    assert not t.is_alive()
    assert time.monotonic() - t0 < libxl.timeout  # the destroy woke it, not its timeout
    assert len(errors) == 1 and isinstance(errors[0], DomainGone)
    assert {d.sbdf for d in libxl.assignable_list()} == {NIC, NVME, LEGACY}
    assert [d.name for d in libxl.domain_list()] == ["Domain-0"]


@pytest.mark.interop
def test_host_file_with_a_real_dump_device(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A device from a real lspci dump keeps its host BAR addresses; grants cover them."""
    from tests.interop import require_file
    from xenpci.toolstack.host import load_host

    dump = require_file("/work/shared/data/lspci-dumps/cap-address-xlation")
    host = tmp_path / "host.toml"
    host.write_text(f'catalog = false\n[[device]]\nsource = "{dump}"\n')
    m = boot_machine(load_host(host), deterministic=True)
    try:
        libxl = Libxl(m, m.xs)
        dev = SBDF(0, 2, 0, 0)
        assert [f.sbdf for f in m.host_functions()] == [dev]
        libxl.assignable_add(dev)
        domid = libxl.domain_create(load_domain_config('name="g"\nmemory=16\npci=["02:00.0"]'))
        snap = m.hv.permissions.snapshot(domid)
        # BAR0 16 MiB at 0x50000000, BAR2 1 MiB at 0x53100000 (from the dump's Region lines);
        # the ROM's size is unknown in the dump, so it is not granted.
        assert pages(snap["iomem"]) == pages(
            [(0x50000, 0x50000 + 4096 - 1), (0x53100, 0x53100 + 256 - 1)]
        )
        libxl.domain_destroy(domid)
        assert [d.sbdf for d in libxl.assignable_list()] == [dev]
    finally:
        m.shutdown()


def test_page_sharers_may_go_to_one_guest(machine: Machine, libxl: Libxl) -> None:
    """SUPPORT.md's mitigation: all devices sharing a page to the same guest is fine."""
    sub_b = SBDF(0, 5, 1, 0)
    libxl.assignable_add(SUB_A)
    libxl.assignable_add(sub_b)
    # both in one configuration: accepted
    g = libxl.domain_create(load_domain_config('name="g"\nmemory=16\npci=["05:00.0", "05:01.0"]'))
    assert {e.sbdf for e in libxl.pci_list(g)} == {SUB_A, sub_b}
    libxl.pci_detach(g, spec("05:01.0"))
    other = libxl.domain_create(load_domain_config('name="o"\nmemory=16'))
    with pytest.raises(Refused) as e:
        libxl.pci_attach(other, spec("05:01.0"))  # its page holds g's registers
    assert e.value.reason == "shared-page"
    libxl.pci_attach(g, spec("05:01.0"))  # back to the guest that owns the neighbour
    libxl.domain_destroy(g)
    libxl.domain_destroy(other)


def test_operations_are_traced(machine: Machine) -> None:
    """Each xl operation lands in the machine's trace, dom0 acting, with its outcome."""
    libxl = Libxl(machine, machine.xs, trace=machine.trace)
    libxl.assignable_add(NIC)
    g = libxl.domain_create(load_domain_config('name="g"\nmemory=16'))
    libxl.pci_attach(g, spec("03:00.0"))
    with pytest.raises(Refused):
        libxl.pci_attach(g, spec("07:00.0"))
    libxl.domain_destroy(g)
    got = [(e.args["op"], e.args["result"]) for e in machine.trace.events if e.kind == "toolstack"]
    assert got == [
        ("pci-assignable-add", "ok"),
        ("create", "ok"),
        ("pci-attach", "ok"),
        ("pci-attach", "not-assignable"),
        ("destroy", "ok"),
    ]


def test_one_iommu_group_one_guest(machine: Machine, libxl: Libxl) -> None:
    """Devices the IOMMU cannot tell apart (one group) may not be split between guests."""
    for s in (NIC, NVME):
        machine.host_function(s).iommu_group = 7  # the host's topology: one group
        libxl.assignable_add(s)
    a = libxl.domain_create(load_domain_config('name="a"\nmemory=16\npci=["03:00.0"]'))
    b = libxl.domain_create(load_domain_config('name="b"\nmemory=16'))
    with pytest.raises(Refused) as e:
        libxl.pci_attach(b, spec("04:00.0"))
    assert e.value.reason == "split-functions" and "IOMMU group 7" in e.value.message
    libxl.pci_attach(a, spec("04:00.0"))  # the same guest may have both
    libxl.domain_destroy(a)
    libxl.domain_destroy(b)
