"""Hostile guests against the split driver, each attack next to its defence.

A guest controls its shared page, its event channel and its own XenStore
client; it is hostile by assumption. Each test checks the exact answer Linux
pciback gives (fact sheet §1.2, §1.6: ``XEN_PCI_ERR_*`` or the raw errno),
that the host device is untouched, and that dom0 and another guest go on
working.
"""

from __future__ import annotations

import threading

import pytest

from xenpci.abi import pciif
from xenpci.abi.xenbus import XenbusState as S
from xenpci.devices import catalog
from xenpci.pci import regs
from xenpci.pci.capabilities import find_capability
from xenpci.pciback.pciback_ops import aer_poll, aer_post
from xenpci.pciback.vpci import GuestAddress
from xenpci.pcifront import ops
from xenpci.pcifront.xenbus import Pcifront
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.machine import Machine
from xenpci.xenstore.errors import XsError

from .helpers import boot_guest_with, until

pytestmark = pytest.mark.timeout(30)


def _raw(front: Pcifront, cmd: int, devfn: int = 0, **kw: int) -> ops.OpResult:
    """A hand-made op straight onto the shared page (the guest kernel is hostile)."""
    assert front.chan is not None
    return front.chan.call(ops.make_op(cmd, kw.pop("domain", 0), kw.pop("bus", 0), devfn, **kw))


@pytest.fixture
def two_guests(machine: Machine) -> tuple[Machine, Pcifront, Pcifront]:
    nic = catalog.make("nic", "0000:03:00.0")
    nvme = catalog.make("nvme", "0000:04:00.0")
    _d1, _k1, evil = boot_guest_with(machine, list(nic), "evil")
    _d2, _k2, good = boot_guest_with(machine, list(nvme), "good")
    return machine, evil, good


def _good_still_works(m: Machine, good: Pcifront) -> None:
    assert m.pciback.devices[good.domid].xenbus.state is S.XenbusStateConnected
    err, value = ops.conf_read(good._chan(), 0, 0, 0, regs.PCI_VENDOR_ID, 2)
    assert err == 0 and value == 0x1B36


@pytest.mark.parametrize(
    ("offset", "size", "err"),
    [
        (0x1000, 4, -22),  # past extended space: the host accessor's raw -EINVAL
        (0x7FFFFFFC, 4, -22),
        (-4, 4, -22),  # negative but aligned: passes valid_request, fails in hardware
        (0x11, 2, pciif.XEN_PCI_ERR_invalid_offset),  # misaligned
        (0x10, 3, pciif.XEN_PCI_ERR_invalid_offset),  # bad size
        (0x10, 0, pciif.XEN_PCI_ERR_invalid_offset),
        (0x10, 8, pciif.XEN_PCI_ERR_invalid_offset),
    ],
)
def test_bad_offsets_and_sizes(
    two_guests: tuple[Machine, Pcifront, Pcifront], offset: int, size: int, err: int
) -> None:
    m, evil, good = two_guests
    nic = m.host_function(next(p.sbdf for p in m.stub if p.owner == evil.domid))
    before = nic.config.raw()
    assert _raw(evil, pciif.XEN_PCI_OP_conf_read, offset=offset, size=size).err == err
    # A well-formed write nothing covers is dropped with success, as Linux does
    # without permissive (it never reaches the accessor that would say -EINVAL).
    res = _raw(evil, pciif.XEN_PCI_OP_conf_write, offset=offset, size=size, value=0xFFFFFFFF)
    assert res.err == (0 if err == -22 else err)
    assert nic.config.raw() == before
    _good_still_works(m, good)


@pytest.mark.parametrize("cmd", [6, 7, 8, 9, 10, 11, 0xFFFFFFFF])
def test_unknown_and_unimplemented_commands(
    two_guests: tuple[Machine, Pcifront, Pcifront], cmd: int
) -> None:
    m, evil, good = two_guests
    assert _raw(evil, cmd).err == pciif.XEN_PCI_ERR_not_implemented
    _good_still_works(m, good)


