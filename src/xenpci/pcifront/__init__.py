"""xenpci.pcifront: Linux ``drivers/pci/xen-pcifront.c``, the guest half of PV PCI passthrough.

Public API:

* :class:`~xenpci.pcifront.xenbus.Pcifront` -- the frontend device of one guest:
  ``probe()`` (grant the page, allocate the event channel, write ``pci-op-ref``,
  ``event-channel``, ``magic``, walk the handshake), ``remove()``,
  ``wait_connected(count, timeout)``; config accessors ``read``/``write`` (the
  guest PCI core's ``struct pci_ops``); ``enable_msi``/``disable_msi``,
  ``enable_msix(dev, entries, handler) -> ports``/``disable_msix``.
* :mod:`~xenpci.pcifront.ops` -- ``PciOpChannel`` (``do_pci_op`` with a timeout,
  2 s by default), ``conf_read``/``conf_write``/``enable_msi[x]``/``disable_msi[x]``,
  ``errno_to_pcibios_err`` (the ``PCIBIOS_*`` codes are :mod:`xenpci.pci.pcibios`).
* :mod:`~xenpci.pcifront.errors` -- ``PcifrontError``, ``PciOpError`` (wire code +
  PCIBIOS code), ``BackendTimeout``, ``NotConnected``.
"""
