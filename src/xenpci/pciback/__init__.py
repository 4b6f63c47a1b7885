"""xenpci.pciback: Linux xen-pciback, the dom0 half of PV PCI passthrough.

Public API (the XenBus backend and the toolstack build on these):

* :class:`~xenpci.pciback.pci_stub.PciStub` -- the assignable pool: ``seize``,
  ``release``, ``get_pci_dev`` (assign to a guest), ``put_pci_dev`` (take back,
  reset, restore), ``set_permissive``, ``set_allow_interrupt_control``, ``add_quirk``.
* :class:`~xenpci.pciback.vpci.VpciBackend` / :class:`~xenpci.pciback.passthrough.PassthroughBackend`
  -- bus modes: ``add`` (guest address for ``vdev-N``), ``get``, ``find``,
  ``release``, ``roots`` (for ``root-N``); ``format_vdev``, ``format_root``.
* :func:`~xenpci.pciback.pciback_ops.handle_op`, :func:`~xenpci.pciback.pciback_ops.serve_shared_page`
  -- request handling; ``aer_post``/``aer_poll``/``aer_timeout`` for AER.
* :mod:`xenpci.pciback.conf_space.explain` -- ``explain`` and ``write_rules``.
"""