def test_wrong_bdf_is_dev_not_found_and_never_reaches_another_guests_device(
    two_guests: tuple[Machine, Pcifront, Pcifront],
) -> None:
    _m, evil, good = two_guests
    read = pciif.XEN_PCI_OP_conf_read
    assert _raw(evil, read, devfn=1 << 3, offset=0, size=4).err == -1  # empty slot
    assert _raw(evil, read, bus=1, offset=0, size=4).err == -1
    assert _raw(evil, read, domain=5, offset=0, size=4).err == -1
    # vpci masks devfn to 8 bits (Linux): 0x100 is slot 0 function 0, the guest's own
    res = _raw(evil, read, devfn=0x100, offset=0, size=2)
    assert res.err == 0 and res.value & 0xFFFF == 0x1B36
    # both guests have their device at 00:00.0, each sees only its own
    evil_id = _raw(evil, read, offset=regs.PCI_DEVICE_ID, size=2).value & 0xFFFF
    good_id = _raw(good, read, offset=regs.PCI_DEVICE_ID, size=2).value & 0xFFFF
    assert evil_id != good_id


def test_msix_entry_count_above_max_vec(two_guests: tuple[Machine, Pcifront, Pcifront]) -> None:
    m, evil, good = two_guests
    dev = next(iter(evil.pci.devices()))
    dev.write_config_checked(regs.PCI_COMMAND, 2, regs.PCI_COMMAND_MEMORY)
    res = _raw(evil, pciif.XEN_PCI_OP_enable_msix, value=pciif.SH_INFO_MAX_VEC + 1)
    assert res.err == -22 and res.value == pciif.SH_INFO_MAX_VEC + 1
    res = _raw(evil, pciif.XEN_PCI_OP_enable_msix, value=0xFFFFFFFF)
    assert res.err == -22
    nic = m.host_function(next(p.sbdf for p in m.stub if p.owner == evil.domid))
    msix = find_capability(nic.config, regs.PCI_CAP_ID_MSIX)
    assert msix is not None
    flags = nic.config.read(msix + regs.PCI_MSIX_FLAGS, 2)
    assert not flags & regs.PCI_MSIX_FLAGS_ENABLE  # nothing was enabled in hardware
    _good_still_works(m, good)


def test_bar_and_command_writes_cannot_reach_another_devices_memory(
    two_guests: tuple[Machine, Pcifront, Pcifront],
) -> None:
    m, evil, good = two_guests
    mine = m.host_function(next(p.sbdf for p in m.stub if p.owner == evil.domid))
    other = m.host_function(next(p.sbdf for p in m.stub if p.owner == good.domid))
    other_bar0 = other.config.read(regs.PCI_BASE_ADDRESS_0, 4)
    my_bar0 = mine.config.read(regs.PCI_BASE_ADDRESS_0, 4)
    dev = next(iter(evil.pci.devices()))
    for value in (other_bar0, other_bar0 | 0xF, 0, 0x1000):
        assert dev.write_config(regs.PCI_BASE_ADDRESS_0, 4, value) == 0  # silently ignored
        assert mine.config.read(regs.PCI_BASE_ADDRESS_0, 4) == my_bar0
        assert dev.read_config(regs.PCI_BASE_ADDRESS_0, 4) == my_bar0
    for off in (regs.PCI_BASE_ADDRESS_0, regs.PCI_BASE_ADDRESS_0 + 2):
        dev.write_config(off, 2, other_bar0 >> 16)
        dev.write_config(off, 1, 0xAB)
    assert mine.config.read(regs.PCI_BASE_ADDRESS_0, 4) == my_bar0
    # every COMMAND bit from the guest: hardware gets only what dom0's helpers set
    assert dev.write_config(regs.PCI_COMMAND, 2, 0xFFFF) == 0
    hw = mine.config.read(regs.PCI_COMMAND, 2)
    assert hw & ~(regs.PCI_COMMAND_MEMORY | regs.PCI_COMMAND_MASTER | regs.PCI_COMMAND_IO) == 0
    assert other.config.read(regs.PCI_BASE_ADDRESS_0, 4) == other_bar0
    # and the guest was granted no machine frame of the other device's BAR
    first = (other_bar0 & ~0xF) >> 12
    assert not m.dom0.iomem_access_permitted(evil.domid, first, first)
    _good_still_works(m, good)


