"""xenpci.pci: the PCI core (layer 5).

Register names (``regs``, after Linux ``pci_regs.h``), addresses (``address``),
config space with write masks (``config``), capability walkers
(``capabilities``), BARs (``bar``), the one device interface
(``function.PciFunction``), read-only sources (``dump`` for lspci dumps,
``sysfs`` for Linux sysfs, ``sources.open_source`` for SOURCE specs), PCI ID
names (``ids``) and the conformance check every source passes (``conformance``).
"""
