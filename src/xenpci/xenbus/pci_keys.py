"""The XenStore layout of one PV PCI device, shared by libxl, pciback and pcifront.

Mirrors the keys and value formats the three real parties agree on:
libxl writes ``dev-N`` (``libxl__create_pci_backend_device``, ``%04x:%02x:%02x.%01x``)
and ``state-N``; pciback reads ``dev-N`` with ``sscanf("%x:%x:%x.%x")``
(``xen_pcibk_setup_backend``) and publishes ``vdev-N`` (``%04x:%02x:%02x.%02x``)
and ``root-N`` (``%04x:%02x``, ``xen_pcibk_publish_pci_root``); pcifront reads
``root-N`` with ``%x:%x`` and ``vdev-N`` with ``%x:%x:%x.%x``. Defining them once
here, below all three, keeps a format change from silently splitting them.

Addresses are plain integers here (this layer sits below ``xenpci.pci``);
callers build their :class:`~xenpci.pci.address.SBDF` and check ranges. The
scanners accept what Python's ``int(x, 16)`` accepts, a superset of ``%x`` only
in exotic spellings (``_`` separators), and raise ``ValueError`` otherwise.
"""

from __future__ import annotations

from typing import Final

#: Where dom0's pciback finds its devices: ``<root>/<domid>/<devid>``.
BACKEND_ROOT: Final = "/local/domain/0/backend/pci"


def backend_path(domid: int) -> str:
    """``/local/domain/0/backend/pci/<domid>/0`` (backend always dom0, devid always 0)."""
    return f"{BACKEND_ROOT}/{domid}/0"


def frontend_path(domid: int) -> str:
    """``/local/domain/<domid>/device/pci/0``: the one pcifront device of a guest."""
    return f"/local/domain/{domid}/device/pci/0"


def dev_key(index: int) -> str:
    """``dev-N``: the host BDF libxl asks pciback to export."""
    return f"dev-{index}"


def vdev_key(index: int) -> str:
    """``vdev-N``: the guest-visible address pciback published for ``dev-N``."""
    return f"vdev-{index}"


def state_key(index: int) -> str:
    """``state-N``: the per-device XenBus state (1 to attach, 5 to detach)."""
    return f"state-{index}"


def root_key(index: int) -> str:
    """``root-N``: a root bus the guest must scan."""
    return f"root-{index}"


def format_dev(domain: int, bus: int, slot: int, func: int) -> str:
    """A ``dev-N`` value as libxl writes it: ``%04x:%02x:%02x.%01x``."""
    return f"{domain:04x}:{bus:02x}:{slot:02x}.{func:x}"


def format_vdev(domain: int, bus: int, slot: int, func: int) -> str:
    """A ``vdev-N`` value as pciback writes it: ``%04x:%02x:%02x.%02x`` (two-digit func)."""
    return f"{domain:04x}:{bus:02x}:{slot:02x}.{func:02x}"


def format_root(domain: int, bus: int) -> str:
    """A ``root-N`` value: ``%04x:%02x``."""
    return f"{domain:04x}:{bus:02x}"


def scan_bdf(text: str) -> tuple[int, int, int, int]:
    """``sscanf(text, "%x:%x:%x.%x")`` of ``dev-N``/``vdev-N``: (domain, bus, slot, func)."""
    head, dot, func = text.strip().rpartition(".")
    if not dot:
        raise ValueError(f"{text!r} has no '.'")
    dom, bus, slot = head.split(":")  # ValueError unless exactly three fields
    return int(dom, 16), int(bus, 16), int(slot, 16), int(func, 16)


def scan_root(text: str) -> tuple[int, int]:
    """``sscanf(text, "%x:%x")`` of ``root-N``: (domain, bus)."""
    dom, sep, bus = text.strip().partition(":")
    if not sep:
        raise ValueError(f"{text!r} has no ':'")
    return int(dom, 16), int(bus, 16)