def test_double_fetch_changing_the_op_while_handled(
    two_guests: tuple[Machine, Pcifront, Pcifront],
) -> None:
    m, evil, good = two_guests
    assert evil.chan is not None
    info = pciif.xen_pci_sharedinfo.from_buffer(evil.chan.page)
    nic = m.host_function(next(p.sbdf for p in m.stub if p.owner == evil.domid))
    ident = nic.config.read(0, 4)
    stop = threading.Event()

    def flip() -> None:
        # a second guest vCPU rewriting the op in the shared page all the time
        i = 0
        while not stop.is_set():
            i += 1
            info.op.size = 4 if i & 1 else 3
            info.op.offset = 0 if i & 2 else 0x1000
            info.op.cmd = pciif.XEN_PCI_OP_conf_read if i & 4 else 99

    th = threading.Thread(target=flip, daemon=True)
    th.start()
    try:
        answers = set()
        for _ in range(300):
            res = _raw(evil, pciif.XEN_PCI_OP_conf_read, offset=0, size=4)
            answers.add(res.err)
            # whatever snapshot pciback copied, a success is the real identity dword
            if res.err == 0:
                assert res.value == ident
            assert res.err in (0, -2, -4, -22)
    finally:
        stop.set()
        th.join()
    back = m.pciback.devices[evil.domid]
    assert back.stats.errors == []
    _good_still_works(m, good)


def test_notification_flood_is_coalesced_and_does_not_starve_another_guest(
    two_guests: tuple[Machine, Pcifront, Pcifront],
) -> None:
    m, evil, good = two_guests
    back = m.pciback.devices[evil.domid]
    assert evil.evtchn is not None
    hc, port = evil.hc, evil.evtchn
    vcpu = m.hv.domain(evil.domid).vcpu
    sent = [0]
    flooding = [True]
    served_before, spurious_before = back.stats.served, back.stats.spurious

    def flood() -> None:
        # The evil guest's vCPU spends every slice it gets notifying dom0, and
        # asks for the next slice at once: it is always runnable.
        for _ in range(FLOOD_BURST):
            hc.evtchn_send(port)
        sent[0] += FLOOD_BURST
        if flooding[0]:
            vcpu.post(flood)

    vcpu.post(flood)
    t0 = m.hv.scheduler.clock.now()
    try:
        for _ in range(200):
            err, value = ops.conf_read(good._chan(), 0, 0, 0, regs.PCI_VENDOR_ID, 2)
            assert (err, value) == (0, 0x1B36)
    finally:
        flooding[0] = False
    # The good guest's ops kept being served while the flood ran beside them
    # (each op's round trip ran after at least one flood slice), with no op
    # timing out: the virtual clock never had to jump to a deadline.
    assert sent[0] >= 200 * FLOOD_BURST
    assert m.hv.scheduler.clock.now() == t0
    # nothing was posted: no op served; one pending bit per port: far fewer
    # upcalls than sends reached dom0, each counted as spurious and dropped
    assert back.stats.served == served_before
    upcalls = back.stats.spurious - spurious_before
    assert 0 < upcalls <= sent[0] / FLOOD_BURST


#: Notifications the flooding guest sends per slice of its vCPU.
FLOOD_BURST = 50


def test_guest_cannot_write_the_backends_keys(machine: Machine) -> None:
    nic = catalog.make("nic", "0000:03:00.0")
    domid, kernel, _front = boot_guest_with(machine, list(nic))
    be = lp.backend_path(domid)
    xs = kernel.xs
    assert xs.read(f"{be}/dev-0") == b"0000:03:00.0"  # readable by the frontend domain
    for key, value in (("dev-0", "0000:04:00.0"), ("state", "7"), ("num_devs", "2"), ("x", "1")):
        with pytest.raises(XsError) as ei:
            xs.write(f"{be}/{key}", value)
        assert ei.value.code == "EACCES"
    with pytest.raises(XsError):
        xs.rm(be)
    assert lp.read_dir(machine.xs, be)["dev-0"] == "0000:03:00.0"
    assert machine.pciback.devices[domid].xenbus.state is S.XenbusStateConnected


