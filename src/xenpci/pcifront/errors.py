"""Errors of the guest's PCI frontend (``drivers/pci/xen-pcifront.c``).

Across the shared page the protocol's code is an ``XEN_PCI_ERR_*`` value (or a
raw negative errno that pciback passes through); inside the guest Linux turns
it into a ``PCIBIOS_*`` code. Each error carries both.
"""

from __future__ import annotations

from xenpci.abi.pciif import XEN_PCI_ERR_NAMES
from xenpci.errors import XenpciError


class PcifrontError(XenpciError):
    """Base of the frontend's errors."""


class PciOpError(PcifrontError):
    """An op came back with a non-zero ``err``.

    ``err`` is the wire value (``XEN_PCI_ERR_*`` or a raw errno), ``pcibios``
    the code the guest PCI core sees (``errno_to_pcibios_err``).
    """

    def __init__(self, op: str, err: int, pcibios: int, detail: str = "") -> None:
        self.op = op
        self.err = err
        self.pcibios = pcibios
        name = XEN_PCI_ERR_NAMES.get(err, f"errno {err}")
        msg = f"pci op {op} failed: {name} ({err}), PCIBIOS 0x{pcibios:02x}"
        super().__init__(msg + (f": {detail}" if detail else ""))


class BackendTimeout(PcifrontError):
    """pciback did not answer within the deadline (``pciback not responding!!!``)."""

    def __init__(self, op: str, timeout: float) -> None:
        self.op = op
        self.timeout = timeout
        super().__init__(f"pci op {op}: pciback not responding after {timeout:g} s")


class NotConnected(PcifrontError):
    """An op was attempted before the shared page was set up, or after teardown."""
