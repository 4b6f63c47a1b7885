"""The ``PCIBIOS_*`` return codes of Linux's PCI config accessors.

Mirrors the ``PCIBIOS_*`` defines of Linux ``include/linux/pci.h``: what a
``struct pci_ops`` accessor returns (pcifront's, the guest PCI core's) and
what pciback's config-space field handlers return before ``conf_space.c``
maps them onto the wire. Defined once here, below both halves of the split
driver and the guest, so the two ends cannot drift apart. No behaviour: the
conversions (``errno_to_pcibios_err`` in pcifront, pciback's wire mapping)
stay with the code that does them in Linux.
"""

from __future__ import annotations

from typing import Final

PCIBIOS_SUCCESSFUL: Final = 0x00
PCIBIOS_FUNC_NOT_SUPPORTED: Final = 0x81
PCIBIOS_BAD_VENDOR_ID: Final = 0x83
PCIBIOS_DEVICE_NOT_FOUND: Final = 0x86
PCIBIOS_BAD_REGISTER_NUMBER: Final = 0x87
PCIBIOS_SET_FAILED: Final = 0x88
PCIBIOS_BUFFER_TOO_SMALL: Final = 0x89