def test_bad_magic_is_refused_and_a_silent_guest_hurts_nobody(machine: Machine) -> None:
    nic = catalog.make("nic", "0000:03:00.0")[0]
    nvme = catalog.make("nvme", "0000:04:00.0")[0]
    machine.add_host_devices([nic])
    machine.pciback_bind(nic.sbdf)
    # a guest whose kernel never runs pcifront: it writes what it likes by hand
    domid = machine.start_guest("mute", 64 * 1024, boot=False)
    lp.device_pci_add_xenstore(
        machine.xs, domid, "mute", lp.PciBackendDevice(nic.sbdf), starting=True
    )
    back = machine.pciback.wait_for_device(domid)
    assert back.wait_for_state(S.XenbusStateInitialised)
    # another guest boots and works meanwhile
    _d2, _k2, good = boot_guest_with(machine, [nvme], "good")
    assert ops.conf_read(good._chan(), 0, 0, 0, regs.PCI_VENDOR_ID, 2) == (0, 0x1B36)
    assert back.xenbus.state is S.XenbusStateInitialised  # still waiting, nothing else
    # now the mute guest speaks, with the wrong protocol version
    guest_xs = machine.guest(domid).xs
    fe = lp.frontend_path(domid)
    guest_xs.write(f"{fe}/pci-op-ref", "0")
    guest_xs.write(f"{fe}/event-channel", "1")
    guest_xs.write(f"{fe}/magic", "8")
    guest_xs.write(f"{fe}/state", "3")
    assert back.wait_for_state(S.XenbusStateClosing)
    err = machine.xs.read(f"/local/domain/0/error/backend/pci/{domid}/0/error").decode()
    assert "version mismatch" in err
    assert back.mapping is None and back.evtchn is None
    # tearing the mute guest down releases its device
    lp.device_destroy(machine.xs, domid)
    assert machine.pciback.wait(lambda d: domid not in d.devices)
    assert machine.stub.get(nic.sbdf).owner is None
    assert ops.conf_read(good._chan(), 0, 0, 0, regs.PCI_VENDOR_ID, 2) == (0, 0x1B36)


def test_backend_that_never_answers_times_out_with_minus_one() -> None:
    with Machine(deterministic=True) as m:
        ex = m.hv.scheduler
        assert ex is not None
        nic = catalog.make("nic", "0000:03:00.0")
        domid, kernel, front = boot_guest_with(m, list(nic))
        back = m.pciback.devices[domid]
        dev = next(iter(kernel.pci.devices()))
        assert back.evtchn is not None
        m.dom0.evtchn_mask(back.evtchn)  # dom0 stops listening
        t0 = ex.clock.now()
        res = _raw(front, pciif.XEN_PCI_OP_conf_read, offset=0, size=4)
        assert res.err == pciif.XEN_PCI_ERR_dev_not_found
        assert ex.clock.now() - t0 == 2.0  # Linux's 2 s deadline, exactly, on the machine clock
        assert dev.read_config(regs.PCI_VENDOR_ID, 2) == 0xFFFF  # PCI core: all-ones
        assert front.chan is not None and front.chan.timeouts == 2
        info = pciif.xen_pci_sharedinfo.from_buffer(front.chan.page)
        assert not info.flags & pciif.XEN_PCIF_active  # the frontend cleared it itself
        m.dom0.evtchn_unmask(back.evtchn)  # the stale event is spurious now
        assert dev.read_config(regs.PCI_VENDOR_ID, 2) == 0x1B36


def test_toolstack_naming_an_unseized_device_is_fatal_not_a_crash(machine: Machine) -> None:
    nic = catalog.make("nic", "0000:03:00.0")[0]
    machine.add_host_devices([nic])  # on the host but never given to pciback
    domid = machine.start_guest("g", 32 * 1024, paused=True)
    lp.device_pci_add_xenstore(machine.xs, domid, "g", lp.PciBackendDevice(nic.sbdf), starting=True)
    back = machine.pciback.wait_for_device(domid)
    assert back.wait_for_state(S.XenbusStateClosing)
    err = machine.xs.read(f"/local/domain/0/error/backend/pci/{domid}/0/error").decode()
    assert "0000:03:00.0" in err
    # garbage in dev-N (the layout's ops with one value replaced, in one
    # transaction): a precise refusal too, and the seized device stays free
    machine.pciback_bind(nic.sbdf)
    domid2 = machine.start_guest("h", 32 * 1024, paused=True)
    layout = lp.create_backend_ops(domid2, "h") + lp.add_device_ops(
        domid2, 0, lp.PciBackendDevice(nic.sbdf)
    )
    layout = [
        lp.XsWrite(op.path, "zz:top")
        if isinstance(op, lp.XsWrite) and op.path.endswith("/dev-0")
        else op
        for op in layout
    ]
    lp.in_transaction(machine.xs, lambda t: lp.apply_ops(t, layout))
    back2 = machine.pciback.wait_for_device(domid2)
    assert back2.wait_for_state(S.XenbusStateClosing)
    err2 = machine.xs.read(f"/local/domain/0/error/backend/pci/{domid2}/0/error").decode()
    assert "Error reading device configuration" in err2 and "zz:top" in err2
    assert machine.stub.get(nic.sbdf).owner is None


