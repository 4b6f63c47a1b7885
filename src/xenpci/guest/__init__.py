"""xenpci.guest: the PV guest kernel as far as PCI goes (XenBus frontend, PCI core, lspci).

Public API:

* :class:`~xenpci.guest.kernel.GuestKernel` -- ``boot()`` (watch ``device/pci/0``,
  probe pcifront when it appears, remove it when it goes), ``shutdown()``,
  ``wait_for_pcifront()``, ``wait(predicate)``; ``.pci`` is its PCI core.
* :mod:`~xenpci.guest.pci_core` -- ``GuestPci`` (root buses), ``GuestPciBus.scan()``
  (probe every devfn 0..255, size BARs), ``GuestPciDevice`` (``read_config`` /
  ``write_config`` as ``pci_{read,write}_config_*``, ``config_space()``, ``bars``).
* :mod:`~xenpci.guest.lspci` -- ``guest_function(s)``: the guest's view as
  :class:`~xenpci.pci.function.PciFunction` objects for the dump writer.
"""
