"""xenpci.pciback: Linux xen-pciback, the dom0 half of PV PCI passthrough.

Public API (the XenBus backend and the toolstack build on these):

* ``pci_stub.PciStub`` -- the assignable pool: ``seize``, ``release``,
  ``get_pci_dev`` (assign to a guest), ``put_pci_dev`` (take back, reset,
  restore), ``set_permissive``, ``set_allow_interrupt_control``, ``add_quirk``.
* ``vpci.VpciBackend`` / ``passthrough.PassthroughBackend`` -- bus modes:
  ``add`` (guest address for ``vdev-N``), ``get``, ``find``, ``release``,
  ``roots`` (for ``root-N``); ``vpci.format_vdev``, ``vpci.format_root``.
* ``pciback_ops.handle_op``, ``pciback_ops.serve_shared_page`` -- requests;
  ``aer_post``/``aer_poll``/``aer_timeout`` for the AER relay.
* ``conf_space.explain`` -- ``explain`` and ``write_rules``.
* ``platform.HvInterruptPlatform`` -- the platform over dom0's hypercalls:
  MSI/MSI-X pirqs, ``prepare_msix``/``release_msix`` (issued by ``PciStub`` at
  seize/unbind), ``memory_decode`` (the owner's COMMAND.MEMORY -> its BAR
  mappings); ``platform.msix_windows``/``platform.prepare_msix`` for callers
  without pciback (a bare hypervisor).
"""
