"""xenpci.xenbus.client: the helpers the four split drivers share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from xenpci.errors import XenpciError
from xenpci.hv import PAGE_SHIFT, Hypercalls, Hypervisor
from xenpci.xenbus import pci_keys
from xenpci.xenbus.client import (
    RingMapError,
    xenbus_error_path,
    xenbus_map_ring_and_bind,
    xenbus_read_otherend,
    xenbus_read_otherend_details,
    xenbus_unbind_and_unmap,
)
from xenpci.xenstore.errors import XsError


class _Store:
    def __init__(self, nodes: dict[str, str]) -> None:
        self.nodes = nodes
        self.reads: list[str] = []

    def read(self, path: str) -> bytes:
        self.reads.append(path)
        if path not in self.nodes:
            raise XsError("ENOENT", path)
        return self.nodes[path].encode()


@pytest.mark.parametrize(
    ("nodename", "expected"),
    [
        # Linux xenbus_va_dev_error: "error/%s" of dev->nodename, in the owner's home.
        ("/local/domain/0/backend/vbd/3/51712", "/local/domain/0/error/backend/vbd/3/51712/error"),
        (pci_keys.backend_path(7), "/local/domain/0/error/backend/pci/7/0/error"),
        (pci_keys.frontend_path(7), "/local/domain/7/error/device/pci/0/error"),
        ("/local/domain/12/device/vbd/768/", "/local/domain/12/error/device/vbd/768/error"),
    ],
)
def test_error_path(nodename: str, expected: str) -> None:
    assert xenbus_error_path(nodename) == expected


@pytest.mark.parametrize(
    "bad", ["backend/vbd/1/0", "/local/domain/x/device/vbd/1", "/local/domain/3"]
)
def test_error_path_refuses_what_is_not_a_device_node(bad: str) -> None:
    with pytest.raises(ValueError):
        xenbus_error_path(bad)


def test_read_otherend_details_reads_path_then_id() -> None:
    fe = pci_keys.frontend_path(4)
    xs = _Store({f"{fe}/backend": pci_keys.backend_path(4), f"{fe}/backend-id": "0"})
    assert xenbus_read_otherend_details(xs, fe, "backend-id", "backend") == (
        0,
        pci_keys.backend_path(4),
    )
    assert xs.reads == [f"{fe}/backend", f"{fe}/backend-id"]
    assert xenbus_read_otherend(xs, fe, "backend") == pci_keys.backend_path(4)


def test_read_otherend_details_errors_propagate() -> None:
    fe = pci_keys.frontend_path(4)
    with pytest.raises(XsError):
        xenbus_read_otherend_details(_Store({}), fe, "backend-id", "backend")
    xs = _Store({f"{fe}/backend": "x", f"{fe}/backend-id": "zero"})
    with pytest.raises(ValueError):
        xenbus_read_otherend_details(xs, fe, "backend-id", "backend")


@pytest.fixture
def two_domains() -> Iterator[tuple[Hypercalls, Hypercalls, int]]:
    hv = Hypervisor(ram_frames=8192, dom0_memory_kib=1024, deterministic=True)
    try:
        guest = hv.create_domain("guest", 1024)
        yield hv.dom0.hypercalls, guest.hypercalls, guest.domid
    finally:
        hv.shutdown()


def test_map_ring_and_bind_then_teardown(two_domains: tuple[Hypercalls, Hypercalls, int]) -> None:
    dom0, guest, domid = two_domains
    gfn = guest.alloc_page()
    guest.write(gfn << PAGE_SHIFT, b"ring")
    gref = guest.gnttab_grant_foreign_access(0, gfn, False)
    port = guest.evtchn_alloc_unbound(0)
    mapping, local = xenbus_map_ring_and_bind(dom0, domid, gref, port)
    assert bytes(mapping.view[:4]) == b"ring"
    with pytest.raises(XenpciError):  # mapped: the guest cannot take its page back yet
        guest.gnttab_end_foreign_access(gref)
    xenbus_unbind_and_unmap(dom0, local, mapping)
    guest.gnttab_end_foreign_access(gref)  # unmapped now
    xenbus_unbind_and_unmap(dom0, None, None)  # nothing to undo is fine


def test_bind_failure_undoes_the_mapping(two_domains: tuple[Hypercalls, Hypercalls, int]) -> None:
    dom0, guest, domid = two_domains
    gref = guest.gnttab_grant_foreign_access(0, guest.alloc_page(), False)
    with pytest.raises(RingMapError) as bad_port:
        xenbus_map_ring_and_bind(dom0, domid, gref, 4000)  # no such unbound port
    assert bad_port.value.step == "bind"
    guest.gnttab_end_foreign_access(gref)  # the map was undone
    with pytest.raises(RingMapError) as bad_gref:
        xenbus_map_ring_and_bind(dom0, domid, gref + 100, 1)
    assert bad_gref.value.step == "map"