def test_frontend_answers_an_aer_request_without_a_driver(machine: Machine) -> None:
    nic = catalog.make("nic", "0000:03:00.0")
    domid, _kernel, front = boot_guest_with(machine, list(nic))
    back = machine.pciback.devices[domid]
    assert back.mapping is not None and back.evtchn is not None
    page = back.mapping.view
    info = pciif.xen_pci_sharedinfo.from_buffer(page)
    assert info.flags & pciif.XEN_PCIB_AERHANDLER  # announced at probe
    assert aer_post(page, pciif.XEN_PCI_OP_aer_detected, 2, GuestAddress(0, 0, 0))
    machine.dom0.evtchn_send(back.evtchn)
    until(machine, lambda: aer_poll(page) is not None)  # the guest's vCPU answers
    assert aer_poll(page) == 1  # PCI_ERS_RESULT_NONE: no guest driver has AER handlers
    # and ordinary ops still work afterwards
    assert ops.conf_read(front._chan(), 0, 0, 0, regs.PCI_VENDOR_ID, 2) == (0, 0x1B36)


@pytest.mark.parametrize(
    ("ref", "port", "why"),
    [
        ("999", None, "Error mapping other domain page"),  # a grant that does not exist
        ("abc", None, "Error reading configuration from frontend"),
        (None, "4000", "Error binding event channel"),  # not a port of this guest
        (None, "-1", "Error binding event channel"),
        (None, "x", "Error reading configuration from frontend"),
    ],
)
def test_hostile_frontend_keys_are_refused_at_attach(
    machine: Machine, ref: str | None, port: str | None, why: str
) -> None:
    nic = catalog.make("nic", "0000:03:00.0")[0]
    machine.add_host_devices([nic])
    machine.pciback_bind(nic.sbdf)
    domid = machine.start_guest("liar", 32 * 1024, boot=False)
    lp.device_pci_add_xenstore(
        machine.xs, domid, "liar", lp.PciBackendDevice(nic.sbdf), starting=True
    )
    back = machine.pciback.wait_for_device(domid)
    assert back.wait_for_state(S.XenbusStateInitialised)
    guest = machine.hv.domain(domid).hypercalls
    gfn = guest.alloc_page()
    real_ref = guest.gnttab_grant_foreign_access(0, gfn, False)
    real_port = guest.evtchn_alloc_unbound(0)
    xs = machine.guest(domid).xs
    fe = lp.frontend_path(domid)
    xs.write(f"{fe}/pci-op-ref", ref if ref is not None else str(real_ref))
    xs.write(f"{fe}/event-channel", port if port is not None else str(real_port))
    xs.write(f"{fe}/magic", "7")
    xs.write(f"{fe}/state", "3")
    assert back.wait_for_state(S.XenbusStateClosing)
    err = machine.xs.read(f"/local/domain/0/error/backend/pci/{domid}/0/error").decode()
    assert why in err
    assert back.mapping is None and back.evtchn is None  # nothing left half-attached
    lp.device_destroy(machine.xs, domid)
    assert machine.pciback.wait(lambda d: domid not in d.devices)
    assert machine.stub.get(nic.sbdf).owner is None


def test_guest_faking_a_new_generation_only_hurts_itself(
    two_guests: tuple[Machine, Pcifront, Pcifront],
) -> None:
    """A guest writes Initialising into its own frontend ``state`` (what a re-created
    node reads): its own kernel re-probes; pciback keeps the same device (its generation
    test reads the dom0-only backend node), and the other guest is untouched."""
    m, evil, good = two_guests
    back = m.pciback.devices[evil.domid]
    kernel = m.guest(evil.domid)
    kernel.xs.write(f"{evil.nodename}/state", "1")
    # the guest's kernel sees a "new generation" and probes a fresh frontend,
    # which cannot connect to a backend that is already Connected
    assert kernel.wait(lambda k: k.pcifront is not None and k.pcifront is not evil)
    assert evil.watch is not None and evil.watch.superseded()
    m.hv.run_until_idle()  # everything the fake caused, pciback's reactions included
    assert m.pciback.devices[evil.domid] is back and not back.superseded()
    # (its fresh frontend may time out talking to a backend still on the old page and
    # close its own connection: that is the guest's loss alone)
    assert back.watch is not None and back.watch.errors == []
    assert m.stub.get(back.bus.devices()[0].sbdf).owner == evil.domid
    _good_still_works(m, good)
