"""Guest device drivers that use a passed-through device directly (the data path).

Public API:

* :mod:`~xenpci.guest.drivers.base` -- ``PciDriver`` (``find``, ``probe``:
  enable decode and bus mastering through pcifront, ``iomap`` a BAR with
  ``Hypercalls.mmio_map``, ``ioport_read``/``ioport_write``, ``alloc_dma``,
  ``enable_msix`` + ``wait_irq``, ``remove``) and the driver errors.
* :mod:`~xenpci.guest.drivers.nic` -- ``NicDriver``: send and receive frames
  through the loopback NIC's descriptor rings.
* :mod:`~xenpci.guest.drivers.nvme` -- ``NvmeDriver``: admin + one I/O queue
  pair, ``write_blocks`` / ``read_blocks``, ``submit_io`` for raw PRPs.
* :mod:`~xenpci.guest.drivers.serial` -- ``SerialDriver``: the 16550 UART by port IO.
"""
