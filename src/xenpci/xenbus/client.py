"""Helpers every XenBus driver uses around its :class:`~xenpci.xenbus.watch.XenbusWatch`.

Mirrors the small helpers of Linux ``drivers/xen/xenbus/``:

* ``xenbus_read_otherend_details`` (``xenbus_probe.c``): read the other end's
  path (and, for a frontend, its domid) from our own node at probe time;
* ``watch_otherend`` as a driver's probe sets it up
  (:func:`xenbus_watch_otherend`: the :class:`~xenpci.xenbus.watch.XenbusWatch`
  of our node and the other end's, reporting in our error node);
* the error node ``xenbus_dev_error``/``xenbus_dev_fatal`` write
  (``xenbus_client.c``, ``xenbus_va_dev_error``): ``error/<nodename>/error``
  under the domain that owns the device node;
* ``xenbus_map_ring_valloc`` + ``bind_interdomain_evtchn_to_irqhandler``
  (what a backend's ``connect_ring`` does with the frontend's ``ring-ref`` and
  ``event-channel``) and the matching teardown (``xenbus_unmap_ring_vfree``,
  ``unbind_from_irqhandler``).

Deliberate differences: a backend here reads only ``frontend`` (Linux's
``read_frontend_details`` also reads ``frontend-id``; the backends of this
model take the frontend's domid from their own path). Ring mapping is one
grant (no multi-page rings), and its failure says which step failed through
:class:`RingMapError` so each driver words its own ``xenbus_dev_fatal``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Literal, Protocol

from xenpci.errors import XenpciError
from xenpci.xenbus.watch import Driver, XenbusWatch, XenStoreLike

if TYPE_CHECKING:
    from xenpci.hv.grant_table import GrantMapping
    from xenpci.hv.hypercalls import Hypercalls
    from xenpci.xenbus.state import XenbusDevice

_DOMAIN_PREFIX = "/local/domain/"


class XenStoreReader(Protocol):
    def read(self, path: str) -> bytes: ...


def xenbus_read_otherend(xs: XenStoreReader, nodename: str, path_node: str) -> str:
    """The other end's path, as our node's ``path_node`` (``frontend``/``backend``) names it."""
    return xs.read(f"{nodename}/{path_node}").decode()


def xenbus_read_otherend_details(
    xs: XenStoreReader, nodename: str, id_node: str, path_node: str
) -> tuple[int, str]:
    """``xenbus_read_otherend_details``: (other end's domid, its path); path read first."""
    path = xenbus_read_otherend(xs, nodename, path_node)
    return int(xs.read(f"{nodename}/{id_node}")), path


def xenbus_error_path(nodename: str) -> str:
    """Where ``xenbus_dev_fatal`` reports for ``nodename``: ``<domain>/error/<rel>/error``.

    Linux writes ``error/<dev->nodename>`` relative to the device owner's
    home, so dom0's ``/local/domain/0/backend/vbd/1/51712`` reports in
    ``/local/domain/0/error/backend/vbd/1/51712/error`` and a guest's
    ``device/pci/0`` in ``/local/domain/<domid>/error/device/pci/0/error``.
    """
    if not nodename.startswith(_DOMAIN_PREFIX):
        raise ValueError(f"{nodename!r} is not under {_DOMAIN_PREFIX}")
    domid, _, rel = nodename[len(_DOMAIN_PREFIX) :].partition("/")
    if not domid.isdigit() or not rel:
        raise ValueError(f"{nodename!r} is not a device node of a domain")
    return f"{_DOMAIN_PREFIX}{domid}/error/{rel.rstrip('/')}/error"


def xenbus_watch_otherend(
    xs: XenStoreLike, device: XenbusDevice, nodename: str, otherend: str, driver: Driver
) -> XenbusWatch:
    """The shell of a device being probed: ``device`` at ``nodename`` follows ``otherend``.

    ``xenbus_dev_fatal`` reports go to :func:`xenbus_error_path` of
    ``nodename``. Returned unstarted: the driver keeps it first, then
    :meth:`~xenpci.xenbus.watch.XenbusWatch.start` (which may call the driver).
    """
    return XenbusWatch(
        xs, device, nodename, otherend, driver=driver, error_path=xenbus_error_path(nodename)
    )


class RingMapError(XenpciError):
    """Mapping the other end's ring or binding its event channel failed (nothing kept)."""

    def __init__(self, step: Literal["map", "bind"], cause: XenpciError) -> None:
        self.step = step
        self.cause = cause
        super().__init__(f"{step}: {cause}")


def xenbus_map_ring_and_bind(
    hc: Hypercalls, domid: int, gref: int, port: int
) -> tuple[GrantMapping, int]:
    """Map ``gref`` of ``domid`` and bind its unbound ``port``: (mapping, local port).

    If binding fails the mapping is undone before :class:`RingMapError` is raised.
    """
    try:
        mapping = hc.gnttab_map_grant_ref(domid, gref, False)
    except XenpciError as e:
        raise RingMapError("map", e) from None
    try:
        local = hc.evtchn_bind_interdomain(domid, port)
    except XenpciError as e:
        with contextlib.suppress(XenpciError):
            hc.gnttab_unmap_grant_ref(mapping.handle)
        raise RingMapError("bind", e) from None
    return mapping, local


def xenbus_unbind_and_unmap(
    hc: Hypercalls, evtchn: int | None, mapping: GrantMapping | None
) -> None:
    """Teardown of :func:`xenbus_map_ring_and_bind`; either half may be absent.

    Errors are swallowed: the other end may already have gone.
    """
    if evtchn is not None:
        with contextlib.suppress(XenpciError):
            hc.evtchn_close(evtchn)
    if mapping is not None:
        with contextlib.suppress(XenpciError):
            hc.gnttab_unmap_grant_ref(mapping.handle)
